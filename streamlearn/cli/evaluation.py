"""`streamlearn evaluate`: re-score stored artifacts, and the accuracy matrix of the stream.

Re-scoring imports torch (inside the command); `evaluate --matrix` alone only reads the
catalogue's evaluation history, so it answers instantly.
"""

from __future__ import annotations

import click

from streamlearn.cli import echo_json, main, make_console


@main.command("evaluate")
@click.argument("task", required=False)
@click.option("--all", "all_tasks", is_flag=True, help="Every task with a stored artifact.")
@click.option("--matrix", is_flag=True,
              help="Print the accuracy matrix R[t, j], BWT and forgetting from the recorded evaluations "
                   "(alone: no re-scoring; with TASK or --all: after re-scoring).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list, one object per task; with --matrix an object {tasks, matrix, bwt, "
                   "forgetting, average_accuracy, learned_at, latest, collapsed}.")
def evaluate_command(task: str | None, all_tasks: bool, matrix: bool, as_json: bool) -> None:
    """Re-evaluate stored artifacts on their stored test sets; report the drift from the catalogue.

    The backbone is frozen and shared and each task's tensors are stored apart, so the drift must be
    exactly 0 for every task, however many tasks arrived later. Exits 1 if any drift is not 0.
    Every run is recorded (one row per task) in the catalogue's evaluation history.

    With --matrix it prints the accuracy matrix: R[t, j] is task j's accuracy in the latest
    evaluation made after task t was learned and before task t+1 was (tasks in the order their
    artifacts were recorded), then backward transfer BWT (mean of R[T, j] - R[j, j]) and forgetting
    (mean of max over t < T of R[t, j] - R[T, j]); a task whose latest evaluation predicted one
    label or scored the majority-class accuracy is flagged as collapsed.
    """
    if task and all_tasks:
        raise click.UsageError("give one TASK or --all, not both")
    if not (task or all_tasks or matrix):
        raise click.UsageError("give one TASK, --all or --matrix")
    rows = None
    if task or all_tasks:
        from streamlearn.predictor import reevaluate

        rows = reevaluate(None if all_tasks else task, source="cli")
    if matrix:
        _matrix(as_json)
    elif as_json:
        echo_json(rows)
    else:
        _render_rows(rows)
    if rows is not None and any(r["drift"] != 0 for r in rows):
        raise SystemExit(1)


def _render_rows(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table("task", "split", "examples", "accuracy", "catalogue", "macro-F1", "catalogue", "drift")
    for r in rows:
        table.add_row(r["task"], r["split"], str(r["examples"]), f"{r['accuracy']:.4f}",
                      f"{r['catalogue_accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['catalogue_macro_f1']:.4f}",
                      f"{r['drift']:.2g}")
    console = make_console()
    console.print(table)
    worst = max((r["drift"] for r in rows), default=0.0)
    console.print(f"{len(rows)} task(s) re-evaluated; largest drift {worst:.2g}"
                  + (" - nothing was forgotten." if worst == 0 else " - DRIFT!"))
    from streamlearn.catalogue.evaluations import is_collapsed

    for r in rows:
        if is_collapsed(r["accuracy"], r["majority_accuracy"], r["predicted_classes"], r["examples"]):
            console.print(f"[yellow]warning: {r['task']} looks collapsed: accuracy {r['accuracy']:.4f} = "
                          f"majority class {r['majority_accuracy']:.4f}, {r['predicted_classes']} label(s) predicted[/yellow]")


def _matrix(as_json: bool) -> None:
    from streamlearn.catalogue.evaluations import accuracy_matrix
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        result = accuracy_matrix(s)
    if as_json:
        echo_json(result)
        return
    console = make_console(wide=True)
    tasks = result["tasks"]
    if not tasks:
        console.print("No task has an artifact yet, so the matrix is empty.")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("after task t", *map(escape, tasks),
                  title=escape("accuracy matrix R[t, j] (task j re-scored after task t was learned)"))
    for name, row in zip(tasks, result["matrix"]):
        table.add_row(escape(name), *("-" if v is None else f"{v:.4f}" for v in row))
    console.print(table)
    fmt = lambda v: "- (not enough cells)" if v is None else f"{v:.4g}"  # noqa: E731
    console.print(f"BWT {fmt(result['bwt'])}, forgetting {fmt(result['forgetting'])}, "
                  f"average accuracy {fmt(result['average_accuracy'])}")
    empty = sum(v is None for i, row in enumerate(result["matrix"]) for v in row[: i + 1])
    if empty:
        console.print(f"{empty} cell(s) on or below the diagonal have no evaluation: run `streamlearn evaluate "
                      "--all` after each task is learned to fill them.")
    for r in result["latest"]:
        if r is not None and r["collapsed"]:
            console.print(f"[yellow]warning: {r['task']} looks collapsed: accuracy {r['accuracy']:.4f} = majority "
                          f"class {r['majority_accuracy']:.4f}, {r['predicted_classes']} label(s) predicted[/yellow]")
