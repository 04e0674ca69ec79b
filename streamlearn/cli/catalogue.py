"""Catalogue commands: `tasks`, `storage`, `db upgrade` and `db check`.

They read the catalogue only (opening it upgrades an empty database first), import neither torch
nor matplotlib unless asked to plot, and print URLs with their passwords masked.
"""

from __future__ import annotations

from typing import Any

import click

from streamlearn.cli import main
from streamlearn.cli.console import count, echo_json, make_console, plain
from streamlearn.settings import mask_url

EMPTY_HINT = "Submit one with `streamlearn submit-task DATA.jsonl`, or try `streamlearn demo`."


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _collapsed(row: dict[str, Any]) -> str:
    if row["artifact_job_id"] is None:
        return "-"
    return "?" if row["collapsed"] is None else ("yes" if row["collapsed"] else "no")


DEFAULT_LIMIT = 1000
"""Rows a listing shows unless `--limit N` or `--all` says otherwise (a 100,000-task catalogue stays fast)."""

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]


def paging_options(noun: str, after_help: str):
    """`--limit N`, `--all`, `--after`, `--name-like` of a listing of `noun`s (tasks, jobs)."""
    def wrap(fn):
        for option in reversed([
            click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
                         help=f"Show at most N {noun}s (in arrival order)."),
            click.option("--all", "all_rows", is_flag=True, help=f"Show every {noun} (no --limit)."),
            click.option("--after", help=after_help),
            click.option("--name-like", help="Only task names matching this SQL LIKE pattern: '%' any run of "
                                             "characters, '_' one character (e.g. 'sst%').",
                         metavar="PATTERN"),
        ]):
            fn = option(fn)
        return fn
    return wrap


def page_hint(rows: list, limit: int | None, last: str, noun: str) -> str | None:
    """The line under a listing cut at `limit`, naming the flag that shows the next page."""
    if limit is None or len(rows) < limit:
        return None
    return f"Showing the first {limit:,} {noun}s; next page: --after {last} (or --all)."


@main.command("tasks")
@paging_options("task", "Only tasks that arrived after this task (keyset paging: give the last task shown).")
@click.option("--status", type=click.Choice(STATUSES), help="Only tasks whose latest job has this status.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per task.")
def tasks_command(limit: int, all_rows: bool, after: str | None, name_like: str | None, status: str | None,
                  as_json: bool) -> None:
    """List tasks in arrival order with their latest job's status and their stored artifact.

    Columns: task, status of its latest job, method, adapter size m, the kept artifact's
    hyperparameters (for a sweep: the chosen trial's, e.g. `m=64 lr=1e-3 ep=3`), validation and
    test accuracy, collapsed (yes when the model is no better than one constant class, see
    `streamlearn.training.collapsed`; `?` for tasks trained before the flag), trainable parameters, bytes on disk, artifact sha256 (first 12 hex digits) and
    backbone.
    A fused task (`--method fusion`) lists its sources, the tasks whose adapters it attends over.
    `--json` adds stored parameters, hyperparameters, the artifact URI, job ids and `sources`.
    """
    from streamlearn.catalogue.queries import task_table
    from streamlearn.catalogue.session import session_scope

    limit = None if all_rows else limit
    with session_scope(readonly=True) as s:
        rows = task_table(s, limit=limit, after=after, status=status, name_like=name_like)
    if as_json:
        echo_json(rows)
        return
    console = make_console(wide=True)
    if not rows:
        filtered = after or status or name_like
        console.print("No tasks match." if filtered else f"No tasks in the catalogue yet. {EMPTY_HINT}")
        return
    from rich.table import Table

    from streamlearn.sweep import label

    table = Table(title=count(len(rows), "task"))
    for name in ("task", "status", "method", "m", "hyperparameters", "sources"):
        table.add_column(name)
    for name in ("val acc", "test acc", "collapsed", "trainable", "bytes"):
        table.add_column(name, justify="right")
    table.add_column("sha256")
    table.add_column("backbone")
    for r in rows:
        table.add_row(
            plain(r["task"]), r["status"] or "-", r["method"] or "-",
            "-" if r["adapter_size"] is None else str(r["adapter_size"]), label(r["hyperparameters"]),
            plain(",".join(r["sources"]) or "-"), _accuracy(r["val_accuracy"]), _accuracy(r["test_accuracy"]), _collapsed(r),
            _number(r["trainable_params"]),
            _number(r["bytes"]), (r["sha256"] or "-")[:12], plain(r["backbone"] or "-"),
        )
    console.print(table)
    hint = page_hint(rows, limit, rows[-1]["task"], "task")
    if hint:
        console.print(hint)


