"""Every write to the catalogue, and the only place where a job's status changes.

New backbones, tasks and jobs are made in `intake` and re-exported here, so `records` is the
whole write API.

A status change is one conditional UPDATE (`... WHERE id = :id AND status IN (allowed sources)`),
checked against the explicit `TRANSITIONS` table. Because the condition and the write are one
statement, two workers racing for the same job cannot both win, on SQLite or PostgreSQL.

None of these functions commits: call each inside `session_scope()`, which commits the whole
change (status, artifact, metrics) as one transaction or none of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from streamlearn.catalogue.intake import (  # re-exported: records is the catalogue's write API
    TASK_NAME,
    create_job,
    create_task_and_job,
    ensure_backbone,
    find_job,
    find_task,
    spec_sha256,
)
from streamlearn.catalogue.models import Artifact, Backbone, Job, JobKind, JobStatus, Metric, Task, utcnow
from streamlearn.errors import UnknownJob

__all__ = [
    "ARTIFACT_FIELDS", "ENDED", "TASK_NAME", "TRANSITIONS", "InvalidTransition", "complete_sweep", "create_job",
    "create_task_and_job", "ensure_backbone", "find_job", "find_task", "heartbeat", "mark_cancelled", "mark_failed", "mark_running",
    "mark_succeeded", "record_progress", "requeue", "spec_sha256", "start_sweep",
]

Q, R, S, F, C = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    Q: frozenset({R, F, Q, C}),  # picked up; refused or unsendable; re-sent after sitting unpicked; cancelled
    R: frozenset({S, F, Q, C}),  # finished; failed; re-queued because its worker stopped heartbeating; cancelled
    S: frozenset(),
    F: frozenset(),  # a failed job stays failed: `retry` (or `--force`) makes a new job
    C: frozenset(),  # so does a cancelled one
}

ENDED = (S, F, C)
"""Statuses a job never leaves."""
"""Allowed status changes, from -> to. Anything else raises `InvalidTransition`."""

ARTIFACT_FIELDS = {"uri", "sha256", "bytes", "trainable_params", "stored_params", "method", "classes"}
"""Required keys of the `artifact` dict of `mark_succeeded` (plus `backbone_id` or `backbone_fingerprint`)."""

_MAX_ERROR_CHARS = 10_000


class InvalidTransition(RuntimeError):
    """A status change not in `TRANSITIONS`, or one lost to another process that got there first.

    Deliberately not a StreamlearnError: a worker that catches StreamlearnError fails the job, and
    failing a job another worker is running would be wrong. Catch this one and skip the job.
    """

    def __init__(self, job_id: str, current: JobStatus | str, target: JobStatus | str) -> None:
        super().__init__(f"job {job_id}: {current} -> {target} is not allowed")
        self.job_id, self.current, self.target = job_id, JobStatus(current), JobStatus(target)


def _transition(s: Session, job_id: str, to: JobStatus, *conditions: Any, **values: Any) -> Job:
    """Move a job to `to` in one conditional UPDATE; raise when the table or a race forbids it."""
    sources = [src for src, targets in TRANSITIONS.items() if to in targets]
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources), *conditions)
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    job = s.get(Job, job_id, populate_existing=True)
    if job is None:
        raise UnknownJob(f"no job {job_id!r}")
    if result.rowcount != 1:
        raise InvalidTransition(job_id, job.status, to)
    _follow_latest(s, job.task_id, job_id, to)
    return job


def _follow_latest(s: Session, task_id: int, job_id: str, status: JobStatus) -> None:
    """Keep `tasks.latest_status` equal to the status of the task's newest job (a no-op for older jobs and trials)."""
    s.execute(update(Task).where(Task.id == task_id, Task.latest_job_id == job_id).values(latest_status=status.value)
              .execution_options(synchronize_session=False))


def mark_running(s: Session, job_id: str, host: str, pid: int) -> Job:
    """queued -> running, recording the worker and a first heartbeat.

    Raises:
        InvalidTransition: the job is not queued (another worker took it, or it already ended).
    """
    now = utcnow()
    return _transition(
        s, job_id, R, worker_host=host, worker_pid=pid, started_at=now, heartbeat_at=now,
        finished_at=None, error=None, epoch=None, step=None, total_steps=None, loss=None,
    )


def _owned_running(job_id: str, host: str | None, pid: int | None) -> list[Any]:
    conditions = [Job.id == job_id, Job.status == R]
    if host is not None:
        conditions.append(Job.worker_host == host)
    if pid is not None:
        conditions.append(Job.worker_pid == pid)
    return conditions


