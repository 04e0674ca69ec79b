"""What enters the catalogue (backbones, tasks, queued jobs) and how a task or job is found.

Part of the catalogue's write side with `records`, which re-exports these functions: callers use
`records.create_task_and_job(...)` and friends. Nothing here changes a job's status; new jobs are
born `queued`, and every later change goes through `records`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from streamlearn import names
from streamlearn.catalogue.models import Backbone, Job, JobKind, JobStatus, Task, utcnow
from streamlearn.errors import InvalidConfig, UnknownJob, UnknownTask

TASK_NAME = names.TASK_NAME
"""Task names (`streamlearn.names`, the one rule): compared without regard to case."""


def spec_sha256(method: str, hyperparameters: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a job's method and hyperparameters (key order ignored)."""
    spec = {"method": method, "hyperparameters": hyperparameters}
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def ensure_backbone(s: Session, info: Mapping[str, Any]) -> Backbone:
    """Return the backbone row with `info["fingerprint"]`, inserting it on first sight.

    Args:
        s: Session.
        info: `dataclasses.asdict(BackboneInfo)`: name, path, fingerprint, layers, hidden, params, bytes.
    """
    fields = {k: info[k] for k in ("name", "path", "fingerprint", "layers", "hidden", "params", "bytes")}
    found = s.scalar(select(Backbone).where(Backbone.fingerprint == fields["fingerprint"]))
    if found is not None:
        return found
    try:
        with s.begin_nested():
            backbone = Backbone(**fields)
            s.add(backbone)
        return backbone
    except IntegrityError:
        # Another worker registered the same backbone between our SELECT and INSERT.
        return s.scalars(select(Backbone).where(Backbone.fingerprint == fields["fingerprint"])).one()


def _new_job(task: Task, method: str, hyperparameters: Mapping[str, Any], kind: JobKind, parent_id: str | None) -> Job:
    now = utcnow()
    job = Job(
        id=str(uuid.uuid4()), task=task, kind=JobKind(kind), parent_id=parent_id, method=method,
        hyperparameters=dict(hyperparameters), spec_sha256=spec_sha256(method, hyperparameters),
        status=JobStatus.QUEUED, attempts=0, chosen=False, created_at=now, enqueued_at=now,
    )
    if job.kind != JobKind.TRIAL:  # the task's newest job now (a sweep stands for its trials)
        task.latest_job_id, task.latest_status = job.id, JobStatus.QUEUED.value
    return job


