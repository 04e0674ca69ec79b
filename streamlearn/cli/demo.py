"""`streamlearn demo`: the whole service on three real tasks, in a fresh folder, in a few minutes.

Embedded mode only (SQLite catalogue, filesystem queue, local artifact store), so it needs no
servers. It starts a real worker process, submits the three tasks shipped in
`streamlearn/demo_data/` through the same path as `submit-task`, follows them, re-evaluates every
stored artifact each time a task is learned (recorded, so the accuracy matrix R[t, j] is full),
prints the task table, the storage report and the matrix, writes the storage plot, and stops the
worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from streamlearn.cli import main
from streamlearn.cli.console import plain, visible
from streamlearn.errors import InvalidConfig, StreamlearnError

DEMO_TASKS = ("sst2", "trec", "ag_news")
"""Tasks in `streamlearn/demo_data/`, submitted in this order."""

MARKER = ".streamlearn-demo"
"""File that marks a folder as made by the demo, so a rerun may wipe it (and nothing else)."""

SERVICE_VARS = ("STREAMLEARN_DATABASE_URL", "STREAMLEARN_BROKER_URL", "STREAMLEARN_ARTIFACTS", "STREAMLEARN_QUEUE")
"""Variables cleared for the demo so that it always runs in embedded mode under its own home."""


def demo_data_dir() -> Path:
    """The folder of the packaged demo tasks."""
    return Path(__file__).resolve().parent.parent / "demo_data"


def fresh_home(home: Path) -> Path:
    """Create (or wipe a previous demo's) `home` and mark it as the demo's."""
    home = home.expanduser().resolve()
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise InvalidConfig(f"{home} exists and was not made by `streamlearn demo`; pass --home NEW_FOLDER")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by `streamlearn demo`; a rerun deletes this folder\n", encoding="utf-8")
    return home


def use_home(home: Path) -> dict[str, str]:
    """Point this process (and return the environment for its children) at an embedded `home`."""
    from streamlearn.settings import get_settings

    os.environ["STREAMLEARN_HOME"] = str(home)
    for name in SERVICE_VARS:
        os.environ.pop(name, None)
    get_settings.cache_clear()
    return dict(os.environ)


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `streamlearn worker` as a child process logging to `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115 (the child owns it until it exits)
    return subprocess.Popen(
        [sys.executable, "-m", "streamlearn", "worker", "--loglevel", "INFO"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def stop_worker(worker: subprocess.Popen, grace: float = 15.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL if the worker is still there after `grace` seconds."""
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def follow(job_ids: dict[str, str], worker: subprocess.Popen, log_path: Path) -> dict[str, dict]:
    """Draw one progress bar per job until every job ended; fail if the worker dies first."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamlearn.catalogue.queries import job_status
    from streamlearn.catalogue.session import session_scope

    columns = (TextColumn("{task.description:<8}", markup=False), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn())
    final: dict[str, dict] = {}
    with Progress(*columns, console=Console(stderr=True)) as bar:
        rows = {task: bar.add_task(task, total=None, detail="queued", start=False) for task in job_ids}
        while len(final) < len(job_ids):
            with session_scope(readonly=True) as s:
                states = {task: job_status(s, job_id) for task, job_id in job_ids.items() if task not in final}
            for task, info in states.items():
                p = info["progress"]
                if info["status"] == "running" and p["total_steps"]:
                    bar.start_task(rows[task])
                    loss = "" if p["loss"] is None else f" loss {p['loss']:.3f}"
                    bar.update(rows[task], completed=p["step"], total=p["total_steps"],
                               detail=f"epoch {p['epoch']}{loss}")
                elif info["status"] == "running":
                    bar.start_task(rows[task])
                    bar.update(rows[task], detail="loading data")
                elif info["status"] in ("succeeded", "failed", "cancelled"):
                    final[task] = info
                    total = p["total_steps"] or 1
                    bar.update(rows[task], total=total, completed=total if info["status"] == "succeeded" else p["step"],
                               detail=info["status"])
                    bar.stop_task(rows[task])
            if len(final) < len(job_ids) and worker.poll() is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                raise StreamlearnError("the demo worker exited early (exit code %s); its log ends:\n%s"
                                       % (worker.returncode, "\n".join(tail)))
            time.sleep(0.5)
    return final


@main.command("demo")
@click.option("--home", type=click.Path(file_okay=False), default="streamlearn-demo", show_default=True,
              help="Fresh folder for the demo's catalogue, queue and artifacts (a previous demo's is replaced).")
@click.option("--epochs", type=click.IntRange(1, 100), default=2, show_default=True, help="Epochs per task.")
@click.option("--max-length", type=click.IntRange(8, 512), default=64, show_default=True, help="Tokens per example.")
@click.option("--data-dir", type=click.Path(file_okay=False, exists=True), default=None, hidden=True,
              help="Folder with the three tasks' files in the layout of demo_data/ (tests use a smaller copy).")
@click.pass_context
def demo_command(ctx: click.Context, home: str, epochs: int, max_length: int, data_dir: str | None) -> None:
    """Run the service end to end on 3 small real tasks (SST-2, TREC, AG News; 600 training examples each).

    In a fresh STREAMLEARN_HOME (default ./streamlearn-demo, embedded mode, no servers) it starts a
    worker process, submits the three tasks, shows their progress, re-evaluates every stored artifact
    each time a task is learned (drift must be 0), prints the task table, the storage report and
    the accuracy matrix (`evaluate --matrix`), writes the storage plot, and stops the worker. A few
    minutes on an idle 2-core CPU with the default all-MiniLM-L6-v2 (much longer on a busy one).
    """
    from rich.console import Console

    from streamlearn.cli.catalogue import storage_command, tasks_command
    from streamlearn.cli.evaluation import evaluate_command
    from streamlearn.submission import SubmitRequest, submit

    console = Console()
    started = time.monotonic()
    root = fresh_home(Path(home))
    env = use_home(root)
    log_path = root / "worker.log"
    from rich.markup import escape

    console.print(f"[bold]streamlearn demo[/bold] in [cyan]{escape(visible(root))}[/cyan] (embedded mode: SQLite "
                  f"catalogue, filesystem queue, artifacts under {escape(visible(root / 'artifacts'))}); worker log: "
                  f"{escape(visible(log_path))}")
    worker = start_worker(env, log_path)
    try:
        data = Path(data_dir) if data_dir else demo_data_dir()
        final: dict[str, dict] = {}
        evaluations: list[list[dict]] = []
        # One task after another, as a stream arrives: each is submitted once the previous one is
        # learned and every stored task re-scored, so each run fills one row R[t, :] of the matrix.
        for task in DEMO_TASKS:
            submission = submit(SubmitRequest.from_options(
                data / f"{task}.jsonl", name=task, validation=data / f"{task}.validation.jsonl",
                test=data / f"{task}.test.jsonl", method="adapter", adapter_size=64, top_k=1, sigma=1e-2,
                pooling="mean", drop_layers=0, epochs=epochs, lr=None, batch_size=32, max_length=max_length, seed=0, warmup=0.1,
                weight_decay=0.0, max_grad_norm=1.0, store_dtype="float32",
            ))
            console.print(f"submitted {task}: job {submission.job_id}")
            final |= follow({task: submission.job_id}, worker, log_path)
            if final[task]["status"] == "succeeded":
                console.print(_evaluate_all(task, evaluations))
    finally:
        stop_worker(worker)
    trained = time.monotonic() - started
    for task, info in final.items():
        if info["status"] != "succeeded":
            console.print(plain(f"{task} failed: {info['error']}", style="red"))
    ctx.invoke(tasks_command, as_json=False)
    plot_file = root / "storage.png"
    ctx.invoke(storage_command, as_json=False, plot_file=str(plot_file))
    ctx.invoke(evaluate_command, task=None, all_tasks=False, matrix=True, as_json=False)
    if evaluations:
        rows = evaluations[-1]
        worst = max((r["drift"] for r in rows), default=0.0)
        console.print("Last re-evaluation of every stored artifact on its test set: " + ", ".join(
            f"{r['task']} {r['accuracy']:.4f} (catalogue {r['catalogue_accuracy']:.4f})" for r in rows
        ) + f"; largest drift {worst:.2g}" + (" - no task was forgotten." if worst == 0 else " - DRIFT!"))
    console.print(
        f"\nDemo finished in {time.monotonic() - started:.0f} s ({trained:.0f} s to train the three tasks and re-score them after each). "
        f"Storage plot: {plot_file}\nLook around with:  STREAMLEARN_HOME={root} streamlearn tasks | storage | jobs | "
        "predict sst2 \"a gorgeous, witty film\""
    )
    if any(info["status"] != "succeeded" for info in final.values()):
        raise SystemExit(1)


def _evaluate_all(task: str, evaluations: list[list[dict]]) -> str:
    """Re-score every stored artifact now that `task` was learned: one row R[t, :] of the matrix."""
    from streamlearn.predictor import reevaluate

    rows = reevaluate(source="demo")
    evaluations.append(rows)
    return f"learned {task}; re-scored " + ", ".join(f"{r['task']} {r['accuracy']:.4f}" for r in rows)
