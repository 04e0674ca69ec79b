"""What the CLI and the workers read from the catalogue, as JSON-able dicts.

Each query is a constant number of SQL statements whatever the number of tasks (a test counts them
at two catalogue sizes): the task table pages by keyset (`after` the last task seen) and ranks only
the page's artifacts with one window function, and the storage report's totals are SQL sums, so a
100,000-task catalogue answers a page in a few round trips instead of loading every row.

A task's current artifact is its newest artifact of a `train` job or of a sweep's chosen trial.
Trial artifacts waiting for their sweep's selection are not shown in the task table, but they
are on disk, so the storage report counts their bytes until the sweep deletes the losers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from streamlearn.catalogue.models import Artifact, Backbone, FusionSource, Job, JobKind, JobStatus, Metric, Task
from streamlearn.catalogue.records import find_job
from streamlearn.errors import UnknownTask
from streamlearn.storage import BYTES_PER_PARAM, DTYPE_BYTES, StoredTask, build_report, fusion_term, task_params
from streamlearn.sweep import label as settings_label


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _ranked_artifacts(task_ids=None):
    """Each artifact with its task, its rank within the task (1 = the task's current one), and the
    task's artifact count and bytes (window aggregates: no second subquery to join).

    Args:
        task_ids: A subquery of task ids to restrict the ranking to (a page), or None for all.
    """
    visible = case((or_(Job.kind == JobKind.TRAIN, Job.chosen.is_(True)), 1), else_=0)
    per_task = {"partition_by": Job.task_id}
    rank = func.row_number().over(**per_task, order_by=(visible.desc(), Job.finished_at.desc(), Artifact.id.desc()))
    stmt = (
        select(Artifact.id.label("artifact_id"), Job.task_id.label("task_id"), visible.label("visible"),
               rank.label("rn"), func.sum(Artifact.bytes).over(**per_task).label("task_bytes"),
               func.count(Artifact.id).over(**per_task).label("task_artifacts"))
        .join(Job, Job.id == Artifact.job_id)
    )
    if task_ids is not None:
        stmt = stmt.where(Job.task_id.in_(task_ids))
    return stmt.subquery("ranked")


def task_page(s: Session, *, limit: int | None = None, after: str | None = None, status: JobStatus | str | None = None,
              name_like: str | None = None, name: str | None = None):
    """A subquery of the ids of one page of tasks in arrival order (keyset paging: `after` a task name).

    Raises:
        UnknownTask: `after` names no task.
    """
    stmt = select(Task.id).order_by(Task.id)
    if after is not None:
        after_id = s.scalar(select(Task.id).where(Task.name == after))
        if after_id is None:
            raise UnknownTask(f"no task {after!r} to page after (see `streamlearn tasks`)")
        stmt = stmt.where(Task.id > after_id)
    if name is not None:
        stmt = stmt.where(Task.name == name)
    if name_like is not None:
        stmt = stmt.where(Task.name.like(name_like))
    if status is not None:
        stmt = stmt.where(Task.latest_status == JobStatus(status).value)
    if limit is not None:
        stmt = stmt.limit(limit)
    return stmt.subquery("page")


def task_table(s: Session, *, limit: int | None = None, after: str | None = None,
               status: JobStatus | str | None = None, name_like: str | None = None,
               name: str | None = None) -> list[dict[str, Any]]:
    """One row per task in arrival order, with its latest job's status and its current artifact.

    Two SQL statements whatever the number of tasks (one with `after`): the page of task ids is a
    subquery, and the window functions that pick each task's artifact and latest job only rank
    the page's rows.

    Args:
        s: Session.
        limit: At most this many tasks.
        after: Only tasks that arrived after this task (keyset paging: pass the last name seen).
        status: Only tasks whose latest job has this status.
        name_like: Only task names matching this SQL LIKE pattern (`%` any run, `_` one character).
        name: Only the task with exactly this name.

    Returns:
        Dicts with `task, created_at, status, job_id` (the latest job) and, from the current
        artifact (None while the task has none): `artifact_job_id, method, adapter_size,
        hyperparameters, val_accuracy, test_accuracy, collapsed, trainable_params, stored_params,
        bytes, sha256, uri, classes, backbone`. `collapsed` is the test split's flag
        (`training.collapsed`; validation's when the task has no test split), None for metrics
        recorded before the flag existed. `settings`: the kept hyperparameters in `tasks`' compact form (`m=64 lr=1e-3 ep=3`, the default
        learning rate resolved). `sources`: a fused task's source tasks, in order ([] otherwise).

    Raises:
        UnknownTask: `after` names no task.
    """
    page = task_page(s, limit=limit, after=after, status=status, name_like=name_like, name=name)
    ids = select(page.c.id)
    ranked, latest = _ranked_artifacts(ids), aliased(Job)
    val, test, owner = aliased(Metric), aliased(Metric), aliased(Job)
    val_collapsed, test_collapsed = aliased(Metric), aliased(Metric)
    stmt = (
        select(
            Task.name, Task.created_at, latest.status, latest.id, owner.id, owner.hyperparameters,
            Artifact.method, Artifact.adapter_size, Artifact.trainable_params, Artifact.stored_params,
            Artifact.bytes, Artifact.sha256, Artifact.uri, Artifact.classes, Backbone.name,
            val.value, test.value, val_collapsed.value, test_collapsed.value,
        )
        .join(page, page.c.id == Task.id)
        .outerjoin(ranked, and_(ranked.c.task_id == Task.id, ranked.c.rn == 1, ranked.c.visible == 1))
        .outerjoin(Artifact, Artifact.id == ranked.c.artifact_id)
        .outerjoin(owner, owner.id == Artifact.job_id)
        .outerjoin(Backbone, Backbone.id == Artifact.backbone_id)
        .outerjoin(val, and_(val.job_id == Artifact.job_id, val.split == "validation", val.name == "accuracy"))
        .outerjoin(test, and_(test.job_id == Artifact.job_id, test.split == "test", test.name == "accuracy"))
        .outerjoin(val_collapsed, and_(val_collapsed.job_id == Artifact.job_id, val_collapsed.split == "validation",
                                       val_collapsed.name == "collapsed"))
        .outerjoin(test_collapsed, and_(test_collapsed.job_id == Artifact.job_id, test_collapsed.split == "test",
                                        test_collapsed.name == "collapsed"))
        .outerjoin(latest, latest.id == Task.latest_job_id)
        .order_by(Task.id)
    )
    keys = ("task", "created_at", "status", "job_id", "artifact_job_id", "hyperparameters", "method",
            "adapter_size", "trainable_params", "stored_params", "bytes", "sha256", "uri", "classes",
            "backbone", "val_accuracy", "test_accuracy", "val_collapsed", "test_collapsed")
    rows = []
    for values in s.execute(stmt):
        row = dict(zip(keys, values))
        flags = row.pop("val_collapsed"), row.pop("test_collapsed")
        flag = flags[1] if flags[1] is not None or row["test_accuracy"] is not None else flags[0]
        row["collapsed"] = None if flag is None else bool(flag)
        row["created_at"] = _iso(row["created_at"])
        row["status"] = str(row["status"]) if row["status"] is not None else None
        row["settings"] = settings_label(row["hyperparameters"])  # `m=64 lr=1e-3 ep=3`, the lr resolved
        rows.append(row)
    fused = [r["artifact_job_id"] for r in rows if r["method"] == "fusion"]
    lineage = sources_of(s, fused)  # a third statement only when the page holds fused tasks
    for row in rows:
        row["sources"] = [src["task"] for src in lineage.get(row["artifact_job_id"], [])]
    return rows


def sources_of(s: Session, job_ids: Sequence[str]) -> dict[str, list[dict]]:
    """Artifact job id -> its sources in order (`{task, sha256, uri}`), for the jobs given (one statement)."""
    if not job_ids:
        return {}
    source = aliased(Task)
    stmt = (select(Artifact.job_id, FusionSource.position, source.name, FusionSource.source_sha256, FusionSource.source_uri)
            .join(FusionSource, FusionSource.artifact_id == Artifact.id)
            .join(source, source.id == FusionSource.source_task_id)
            .where(Artifact.job_id.in_(list(job_ids))).order_by(Artifact.job_id, FusionSource.position))
    out: dict[str, list[dict]] = {}
    for job_id, _, name, sha, uri in s.execute(stmt):
        out.setdefault(job_id, []).append({"task": name, "sha256": sha, "uri": uri})
    return out


def _progress(job: Job) -> dict[str, Any]:
    out = {"epoch": job.epoch, "step": job.step, "total_steps": job.total_steps, "loss": job.loss}
    if job.method == "fusion":
        # one job, two stages reported as one run: epochs 1..E are stage 1 (own adapter), E+1..2E stage 2 (fusion)
        epochs = int((job.hyperparameters or {}).get("train", {}).get("epochs") or 1)
        out.update(stage=1 if (job.epoch or 0) <= epochs else 2, stages=2)
    return out


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
              limit: int | None = None, after: str | None = None, name_like: str | None = None,
              newest_first: bool = False) -> list[dict[str, Any]]:
    """Jobs oldest first (or newest first), optionally only one status, one task or task names LIKE
    a pattern; each with its task name. Keyset paging: `after` a job id, the next `limit` jobs.

    Returns:
        Dicts with `job_id, task, kind, parent_id, status, method, attempts, worker, progress,
        error, chosen` and the timestamps (`created_at`, ...).

    Raises:
        UnknownJob: `after` is no job's id (a unique prefix is enough).
    """
    order = (Job.created_at.desc(), Job.id.desc()) if newest_first else (Job.created_at, Job.id)
    stmt = select(Job, Task.name).join(Task, Task.id == Job.task_id).order_by(*order)
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status))
    if task is not None:
        stmt = stmt.where(Task.name == task)
    if name_like is not None:
        stmt = stmt.where(Task.name.like(name_like))
    if after is not None:
        last = find_job(s, after)
        if newest_first:
            stmt = stmt.where(or_(Job.created_at < last.created_at,
                                  and_(Job.created_at == last.created_at, Job.id < last.id)))
        else:
            stmt = stmt.where(or_(Job.created_at > last.created_at,
                                  and_(Job.created_at == last.created_at, Job.id > last.id)))
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_job_dict(job, name) for job, name in s.execute(stmt)]


def count_jobs(s: Session, status: JobStatus | str | None = None) -> int:
    """How many jobs there are (with this status)."""
    stmt = select(func.count(Job.id))
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status))
    return int(s.scalar(stmt) or 0)


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


def storage_report(s: Session, limit: int | None = None) -> dict[str, Any]:
    """Cumulative stored bytes per task in arrival order, against the 4Lmd law and K full copies.

    Only tasks with at least one artifact count as learned. The totals are SQL sums over every
    task (one statement, no row per task leaves the database); `tasks` lists the first `limit`
    learned tasks (all with None), each with its cumulative figures. See `storage.build_report`
    for the fields (`backbone_params, backbone_bytes, tasks, total_bytes, full_copy_total_bytes,
    ratio`, ...); `task_count` counts every learned task, `tasks_shown` those listed.
    """
    rows = _stored_tasks(s, limit)
    report = build_report(rows)
    totals = _storage_totals(s) if limit is not None else None
    if totals is not None and totals["task_count"] > len(rows):
        stored, full, theory = totals["total_bytes"], totals["full_copy_total_bytes"], totals["theoretical_total_bytes"]
        report.update(totals, ratio=stored / full if full else None,
                      measured_over_theoretical=stored / theory if theory else None)
    report["tasks_shown"] = len(report["tasks"])
    return report


def _stored_tasks(s: Session, limit: int | None) -> list[StoredTask]:
    page = select(Task.id).where(select(Job.id).where(Job.task_id == Task.id).join(Artifact).exists()).order_by(Task.id)
    if limit is not None:
        page = page.limit(limit)
    page = page.subquery("page")
    ranked = _ranked_artifacts(select(page.c.id) if limit is not None else None)
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
    return [StoredTask(task, method, int(total), int(n), m, classes, stored, bb, fp, layers, hidden, params, bb_bytes,
                       drop_layers=int((hp or {}).get("method", {}).get("drop_layers", 0)),
                       dtype=str((hp or {}).get("train", {}).get("store_dtype", "float32")),
                       fusion_rank=int((hp or {}).get("method", {}).get("fusion_rank", 0)))
            for task, method, total, n, m, classes, stored, bb, fp, layers, hidden, params, bb_bytes, hp
            in s.execute(stmt)]


def _storage_totals(s: Session) -> dict[str, int]:
    """Every learned task's bytes, law bytes and full-copy bytes, summed in SQL (one statement).

    One scan of the artifacts table, grouped by shape: every artifact's bytes count (a task's old
    artifact kept for a fused task's sake is stored too), and the law counts each task's current
    artifact once (`artifacts.current`, kept by `records.refresh_current`; revision 0006 copied the
    task and the law's shape keys onto each row, so no join to the jobs is needed).
    """
    current = Artifact.current.is_(True)
    # The law is the registry's one formula (`storage.task_params`), applied in Python once per
    # distinct shape (backbone, m, C, AdapterDrop depth, stored dtype, method, fusion rank): SQL
    # sums per group, so the rows that leave the database are a handful whatever K is.
    shape = (Backbone.layers, Backbone.hidden, Artifact.adapter_size, Artifact.classes,
             func.coalesce(Artifact.drop_layers, 0), func.coalesce(Artifact.store_dtype, "float32"), Artifact.method,
             func.coalesce(Artifact.fusion_rank, 0))
    stmt = (
        select(*shape, func.sum(case((current, 1), else_=0)), func.sum(Artifact.bytes),
               func.sum(case((current, Artifact.stored_params), else_=0)), func.sum(case((current, Backbone.bytes), else_=0)))
        .join(Backbone, Backbone.id == Artifact.backbone_id)
        .group_by(*shape)
    )
    count = stored = law_bytes = full = fused = 0
    for layers, hidden, m, classes, n, dt, method, r, k, task_bytes, params, full_bytes in s.execute(stmt):
        if not k:  # only older artifacts of tasks whose current one has another shape: bytes, no law
            stored += int(task_bytes)
            continue
        per = DTYPE_BYTES.get(dt, BYTES_PER_PARAM)
        law = int(params) if m is None else task_params(layers, hidden, m, classes, int(n)) * int(k)
        term = fusion_term(layers, hidden, int(r), int(n)) * int(k) if method == "fusion" else 0
        count, stored, full = count + int(k), stored + int(task_bytes), full + int(full_bytes)
        law_bytes += (law + term) * per
        fused += term * per
    return {"task_count": count, "total_bytes": stored, "theoretical_total_bytes": law_bytes,
            "full_copy_total_bytes": full, "fusion_total_bytes": fused}