def create_task_and_job(
    s: Session,
    *,
    name: str,
    dataset_sha256: str,
    method: str,
    hyperparameters: Mapping[str, Any],
    files: Mapping[str, str] | None = None,
    rows: Mapping[str, int] | None = None,
    labels: Iterable[str] = (),
    text_field: str = "text",
    label_field: str = "label",
    pair_field: str | None = None,
    kind: JobKind | str = JobKind.TRAIN,
    force: bool = False,
) -> tuple[Task, Job, bool]:
    """Create (or reuse) the task `name` and a queued job on it.

    An identical resubmit (same task, same dataset, same method and hyperparameters, a job that has
    not failed) returns that job instead of a new one, unless `force`.

    Args:
        s: Session.
        name: Task name (see `TASK_NAME`).
        dataset_sha256: sha256 of the training file, as stored in the artifact store.
        method: `adapter`, `full`, `top-k`, `layernorm`, or `sweep` for a sweep's parent job.
        hyperparameters: JSON-able method + training configuration (or the sweep spec).
        files: Split -> sha256 of each stored file.
        rows: Split -> number of examples.
        labels: Label names in index order.
        text_field: Name of the text field in the user's JSONL.
        label_field: Name of the label field.
        pair_field: Name of the optional second-text field.
        kind: `train` or `sweep` (trials are made with `create_job`).
        force: Always make a new job.

    Returns:
        `(task, job, created)`; `created` is False when an existing job was returned.

    Raises:
        InvalidConfig: a bad task name, or the task exists with a different dataset.
    """
    names.check_task_name(name)
    files = dict(files or {"train": dataset_sha256})
    # FOR UPDATE: concurrent submits to one task queue up here (PostgreSQL; SQLite's BEGIN IMMEDIATE
    # already serialises writers), so an identical resubmit always sees the job made before it.
    by_name = _by_name(name).with_for_update()
    task = s.scalar(by_name)
    if task is None:
        try:
            with s.begin_nested():
                task = Task(
                    name=name, dataset_sha256=dataset_sha256, files=files, rows=dict(rows or {}),
                    labels=list(labels), text_field=text_field, label_field=label_field, pair_field=pair_field,
                )
                s.add(task)
        except IntegrityError:
            # A concurrent submit created the same task first: use it.
            task = s.scalars(by_name).one()
    if task.name != name:
        raise InvalidConfig(
            f"task name {name!r} is taken by task {task.name!r} (names are unique without regard to case); "
            "use that name or another --name"
        )
    if task.dataset_sha256 != dataset_sha256 or task.files != files:
        raise InvalidConfig(
            f"task {name!r} already exists with another dataset (train sha256 {task.dataset_sha256[:12]}); "
            "submit it under a new --name"
        )
    if not force:
        same = s.scalar(
            select(Job)
            .where(
                Job.task_id == task.id, Job.spec_sha256 == spec_sha256(method, hyperparameters),
                Job.kind == JobKind(kind), Job.parent_id.is_(None), Job.status != JobStatus.FAILED,
            )
            .order_by(Job.created_at.desc())
            .limit(1)
        )
        if same is not None:
            return task, same, False
    job = _new_job(task, method, hyperparameters, JobKind(kind), None)
    s.add(job)
    s.flush()
    return task, job, True


def create_job(
    s: Session,
    task: Task | str,
    *,
    method: str,
    hyperparameters: Mapping[str, Any],
    kind: JobKind | str = JobKind.TRAIN,
    parent_id: str | None = None,
) -> Job:
    """Add a queued job to an existing task, e.g. one trial of a sweep (`kind="trial", parent_id=...`).

    Raises:
        UnknownTask: no task of that name.
        UnknownJob: `parent_id` names no job.
    """
    if isinstance(task, str):
        task = find_task(s, task)
    if parent_id is not None and s.get(Job, parent_id) is None:
        raise UnknownJob(f"no job {parent_id}")
    job = _new_job(task, method, hyperparameters, JobKind(kind), parent_id)
    s.add(job)
    s.flush()
    return job


def _by_name(name: str):
    # One task per name without regard to case (the unique index on lower(name) enforces it).
    return select(Task).where(func.lower(Task.name) == names.task_key(name))


def find_task(s: Session, name: str) -> Task:
    """The task called `name` (in any case: `SST2` finds `sst2`).

    Raises:
        UnknownTask: no task of that name.
    """
    # FOR UPDATE: concurrent submits to one task queue up here (PostgreSQL; SQLite's BEGIN IMMEDIATE
    # already serialises writers), so an identical resubmit always sees the job made before it.
    task = s.scalar(_by_name(name).with_for_update())
    if task is None:
        raise UnknownTask(f"no task named {name!r} (see `streamlearn tasks`)")
    return task


def find_job(s: Session, job_id: str) -> Job:
    """The job with this id, or with this unique id prefix (at least 4 characters).

    Raises:
        UnknownJob: no such job, or the prefix is ambiguous.
    """
    job = s.get(Job, job_id)
    if job is not None:
        return job
    if len(job_id) >= 4 and re.fullmatch(r"[0-9a-fA-F-]+", job_id):
        matches = s.scalars(select(Job).where(Job.id.startswith(job_id.lower())).limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UnknownJob(f"job id prefix {job_id!r} is ambiguous; give more characters")
    raise UnknownJob(f"no job {job_id!r} (see `streamlearn jobs`)")
