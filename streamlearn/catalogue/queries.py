"""What the CLI and the workers read from the catalogue, as JSON-able dicts.

Each query is a constant number of SQL statements whatever the number of tasks: the task table and
the storage report pick each task's current artifact with one window function, so a 10,000-task
catalogue answers in one round trip instead of 10,000.

A task's current artifact is its newest artifact of a `train` job or of a sweep's chosen trial.
Trial artifacts waiting for their sweep's selection are not shown in the task table, but they
are on disk, so the storage report counts their bytes until the sweep deletes the losers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from streamlearn.catalogue.models import Artifact, Backbone, Job, JobKind, JobStatus, Metric, Task
from streamlearn.catalogue.records import find_job
from streamlearn.storage import StoredTask, build_report


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _ranked_artifacts():
    """Each artifact with its task, its rank within the task (1 = the task's current one), and the
    task's artifact count and bytes (window aggregates: no second subquery to join)."""
    visible = case((or_(Job.kind == JobKind.TRAIN, Job.chosen.is_(True)), 1), else_=0)
    per_task = {"partition_by": Job.task_id}
    rank = func.row_number().over(**per_task, order_by=(visible.desc(), Job.finished_at.desc(), Artifact.id.desc()))
    return (
        select(Artifact.id.label("artifact_id"), Job.task_id.label("task_id"), visible.label("visible"),
               rank.label("rn"), func.sum(Artifact.bytes).over(**per_task).label("task_bytes"),
               func.count(Artifact.id).over(**per_task).label("task_artifacts"))
        .join(Job, Job.id == Artifact.job_id)
        .subquery("ranked")
    )


def _latest_jobs():
    """Each task's jobs ranked newest first (trials excluded: their sweep stands for them)."""
    rank = func.row_number().over(partition_by=Job.task_id, order_by=(Job.created_at.desc(), Job.id.desc()))
    return (
        select(Job.id.label("job_id"), Job.task_id.label("task_id"), Job.status.label("status"), rank.label("rn"))
        .where(Job.kind != JobKind.TRIAL)
        .subquery("latest")
    )


def task_table(s: Session) -> list[dict[str, Any]]:
    """One row per task in arrival order, with its latest job's status and its current artifact.

    Returns:
        Dicts with `task, created_at, status, job_id` (the latest job) and, from the current
        artifact (None while the task has none): `artifact_job_id, method, adapter_size,
        hyperparameters, val_accuracy, test_accuracy, trainable_params, stored_params, bytes,
        sha256, uri, classes, backbone`.
    """
    ranked, latest = _ranked_artifacts(), _latest_jobs()
    val, test, owner = aliased(Metric), aliased(Metric), aliased(Job)
    stmt = (
        select(
            Task.name, Task.created_at, latest.c.status, latest.c.job_id, owner.id, owner.hyperparameters,
            Artifact.method, Artifact.adapter_size, Artifact.trainable_params, Artifact.stored_params,
            Artifact.bytes, Artifact.sha256, Artifact.uri, Artifact.classes, Backbone.name,
            val.value, test.value,
        )
        .outerjoin(ranked, and_(ranked.c.task_id == Task.id, ranked.c.rn == 1, ranked.c.visible == 1))
        .outerjoin(Artifact, Artifact.id == ranked.c.artifact_id)
        .outerjoin(owner, owner.id == Artifact.job_id)
        .outerjoin(Backbone, Backbone.id == Artifact.backbone_id)
        .outerjoin(val, and_(val.job_id == Artifact.job_id, val.split == "validation", val.name == "accuracy"))
        .outerjoin(test, and_(test.job_id == Artifact.job_id, test.split == "test", test.name == "accuracy"))
        .outerjoin(latest, and_(latest.c.task_id == Task.id, latest.c.rn == 1))
        .order_by(Task.id)
    )
    keys = ("task", "created_at", "status", "job_id", "artifact_job_id", "hyperparameters", "method",
            "adapter_size", "trainable_params", "stored_params", "bytes", "sha256", "uri", "classes",
            "backbone", "val_accuracy", "test_accuracy")
    rows = []
    for values in s.execute(stmt):
        row = dict(zip(keys, values))
        row["created_at"] = _iso(row["created_at"])
        row["status"] = str(row["status"]) if row["status"] is not None else None
        rows.append(row)
    return rows


def _progress(job: Job) -> dict[str, Any]:
    return {"epoch": job.epoch, "step": job.step, "total_steps": job.total_steps, "loss": job.loss}


def _job_dict(job: Job, task: str) -> dict[str, Any]:
    return {
        "job_id": job.id, "task": task, "kind": str(job.kind), "parent_id": job.parent_id,
        "status": str(job.status), "method": job.method, "attempts": job.attempts, "worker": job.worker,
        "progress": _progress(job), "error": job.error, "chosen": job.chosen,
        "created_at": _iso(job.created_at), "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at), "heartbeat_at": _iso(job.heartbeat_at),
        "finished_at": _iso(job.finished_at),
    }


def job_status(s: Session, job_id: str) -> dict[str, Any]:
    """A job's status, progress, worker, metrics and artifact; for a sweep, also its trials.

    Args:
        s: Session.
        job_id: Full id or a unique prefix.

    Returns:
        `job_id, task, kind, parent_id, status, method, hyperparameters, attempts, worker,
        progress {epoch, step, total_steps, loss}, error, chosen, timestamps, metrics
        {split: {name: value}}, artifact` (None until succeeded) and, for sweeps only,
        `trials: [{job_id, status, hyperparameters, val_accuracy, worker, chosen, ...}]`.

    Raises:
        UnknownJob: no such job.
    """
    job = find_job(s, job_id)
    out = _job_dict(job, job.task.name) | {"hyperparameters": job.hyperparameters}
    metrics: dict[str, dict[str, float]] = {}
    for m in s.scalars(select(Metric).where(Metric.job_id == job.id)):
        metrics.setdefault(m.split, {})[m.name] = m.value
    out["metrics"] = metrics
    art = s.scalar(select(Artifact).where(Artifact.job_id == job.id))
    out["artifact"] = None if art is None else {
        "uri": art.uri, "sha256": art.sha256, "bytes": art.bytes, "trainable_params": art.trainable_params,
        "stored_params": art.stored_params, "method": art.method, "adapter_size": art.adapter_size,
        "classes": art.classes, "backbone": art.backbone.name, "backbone_fingerprint": art.backbone.fingerprint,
    }
    if job.kind == JobKind.SWEEP:
        val = aliased(Metric)
        trials = s.execute(
            select(Job, val.value)
            .outerjoin(val, and_(val.job_id == Job.id, val.split == "validation", val.name == "accuracy"))
            .where(Job.parent_id == job.id)
            .order_by(Job.created_at, Job.id)
        )
        out["trials"] = [
            _job_dict(t, out["task"]) | {"hyperparameters": t.hyperparameters, "val_accuracy": v} for t, v in trials
        ]
    return out


def list_jobs(s: Session, status: JobStatus | str | None = None, *, task: str | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Jobs oldest first, optionally only one status or one task; each with its task name.

    Returns:
        Dicts with `job_id, task, kind, parent_id, status, method, attempts, worker, progress,
        error, chosen` and the timestamps (`created_at`, ...).
    """
    stmt = select(Job, Task.name).join(Task, Task.id == Job.task_id).order_by(Job.created_at, Job.id)
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status))
    if task is not None:
        stmt = stmt.where(Task.name == task)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_job_dict(job, name) for job, name in s.execute(stmt)]


def _cutoff(now: datetime, timeout: float | timedelta) -> datetime:
    return now - (timeout if isinstance(timeout, timedelta) else timedelta(seconds=timeout))


def _recovery_rows(s: Session, stmt) -> list[dict[str, Any]]:
    return [
        {"job_id": job.id, "task": name, "kind": str(job.kind), "status": str(job.status), "worker": job.worker,
         "heartbeat_at": _iso(job.heartbeat_at), "enqueued_at": _iso(job.enqueued_at), "attempts": job.attempts}
        for job, name in s.execute(stmt)
    ]


def orphaned_jobs(s: Session, now: datetime, timeout: float | timedelta) -> list[dict[str, Any]]:
    """Running jobs whose worker has not sent a heartbeat for `timeout` (seconds or a timedelta).

    Sweep parents are never orphaned: no worker runs them, their trials carry the heartbeats.
    Requeue each with `records.requeue(s, job_id, stale_before=now - timeout)`.
    """
    cutoff = _cutoff(now, timeout)
    stmt = (
        select(Job, Task.name).join(Task, Task.id == Job.task_id)
        .where(Job.status == JobStatus.RUNNING, Job.kind != JobKind.SWEEP,
               or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
        .order_by(Job.heartbeat_at)
    )
    return _recovery_rows(s, stmt)


def stale_queued_jobs(s: Session, now: datetime, timeout: float | timedelta) -> list[dict[str, Any]]:
    """Queued jobs that no worker picked up within `timeout` of their last enqueue (message lost?)."""
    cutoff = _cutoff(now, timeout)
    stmt = (
        select(Job, Task.name).join(Task, Task.id == Job.task_id)
        .where(Job.status == JobStatus.QUEUED, Job.kind != JobKind.SWEEP, Job.enqueued_at < cutoff)
        .order_by(Job.enqueued_at)
    )
    return _recovery_rows(s, stmt)


def sweeps_ready(s: Session) -> list[str]:
    """Ids of sweeps not yet ended whose trials have all ended: selection is due (see `trials.settle`)."""
    trial = aliased(Job)
    unfinished = (
        select(trial.id)
        .where(trial.parent_id == Job.id, trial.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .exists()
    )
    any_trial = select(trial.id).where(trial.parent_id == Job.id).exists()
    stmt = (
        select(Job.id)
        .where(Job.kind == JobKind.SWEEP, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)), any_trial, ~unfinished)
        .order_by(Job.created_at)
    )
    return list(s.scalars(stmt))


def storage_report(s: Session) -> dict[str, Any]:
    """Cumulative stored bytes per task in arrival order, against the 4Lmd law and K full copies.

    Only tasks with at least one artifact count as learned. See `storage.build_report` for the
    fields (`backbone_params, backbone_bytes, tasks, total_bytes, full_copy_total_bytes, ratio`, ...).
    """
    ranked = _ranked_artifacts()
    stmt = (
        select(
            Task.name, Artifact.method, ranked.c.task_bytes, ranked.c.task_artifacts, Artifact.adapter_size,
            Artifact.classes, Artifact.stored_params, Backbone.name, Backbone.fingerprint, Backbone.layers,
            Backbone.hidden, Backbone.params, Backbone.bytes, Job.hyperparameters,
        )
        .join(ranked, and_(ranked.c.task_id == Task.id, ranked.c.rn == 1))
        .join(Artifact, Artifact.id == ranked.c.artifact_id)
        .join(Backbone, Backbone.id == Artifact.backbone_id)
        .join(Job, Job.id == Artifact.job_id)
        .order_by(Task.id)
    )
    # PostgreSQL's SUM of a BIGINT is NUMERIC (a Decimal here): back to int. A job of release
    # 0.1.0 has no drop_layers / store_dtype in its hyperparameters: 0 and float32 then.
    return build_report(
        StoredTask(task, method, int(total), int(n), m, classes, stored, bb, fp, layers, hidden, params, bb_bytes,
                   drop_layers=int((hp or {}).get("method", {}).get("drop_layers", 0)),
                   dtype=str((hp or {}).get("train", {}).get("store_dtype", "float32")))
        for task, method, total, n, m, classes, stored, bb, fp, layers, hidden, params, bb_bytes, hp in s.execute(stmt)
    )
