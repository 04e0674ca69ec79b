"""Job commands: `jobs` (the list), `cancel JOB` and `retry JOB`.

Nothing heavy is imported (no torch, no celery at module level), so they answer instantly.
"""

from __future__ import annotations

import click

from streamlearn.cli import main
from streamlearn.cli.console import count, echo_json, make_console, plain, visible, warn

DEFAULT_LIMIT = 20
"""Jobs `jobs` lists without --limit or --all: a screenful, newest first."""

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]


@main.command("jobs")
@click.option("--status", "status", type=click.Choice(STATUSES), help="Only jobs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
              help="Show the newest N jobs.")
@click.option("--all", "show_all", is_flag=True, help="Show every job (overrides --limit).")
@click.option("--after", help="Only jobs older than this job (keyset paging: give the last job id shown).")
@click.option("--name-like", metavar="PATTERN",
              help="Only jobs of task names matching this SQL LIKE pattern: '%' any run of characters, "
                   "'_' one character (e.g. 'sst%').")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per job, newest first.")
def jobs_command(status: str | None, limit: int, show_all: bool, after: str | None, name_like: str | None,
                 as_json: bool) -> None:
    """List jobs, newest first: id, task, status, attempts, progress, worker, created_at.

    A running job whose heartbeat is older than STREAMLEARN_HEARTBEAT_TIMEOUT is marked `stale`,
    with a note on stderr: its worker may be gone, and a worker's reconcile will re-enqueue it.
    """
    from streamlearn.catalogue.queries import count_jobs, list_jobs
    from streamlearn.catalogue.session import session_scope
    from streamlearn.recovery import idle_queue_warning, stale_heartbeat

    with session_scope(readonly=True) as s:
        rows = list_jobs(s, status, limit=None if show_all else limit, after=after, name_like=name_like,
                         newest_first=True)
        total = count_jobs(s, status)
        warning = idle_queue_warning(s)
    stale = {r["job_id"]: note for r in rows if (note := stale_heartbeat(r))}
    if as_json:
        echo_json([{**r, "stale": r["job_id"] in stale} for r in rows])
    else:
        _render(rows, total, status, stale)
    for note in stale.values():
        warn(note)
    if warning:
        warn(warning)


def _render(rows: list[dict], total: int, status: str | None, stale: dict[str, str]) -> None:
    console = make_console()
    if not rows:
        console.print(plain("No jobs" + (f" with status {status}" if status else "") + ". Submit one with "
                            "`streamlearn submit-task DATA.jsonl`, or try `streamlearn demo`."))
        return
    from rich.table import Table

    title = count(total, "job") if len(rows) == total else f"newest {len(rows):,} of {count(total, 'job')} (--all)"
    table = Table("job", "task", "status", "attempts", "progress", "worker", "created", title=title)
    for r in rows:
        p = r["progress"]
        progress = "-" if not p["total_steps"] else f"{p['step']}/{p['total_steps']} (epoch {p['epoch']})"
        state = r["status"] + (" (stale)" if r["job_id"] in stale else "")
        table.add_row(r["job_id"][:8], plain(r["task"]), state, str(r["attempts"]), progress,
                      plain(r["worker"] or "-"), r["created_at"][:19])
    console.print(table)


@main.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print {cancelled: [job ids]}.")
def cancel_command(job_id: str, as_json: bool) -> None:
    """Cancel JOB (a unique id prefix is enough): a queued job never starts; a running one stops.

    A running job stops at its first training step after its worker's next heartbeat (at most
    STREAMLEARN_PROGRESS_INTERVAL seconds) and keeps no artifact. Cancelling a sweep cancels every
    trial that has not ended. Its status becomes `cancelled`; `streamlearn retry JOB` queues it again.
    """
    from streamlearn.jobs import cancel

    ids = cancel(job_id)
    if as_json:
        echo_json({"cancelled": ids})
        return
    trials = f" and {count(len(ids) - 1, 'trial')}" if len(ids) > 1 else ""
    click.echo(visible(f"cancelled job {ids[0]}{trials}"))


@main.command("retry")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print {job_id, task, status} of the new job.")
def retry_command(job_id: str, as_json: bool) -> None:
    """Queue a failed or cancelled JOB again, as a new job with the same task, data and hyperparameters.

    A sweep is retried with its whole grid; a trial is retried through its sweep. The stored
    dataset copies are used (their sha256 is checked when the worker loads them).
    """
    from streamlearn.submission import retry

    submission = retry(job_id)
    if as_json:
        echo_json({"job_id": submission.job_id, "task": submission.task, "status": submission.status})
        return
    click.echo(visible(f"job {submission.job_id} queued: task {submission.task} (a retry of {job_id})"))
