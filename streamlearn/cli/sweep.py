"""Sweep parts of the service commands: the `submit-task` sweep flags, the trial table, the live bars.

`submit-task --sweep quick|paper | --grid SPEC [--seeds N] [--prefer-smaller EPS]` fans a task out
into trials (see `streamlearn.trials`); `status SWEEP` shows the trials; `--wait`/`--watch` on a
sweep draw one overall bar (trials ended / total) and one bar per running trial. No command is
defined here: `cli/service.py` uses these helpers, so nothing heavy is imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from streamlearn.cli.console import make_console, plain, visible

TERMINAL = ("succeeded", "failed", "cancelled")


def sweep_options(func):
    """The sweep flags of `submit-task`."""
    options = [
        click.option("--sweep", "sweep_name", type=click.Choice(["quick", "paper"]), default=None,
                     help="Train a grid of trials and keep the best on validation: quick = lr {3e-4, 1e-3} x "
                          "m {8, 64} x 3 epochs (4 trials); paper = lr {3e-5, 3e-4, 3e-3} x epochs {3, 20} x "
                          "m {8, 64, 256} (18 trials, Houlsby et al. 2019)."),
        click.option("--grid", default=None, metavar="SPEC",
                     help="A custom sweep grid, e.g. 'lr=1e-4,1e-3;m=16,64;epochs=3' (keys lr, m, epochs; "
                          "a key left out keeps its flag's value; at most 512 trials)."),
        click.option("--seeds", type=int, default=None, metavar="N",
                     help="Run every grid point with N seeds (--seed, --seed+1, ...); needs --sweep or --grid."),
        click.option("--prefer-smaller", type=float, default=None, metavar="EPS",
                     help="Keep the smallest adapter whose validation accuracy is within EPS of the best "
                          "(e.g. 0.005), instead of the best; needs --sweep or --grid."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _progress(trial: dict) -> str:
    p = trial["progress"]
    if trial["status"] != "running" or not p.get("total_steps"):
        return "-"
    return f"{p['step']}/{p['total_steps']} (epoch {p['epoch']})"




def render_trials(info: dict, console=None) -> None:
    """Print a sweep's trial table (state, hyperparameters, val accuracy, worker, chosen) and its winner."""
    from rich.table import Table

    from streamlearn.sweep import label

    trials = info["trials"]
    ended = sum(t["status"] in TERMINAL for t in trials)
    spec = info["hyperparameters"].get("sweep", {})
    rule = "" if spec.get("prefer_smaller") is None else f", prefer smaller within {spec['prefer_smaller']}"
    table = Table(title=plain(f"sweep {spec.get('name', '?')}: {ended}/{len(trials)} trials ended{rule}"))
    for name in ("#", "trial", "status", "hyperparameters", "progress"):
        table.add_column(name, justify="right" if name == "#" else "left")
    table.add_column("val acc", justify="right")
    table.add_column("worker")
    table.add_column("chosen", justify="center")
    for i, t in enumerate(trials, 1):
        table.add_row(str(i), t["job_id"][:8], t["status"], label(t["hyperparameters"]), _progress(t),
                      _acc(t["val_accuracy"]), plain(t["worker"] or "-"), "✓" if t["chosen"] else "")
    console = console or make_console(wide=True)
    console.print(table)
    winner = next((t for t in trials if t["chosen"]), None)
    if winner is not None:
        console.print(plain(f"winner: trial {winner['job_id'][:8]} ({label(winner['hyperparameters'])}), "
                            f"val accuracy {_acc(winner['val_accuracy'])}; the other trials' artifacts were deleted"))
    for t in trials:
        if t["status"] == "failed" and t["error"]:
            console.print(plain(f"trial {t['job_id'][:8]} failed: {t['error'][:200]}", style="red"))


def wait_for_sweep(job_id: str, fetch: Callable[[str], dict], show: bool = True, poll: float = 0.5) -> dict:
    """Poll a sweep until it ends; on stderr draw an overall bar and one bar per running trial.

    Args:
        job_id: The sweep's job id.
        fetch: Returns `queries.job_status` of a job id (with `trials`).
        show: Draw the bars; else just poll.
        poll: Seconds between two polls.
    """
    if not show:
        while (info := fetch(job_id))["status"] not in TERMINAL:
            time.sleep(poll)
        return info
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamlearn.sweep import label

    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=make_console(stderr=True)) as bars:
        info = fetch(job_id)
        overall = bars.add_task(visible(f"{info['task']} sweep"), total=len(info["trials"]), detail="")
        rows: dict[str, int] = {}
        while True:
            info = fetch(job_id)
            trials = info["trials"]
            ended = sum(t["status"] in TERMINAL for t in trials)
            running = sum(t["status"] == "running" for t in trials)
            detail = f"{running} running" if info["status"] not in TERMINAL else info["status"]
            bars.update(overall, completed=ended, total=len(trials), detail=detail)
            for t in trials:
                p = t["progress"]
                if t["job_id"] not in rows and t["status"] == "running":
                    rows[t["job_id"]] = bars.add_task(f"  {label(t['hyperparameters'])}", total=None, detail="")
                row = rows.get(t["job_id"])
                if row is None:
                    continue
                if t["status"] == "running" and p["total_steps"]:
                    bars.update(row, completed=p["step"], total=p["total_steps"],
                                detail=visible(f"epoch {p['epoch']} on {t['worker']}"))
                elif t["status"] in TERMINAL:
                    total = p["total_steps"] or 1
                    bars.update(row, completed=total if t["status"] == "succeeded" else p["step"] or 0, total=total,
                                detail=f"{t['status']}, val {_acc(t['val_accuracy'])}")
                elif t["status"] == "queued":  # requeued after its worker died
                    bars.update(row, detail="requeued")
            if info["status"] in TERMINAL:
                return info
            time.sleep(poll)
