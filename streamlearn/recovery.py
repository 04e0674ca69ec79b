"""Crash recovery through the catalogue: find jobs whose worker is gone and put them back in the queue.

The catalogue, not the broker, is the source of truth (DESIGN.md, "Modes"). Every worker runs
`reconcile` at start and then periodically (`workers/boot.py`). It re-enqueues:

- running jobs whose heartbeat is older than `STREAMLEARN_HEARTBEAT_TIMEOUT`, unless their worker
  process runs on this host and is alive (then the heartbeat was lost to the database, not the worker);
- running jobs whose recorded worker ran on *this* host and whose pid no longer exists (a killed
  worker is noticed at once, without waiting for the heartbeat timeout);
- queued jobs last enqueued more than `STREAMLEARN_QUEUED_TIMEOUT` ago (a lost message: the
  embedded filesystem transport never redelivers, and a restarted Redis keeps nothing).

It removes temporary files (`*.tmp`) older than an hour from the artifact store: a writer
SIGKILLed between writing and renaming leaves one behind.

It also settles sweeps whose trials all ended but whose selection never ran (the worker of the
last trial died between its commit and the selection; see `streamlearn.trials`).

Each requeue is one conditional UPDATE (`records.requeue(..., stale_before=...)`), so two workers
reconciling at once requeue a job once; a duplicate message is harmless because `run_task` is
idempotent.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timedelta

from streamlearn.artifacts import ArtifactStore, remove_stale_temps
from streamlearn.settings import Settings, get_settings

log = logging.getLogger(__name__)

PROCESSED_MAX_AGE = 3600.0
"""Seconds a consumed message file of the embedded broker is kept before a worker deletes it."""

STALE_TEMP_AGE = 3600.0
"""Seconds after which a `*.tmp` file in the store belongs to a writer that was killed, and is removed."""

IDLE_GRACE = 15.0
"""Seconds a job may wait in the queue before `status` suspects that no worker is running."""


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _here(worker: str | None, host: str) -> int | None:
    """The pid of a `host:pid` worker that ran on this host, else None."""
    worker_host, _, pid = (worker or "").rpartition(":")
    return int(pid) if worker_host == host and pid.isdigit() else None


def _dead_here(worker: str | None, host: str) -> bool:
    pid = _here(worker, host)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


def _alive_here(worker: str | None, host: str) -> bool:
    pid = _here(worker, host)
    return pid is not None and pid_alive(pid)


def reconcile(settings: Settings | None = None, now: datetime | None = None) -> list[str]:
    """Requeue (in the catalogue) and re-enqueue (on the broker) every job whose worker is gone.

    Returns:
        The ids of the jobs re-enqueued.
    """
    from streamlearn import dispatch
    from streamlearn.catalogue import queries, records
    from streamlearn.catalogue.models import utcnow
    from streamlearn.catalogue.session import session_scope

    settings = settings or get_settings()
    now = now or utcnow()
    host = socket.gethostname()
    heartbeat_cutoff = now - timedelta(seconds=settings.heartbeat_timeout)
    queued_cutoff = now - timedelta(seconds=settings.queued_timeout)
    requeued: list[str] = []
    with session_scope() as s:
        # job id -> (stale_before, held_by): the conditions under which the requeue still applies
        # when it is written, so a worker that took the job over meanwhile keeps it.
        candidates: dict[str, tuple[datetime | None, tuple[str, int] | None]] = {}
        for row in queries.list_jobs(s, "running"):
            if _dead_here(row["worker"], host):
                candidates[row["job_id"]] = (None, (host, _here(row["worker"], host)))
        for row in queries.orphaned_jobs(s, now, settings.heartbeat_timeout):
            beat = datetime.fromisoformat(row["heartbeat_at"]) if row["heartbeat_at"] else None
            recent = beat is not None and (now - beat).total_seconds() < settings.task_time_limit
            if recent and _alive_here(row["worker"], host):
                # Its worker runs on this host and lives: the heartbeat was lost to a database that
                # refused connections for a while, not to a crash, and the worker finishes the job
                # itself. Past the time limit a live pid is no proof (it may have been reused).
                continue
            candidates.setdefault(row["job_id"], (heartbeat_cutoff, None))
        for row in queries.stale_queued_jobs(s, now, settings.queued_timeout):
            candidates.setdefault(row["job_id"], (queued_cutoff, None))
        for job_id, (stale_before, held_by) in candidates.items():
            try:
                if records.requeue(s, job_id, stale_before=stale_before, held_by=held_by) is not None:
                    requeued.append(job_id)
            except records.InvalidTransition:
                continue  # it ended since we looked
    for job_id in requeued:
        dispatch.enqueue(job_id, settings)
    _settle_sweeps()
    prune_processed(settings)
    remove_stale_temps(ArtifactStore(settings.artifacts), STALE_TEMP_AGE)
    return requeued


def _settle_sweeps() -> None:
    """Select the winner of every sweep whose trials all ended but whose last finisher died first."""
    from streamlearn import trials

    for sweep_id in trials.settle_ready():
        log.warning("reconcile: settled sweep %s, whose last trial ended without selecting", sweep_id)


def prune_processed(settings: Settings, max_age: float = PROCESSED_MAX_AGE) -> int:
    """Delete consumed message files of the embedded broker older than `max_age` seconds."""
    if not settings.is_embedded_broker:
        return 0
    folder = settings.queue_dir / "processed"
    if not folder.is_dir():
        return 0
    cutoff, removed = time.time() - max_age, 0
    for path in folder.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def idle_queue_warning(s, now: datetime | None = None, grace: float = IDLE_GRACE) -> str | None:
    """A hint when jobs wait in the queue and no worker shows signs of life; None when all is well.

    A worker is alive when some running job has a heartbeat fresher than the heartbeat timeout. A
    queued job waiting longer than `grace` with no such job means nobody consumes the queue.
    """
    from streamlearn.catalogue import queries
    from streamlearn.catalogue.models import utcnow

    settings = get_settings()
    now = now or utcnow()
    waiting = queries.stale_queued_jobs(s, now, grace)
    if not waiting:
        return None
    running = [r for r in queries.list_jobs(s, "running") if r["kind"] != "sweep"]  # no worker runs a sweep itself
    if len(running) > len(queries.orphaned_jobs(s, now, settings.heartbeat_timeout)):
        return None  # a live worker is busy; the queue is just long
    oldest = datetime.fromisoformat(waiting[0]["enqueued_at"])
    return (
        f"{len(waiting)} job(s) queued for up to {(now - oldest).total_seconds():.0f} s and no worker has "
        "picked them up: is a worker running? Start one with `streamlearn worker` "
        "(same STREAMLEARN_HOME / STREAMLEARN_BROKER_URL / STREAMLEARN_DATABASE_URL as here)."
    )


def stale_heartbeat(job: dict, now: datetime | None = None) -> str | None:
    """For a `running` job (a `queries` dict) whose heartbeat is older than the timeout: what that means.

    Returns:
        E.g. "no heartbeat for 95 s (timeout 60 s): its worker may be gone; a worker's reconcile will
        re-enqueue it", or None while the job is not running or its heartbeat is fresh.
    """
    from streamlearn.catalogue.models import utcnow

    if job.get("status") != "running" or job.get("kind") == "sweep" or not job.get("heartbeat_at"):
        return None
    timeout = get_settings().heartbeat_timeout
    age = ((now or utcnow()) - datetime.fromisoformat(job["heartbeat_at"])).total_seconds()
    if age <= timeout:
        return None
    return (f"job {job['job_id']}: no heartbeat for {age:.0f} s (timeout {timeout:.0f} s): its worker "
            f"{job.get('worker') or '?'} may be gone; a worker's reconcile will re-enqueue it")