@main.command("storage")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, writable=True),
              help="Also draw cumulative storage against K to this PNG file (every task).")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
              help="List at most the first N learned tasks; the totals always cover every task (SQL sums).")
@click.option("--all", "all_rows", is_flag=True, help="List every learned task (no --limit).")
def storage_command(as_json: bool, plot_file: str | None, limit: int, all_rows: bool) -> None:
    """Show that storage grows as K·4Lmd (adapters), not K·|w| (full copies).

    Per task in arrival order: the bytes stored, the cumulative bytes, what K full copies of the
    backbone would take (K·|w|), and the law's K·[2L(2md+m+d)+(4L+2)d+(d+1)C] parameters times
    4 bytes. JSON fields: backbone_params, backbone_bytes, tasks [{task, method, bytes,
    cumulative_bytes, full_copy_cumulative_bytes, theoretical_bytes, ...}], total_bytes,
    full_copy_total_bytes, ratio (stored / full copies), task_count (every learned task),
    tasks_shown (those listed), fusion_total_bytes (the law's term for fused tasks' fusion layers,
    per task fusion_task_bytes), and more.
    """
    from streamlearn.catalogue.queries import storage_report
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        report = storage_report(s, limit=None if all_rows or plot_file else limit)
    if plot_file and report["tasks"]:
        from streamlearn.storage import plot

        plot(report, plot_file)
    if as_json:
        if plot_file and not report["tasks"]:
            click.echo("No stored artifacts yet: no plot written.", err=True)
        echo_json(report)
        return
    console = make_console(wide=True)
    if not report["tasks"]:
        console.print(f"No stored artifacts yet, so nothing to report{' or plot' if plot_file else ''}. {EMPTY_HINT}")
        return
    _render_storage(console, report)
    if plot_file:
        console.print(plain(f"Wrote the storage plot to {plot_file}"))


def _render_storage(console, report: dict[str, Any]) -> None:
    from rich.table import Table

    from streamlearn.storage import human_bytes

    table = Table(title=plain(f"Storage of {count(report['task_count'], 'task')} on {report['backbone']} "
                              f"(|w| = {report['backbone_params']:,} params, {human_bytes(report['backbone_bytes'])})"))
    table.add_column("K", justify="right")
    table.add_column("task")
    table.add_column("method")
    for name in ("bytes", "cumulative", "law (cumulative)", "K full copies"):
        table.add_column(name, justify="right")
    rows = report["tasks"]
    # Past 40 rows show the first and last 20: the totals below carry the whole story.
    shown = list(enumerate(rows, 1)) if len(rows) <= 40 else [*enumerate(rows[:20], 1), None,
                                                              *enumerate(rows[-20:], len(rows) - 19)]
    for item in shown:
        if item is None:
            table.add_row("…", f"({len(rows) - 40:,} more)", "", "", "", "", "")
            continue
        k, t = item
        table.add_row(str(k), plain(t["task"]), t["method"], _number(t["bytes"]), _number(t["cumulative_bytes"]),
                      _number(t["theoretical_bytes"]), _number(t["full_copy_cumulative_bytes"]))
    console.print(table)
    console.print(
        f"Stored {human_bytes(report['total_bytes'])} for {count(report['task_count'], 'task')}, versus "
        f"{human_bytes(report['full_copy_total_bytes'])} for full copies: "
        f"ratio {report['ratio']:.4f} ({1 / report['ratio']:.1f}x less). "
        f"Measured / law = {report['measured_over_theoretical']:.4f}."
    )
    if report.get("fusion_total_bytes"):
        console.print(f"Of the law, the fusion layers of fused tasks (their own term): "
                      f"{human_bytes(report['fusion_total_bytes'])}.")