def record_progress(
    s: Session, job_id: str, epoch: int, step: int, total_steps: int, loss: float | None,
    *, host: str | None = None, pid: int | None = None,
) -> bool:
    """Store a running job's progress; this is also its heartbeat.

    Args:
        host: When given with `pid`, update only if this worker still owns the job.
        pid: See `host`.

    Returns:
        False when the job is no longer running (here): the worker should stop working on it.
    """
    result = s.execute(
        update(Job).where(*_owned_running(job_id, host, pid))
        .values(epoch=epoch, step=step, total_steps=total_steps, loss=None if loss is None else float(loss),
                heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def heartbeat(s: Session, job_id: str, *, host: str | None = None, pid: int | None = None) -> bool:
    """Refresh a running job's heartbeat without progress (e.g. while evaluating or saving).

    Returns:
        False when the job is no longer running (here).
    """
    result = s.execute(
        update(Job).where(*_owned_running(job_id, host, pid)).values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _metric_rows(job_id: str, metrics: Mapping[str, Any]) -> list[Metric]:
    rows = []
    for split, values in metrics.items():
        if values is None:
            continue
        if dataclasses.is_dataclass(values):
            values = dataclasses.asdict(values)
        split = "validation" if split == "val" else split
        rows += [Metric(job_id=job_id, split=split, name=k, value=float(v)) for k, v in values.items() if v is not None]
    return rows


def artifact_summary(job: Job) -> dict[str, Any]:
    """The columns an artifact row copies from its job (what the storage totals group by)."""
    return summary_of(job.task_id, job.kind, job.chosen, job.hyperparameters)


def summary_of(task_id: int, kind: JobKind | str, chosen: bool | None, hyperparameters: Mapping | None) -> dict[str, Any]:
    """`artifact_summary` from a job's columns; a job of release 0.1.0 recorded no AdapterDrop depth,
    stored dtype or fusion rank: 0, float32, 0."""
    hp = hyperparameters or {}
    method, train = hp.get("method") or {}, hp.get("train") or {}
    return {"task_id": task_id, "visible": JobKind(kind) == JobKind.TRAIN or bool(chosen),
            "drop_layers": int(method.get("drop_layers") or 0), "store_dtype": str(train.get("store_dtype") or "float32"),
            "fusion_rank": int(method.get("fusion_rank") or 0)}


def summary_mismatches(s: Session) -> list[str]:
    """Where the summary columns (`tasks.latest_*`, `artifacts.task_id` ...) differ from the jobs they
    summarise, one line each ([] when they agree). Reads every job: for `db check` and tests, not a hot path."""
    newest: dict[int, tuple] = {}
    for job_id, task_id, status, created in s.execute(
            select(Job.id, Job.task_id, Job.status, Job.created_at).where(Job.kind != JobKind.TRIAL)):
        if task_id not in newest or (created, job_id) > (newest[task_id][2], newest[task_id][0]):
            newest[task_id] = (job_id, JobStatus(status).value, created)
    out = []
    for task_id, name, job_id, status in s.execute(select(Task.id, Task.name, Task.latest_job_id, Task.latest_status)):
        want = newest.get(task_id, (None, None))[:2]
        if (job_id, status) != want:
            out.append(f"task {name}: newest job {want[0]} ({want[1]}), summary {job_id} ({status})")
    best: dict[int, tuple] = {}
    for artifact_id, task_id, visible in s.execute(select(Artifact.id, Artifact.task_id, Artifact.visible)):
        if task_id not in best or (bool(visible), artifact_id) > best[task_id]:
            best[task_id] = (bool(visible), artifact_id)
    for artifact_id, job_id, task_id, current in s.execute(
            select(Artifact.id, Artifact.job_id, Artifact.task_id, Artifact.current)):
        if bool(current) != (best[task_id][1] == artifact_id):
            out.append(f"artifact of job {job_id}: current {current!r} (task's newest artifact says "
                       f"{best[task_id][1] == artifact_id!r})")
    columns = (Artifact.task_id, Artifact.visible, Artifact.drop_layers, Artifact.store_dtype, Artifact.fusion_rank)
    for row in s.execute(select(Artifact.job_id, *columns, Job.task_id, Job.kind, Job.chosen, Job.hyperparameters)
                         .join(Job, Job.id == Artifact.job_id)):
        stored = dict(zip(("task_id", "visible", "drop_layers", "store_dtype", "fusion_rank"), row[1:6]))
        stored["visible"] = None if stored["visible"] is None else bool(stored["visible"])
        want = summary_of(*row[6:])
        if stored != want:
            diff = ", ".join(f"{k} {stored[k]!r} (job says {want[k]!r})" for k in want if stored[k] != want[k])
            out.append(f"artifact of job {row[0]}: {diff}")
    return out


def mark_succeeded(s: Session, job_id: str, artifact: Mapping[str, Any], metrics: Mapping[str, Any]) -> Artifact:
    """running -> succeeded, with its Artifact and Metric rows, in the caller's one transaction.

    Idempotent: for a job that already succeeded it changes nothing and returns the stored artifact.

    Args:
        s: Session.
        job_id: The job.
        artifact: uri, sha256, bytes, trainable_params, stored_params, method, classes,
            adapter_size (None unless an adapter), and backbone_id or backbone_fingerprint.
        metrics: Split -> {name: value}, e.g. `{"validation": {"accuracy": 0.9}, "test": Metrics(...)}`
            (dataclasses allowed; `val` is stored as `validation`).

    Raises:
        InvalidTransition: the job is not running (queued, failed).
        ValueError: a missing or unknown artifact field, or an unknown backbone.
    """
    job = find_job(s, job_id)
    if job.status == S and job.artifact is not None:
        return job.artifact
    fields = dict(artifact)
    backbone_id = fields.pop("backbone_id", None)
    fingerprint = fields.pop("backbone_fingerprint", None)
    fields.setdefault("adapter_size", None)
    missing, unknown = ARTIFACT_FIELDS - fields.keys(), fields.keys() - ARTIFACT_FIELDS - {"adapter_size"}
    if missing or unknown or (backbone_id is None) == (fingerprint is None):
        raise ValueError(
            f"artifact fields: missing {sorted(missing)}, unknown {sorted(unknown)}; "
            "give exactly one of backbone_id, backbone_fingerprint"
        )
    if fingerprint is not None:
        backbone_id = s.scalar(select(Backbone.id).where(Backbone.fingerprint == fingerprint))
        if backbone_id is None:
            raise ValueError(f"unknown backbone {fingerprint[:12]}: call ensure_backbone first")
    try:
        _transition(s, job.id, S, finished_at=utcnow())
    except InvalidTransition as lost:
        if lost.current == S:  # a concurrent finaliser won the race; return what it stored
            stored = s.scalar(select(Artifact).where(Artifact.job_id == job.id))
            if stored is not None:
                return stored
        raise
    row = Artifact(job_id=job.id, backbone_id=backbone_id, **fields, **artifact_summary(job))
    s.add(row)
    s.add_all(_metric_rows(job.id, metrics))
    s.flush()
    refresh_current(s, job.task_id)
    return row


def refresh_current(s: Session, task_id: int) -> None:
    """Mark the task's current artifact (newest visible, else newest) and unmark the others.

    The task's row is locked first (PostgreSQL), so two jobs of one task finishing at once refresh
    one after the other, the second seeing the first's artifact. Every caller has already changed
    its job (job, then task: the order `_follow_latest` takes the same locks in).
    """
    s.execute(select(Task.id).where(Task.id == task_id).with_for_update())
    best = (select(Artifact.id).where(Artifact.task_id == task_id)
            .order_by(Artifact.visible.desc(), Artifact.id.desc()).limit(1).scalar_subquery())
    s.execute(update(Artifact).where(Artifact.task_id == task_id).values(current=Artifact.id == best)
              .execution_options(synchronize_session=False))


def mark_failed(s: Session, job_id: str, message: str) -> Job:
    """queued|running -> failed, storing the message; a no-op for a job that already failed.

    Raises:
        InvalidTransition: the job already succeeded.
    """
    job = find_job(s, job_id)
    if job.status == F:
        return job
    return _transition(s, job.id, F, finished_at=utcnow(), error=str(message)[:_MAX_ERROR_CHARS])


def mark_cancelled(s: Session, job_id: str) -> list[str]:
    """queued|running -> cancelled, for a job and (a sweep) every trial that has not ended.

    A queued job's message is then skipped by the worker that receives it; a running job's next
    heartbeat finds the job no longer running there and stops it at its next step.

    Returns:
        The ids cancelled (empty when the job had already ended).
    """
    job = find_job(s, job_id)
    cancelled = []
    if job.kind == JobKind.SWEEP:
        trials = s.scalars(select(Job.id).where(Job.parent_id == job.id, Job.status.in_((Q, R)))).all()
        for trial in trials:
            try:
                _transition(s, trial, C, finished_at=utcnow())
                cancelled.append(trial)
            except InvalidTransition:
                continue  # it ended meanwhile
    if job.status in (Q, R):
        _transition(s, job.id, C, finished_at=utcnow(), error="cancelled by `streamlearn cancel`")
        cancelled.insert(0, job.id)
    return cancelled


def requeue(s: Session, job_id: str, *, stale_before: datetime | None = None,
            held_by: tuple[str | None, int | None] | None = None) -> Job | None:
    """running|queued -> queued again (attempts + 1), clearing worker and progress.

    The caller enqueues the job's message afterwards. Used for a running job whose worker stopped
    heartbeating, and for a queued job whose message was lost.

    Args:
        stale_before: Requeue only if the job is still stale at the moment of writing: running with
            no heartbeat since this time, or queued since before it. Two workers reconciling at
            once then requeue a job once.
        held_by: Requeue only if the job is still running on this (host, pid): the worker that the
            caller found dead. A worker that took the job over meanwhile keeps it.

    Returns:
        The job, or None when a condition was given and the job no longer meets it.

    Raises:
        InvalidTransition: the job already ended.
    """
    conditions = []
    if stale_before is not None:
        conditions.append(or_(
            and_(Job.status == R, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)),
            and_(Job.status == Q, Job.enqueued_at < stale_before),
        ))
    if held_by is not None:
        host, pid = held_by
        conditions.append(and_(Job.status == R, Job.worker_host == host, Job.worker_pid == pid))
    try:
        return _transition(
            s, job_id, Q, *conditions, attempts=Job.attempts + 1, enqueued_at=utcnow(), worker_host=None,
            worker_pid=None, started_at=None, heartbeat_at=None, epoch=None, step=None, total_steps=None, loss=None,
        )
    except InvalidTransition as refused:
        if (stale_before is not None or held_by is not None) and refused.current in (Q, R):
            return None
        raise


def start_sweep(s: Session, sweep_id: str) -> bool:
    """queued -> running for a sweep whose first trial started; no worker is recorded on the sweep.

    Returns:
        False when the sweep was not queued (already running or ended): nothing changed.
    """
    result = s.execute(
        update(Job).where(Job.id == sweep_id, Job.kind == JobKind.SWEEP, Job.status == Q)
        .values(status=R, started_at=utcnow()).execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        _follow_latest(s, s.scalar(select(Job.task_id).where(Job.id == sweep_id)), sweep_id, R)
    return result.rowcount == 1


def complete_sweep(s: Session, sweep_id: str, winner_id: str) -> list[str]:
    """Mark a sweep succeeded with `winner_id` chosen, and remove every other trial's artifact row.

    Selection happens once: the sweep's status change is the lock, so a second caller gets
    InvalidTransition (or, for the same winner, an empty list).

    Returns:
        The URIs of the removed artifacts; delete those files after the commit (a crash in between
        leaves a stray file, never a row that points at nothing).

    Raises:
        ValueError: `winner_id` is not a succeeded trial of this sweep with an artifact.
        InvalidTransition: the sweep already ended with another winner, or failed.
    """
    sweep, winner = find_job(s, sweep_id), find_job(s, winner_id)
    if sweep.kind != JobKind.SWEEP or winner.parent_id != sweep.id or winner.status != S or winner.artifact is None:
        raise ValueError(f"job {winner_id} is not a succeeded trial with an artifact of sweep {sweep_id}")
    if sweep.status == S and winner.chosen:
        return []
    if sweep.status == Q:
        _transition(s, sweep.id, R, Job.status == Q, started_at=utcnow())
    _transition(s, sweep.id, S, finished_at=utcnow())
    s.execute(update(Job).where(Job.parent_id == sweep.id).values(chosen=Job.id == winner.id)
              .execution_options(synchronize_session=False))
    s.execute(update(Artifact).where(Artifact.job_id == winner.id).values(visible=True)
              .execution_options(synchronize_session=False))
    losers = select(Job.id).where(Job.parent_id == sweep.id, Job.id != winner.id)
    uris = list(s.scalars(select(Artifact.uri).where(Artifact.job_id.in_(losers))))
    s.execute(delete(Artifact).where(Artifact.job_id.in_(losers)).execution_options(synchronize_session=False))
    refresh_current(s, sweep.task_id)
    s.expire_all()
    return uris