@main.group("db")
def db_group() -> None:
    """Catalogue database maintenance."""


@db_group.command("upgrade")
def db_upgrade_command() -> None:
    """Run the catalogue's migrations up to the newest schema (every command also does this on open)."""
    from streamlearn.catalogue.session import current_revision, resolve_url, upgrade

    url = resolve_url()
    before = current_revision(url)
    after = upgrade(url)
    state = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    click.echo(f"catalogue {mask_url(url)}: {state} revision {after} (head)")


@db_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def db_check_command(as_json: bool) -> None:
    """Check the catalogue and the store; exit 1 if anything is wrong.

    Checks: SQLite's integrity_check (PostgreSQL: n/a), the schema revision against this
    streamlearn's head, artifact rows whose file is missing, tasks whose stored dataset copy is
    missing, dataset copies and artifact files no row refers to, temporary files left by a
    killed writer (workers remove those older than an hour), and summary columns (a task's newest
    job and its status, an artifact's task and shape) that disagree with the jobs they summarise. Nothing is changed. A file that is
    not a catalogue at all is refused with one line and exit code 2.
    """
    from streamlearn.health import check

    report = check()
    if as_json:
        echo_json(report)
    else:
        console = make_console()
        console.print(plain(f"catalogue {report['catalogue']}"))
        console.print(plain(f"  integrity   {report['integrity']}"))
        console.print(plain(f"  schema      {report['revision'] or 'empty'} (head {report['head']})"))
        for key in ("missing_artifacts", "missing_datasets", "unreferenced_datasets", "unreferenced_artifacts",
                    "temporary_files", "stale_summaries"):
            console.print(plain(f"  {key.replace('_', ' ')}: {len(report[key])}"))
            for item in report[key][:20]:
                console.print(plain(f"    {item}"))
        console.print(plain("ok" if report["ok"] else "problems found"))
    if not report["ok"]:
        raise SystemExit(1)


@main.command("delete")
@click.argument("task")
@click.option("--json", "as_json", is_flag=True, help="Print {task, jobs, removed: [{key, bytes}], bytes_freed}.")
def delete_command(task: str, as_json: bool) -> None:
    """Delete TASK: its catalogue rows (task, jobs, artifacts, metrics) in one transaction, then its
    stored files that no other task references.

    A task with a queued or running job is refused (wait until it ends), and so is a task whose
    adapter a fused task uses (the message names them: delete those first). An artifact or dataset
    another task still uses stays. Files left by a crash between the two steps are removed by `gc`.
    """
    from streamlearn.retention import delete_task
    from streamlearn.storage import human_bytes

    report = delete_task(task)
    if as_json:
        echo_json(report)
        return
    click.echo(f"deleted task {task} ({report['jobs']} job(s)); removed {len(report['removed'])} stored file(s), "
               f"{human_bytes(report['bytes_freed'])} freed")


@main.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Leave files written less than this many seconds ago alone (uploads in flight).")
@click.option("--json", "as_json", is_flag=True,
              help="Print {dry_run, grace_seconds, store, scanned, kept, removed: [{key, bytes}], bytes_freed}.")
def gc_command(dry_run: bool, grace: float, as_json: bool) -> None:
    """Remove stored datasets and artifacts that no catalogue row references, and report the bytes freed.

    Works on a folder store and on S3. The decision is re-checked against the catalogue under a
    lock that submissions and finishing jobs also take, so nothing referenced is ever removed,
    even by a gc racing a submission.
    """
    from streamlearn.retention import gc
    from streamlearn.storage import human_bytes

    report = gc(dry_run=dry_run, grace=grace)
    if as_json:
        echo_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    for item in report["removed"]:
        click.echo(f"{verb} {item['key']} ({item['bytes']:,} bytes)")
    click.echo(f"{report['store']}: {report['scanned']} file(s) older than {grace:g} s, {report['kept']} referenced; "
               f"{verb} {len(report['removed'])}, {human_bytes(report['bytes_freed'])}"
               + (" would be freed" if dry_run else " freed"))
