"""A job's life in the catalogue: what a submission records, what a worker claims, how a job ends.

`submission.submit` and `pipeline.run_task` are the recipes; these are their catalogue steps
(`record_submission`, `enqueue_or_fail`, `claim`, `finalise`, `fail`, `cancel`). Nothing here
imports torch, so `streamlearn submit-task` answers in well under a second and fails fast when
the broker is down.
Every status change goes through `catalogue.records` (one conditional UPDATE each), so two workers
that receive the same job (late acknowledgement, a reconcile, a retry) never both run it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from streamlearn.artifacts import ArtifactStore
from streamlearn.catalogue import lineage, queries, records
from streamlearn.catalogue.models import FusionSource, Job, JobKind, JobStatus, Task, utcnow
from streamlearn.catalogue.session import session_scope
from streamlearn.data import Dataset, DataSpec, load_dataset
from streamlearn.errors import InvalidConfig, StreamlearnError, TransientError, UnknownTask
from streamlearn.names import check_task_name
from streamlearn.settings import Settings, get_settings
from streamlearn.sidecar import ArtifactMetadata

if TYPE_CHECKING:  # these import torch; `submit` (and so `submit-task`) must stay light
    from streamlearn.backbone import BackboneInfo
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Submission:
    """What `submit_task` did."""

    job_id: str
    task: str
    status: str
    created: bool
    """False when an identical job (same task, data and hyperparameters) already existed."""


@dataclass(frozen=True)
class JobPlan:
    """What a worker needs to run one job, read from its catalogue rows."""

    job_id: str
    task: str
    files: dict[str, str]
    """Split -> sha256 of the stored dataset file."""
    spec: DataSpec
    method: MethodConfig
    train: TrainConfig
    split_seed: int | None = None
    """Seed of the carved validation split when it differs from `train.seed` (a sweep's seeded trials)."""


def task_name(name: str | None, train_path: str | Path) -> str:
    """Return the validated task name: `name`, or the training file's stem (`sst2.jsonl.gz` -> `sst2`).

    Raises:
        InvalidConfig: the name has characters outside [A-Za-z0-9._-], is longer than 64, starts
            with '.' or '-', or contains '..' (so a name can never walk out of the store).
    """
    if name is None:
        name = Path(train_path).name
        for suffix in (".gz", ".jsonl", ".json"):
            name = name.removesuffix(suffix)
    try:
        return check_task_name(name)
    except InvalidConfig as exc:
        raise InvalidConfig(f"{exc} (pass --name)") from None


def hyperparameters(method: dict, train: dict, spec: DataSpec) -> dict:
    """The JSON stored on a job: everything `run_task` needs to repeat the submitter's choices.

    Args:
        method: `MethodConfig.to_dict()`.
        train: `TrainConfig.to_dict()`.
        spec: The data spec; its limits are stored (its field names live on the task).
    """
    return {
        "method": dict(method),
        "train": dict(train),
        "data": {"max_classes": spec.max_classes, "max_line_bytes": spec.max_line_bytes},
    }


def enqueue_or_fail(job_id: str) -> None:
    """Send the job to the broker; if that fails, record the job failed with the reason and re-raise."""
    from streamlearn import dispatch
    from streamlearn.errors import BrokerUnavailable

    try:
        dispatch.enqueue(job_id)
    except BrokerUnavailable as exc:
        # Never leave a job silently queued with no message: record why it will not run.
        fail(job_id, f"not enqueued: {exc}")
        raise BrokerUnavailable(
            f"{exc}. Job {job_id} is recorded as failed; start the broker (or fix STREAMLEARN_BROKER_URL) and submit again"
        ) from exc


def record_submission(s: Session, name: str, dataset: Dataset, params: dict, spec: DataSpec, force: bool,
                      kind: JobKind = JobKind.TRAIN) -> tuple[Task, Job, bool]:
    """Record (in the caller's transaction) the task and a queued job of a validated dataset.

    Returns:
        `records.create_task_and_job`'s `(task, job, created)`.
    """
    rows = {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(dataset.test)}
    method = "sweep" if kind == JobKind.SWEEP else params["method"]["method"]
    return records.create_task_and_job(
        s, name=name, dataset_sha256=dataset.digests["train"], method=method, hyperparameters=params,
        files=dict(dataset.digests), rows=rows, labels=list(dataset.labels), text_field=spec.text_field,
        label_field=spec.label_field, pair_field=spec.pair_field if dataset.is_pair else None, force=force,
        kind=kind,
    )


def claim(job_id: str, settings: Settings) -> tuple[str, JobPlan | None]:
    """Decide, in one transaction, whether this worker runs the job; if so mark it running here."""
    from streamlearn.recovery import pid_alive

    host, pid = socket.gethostname(), os.getpid()
    with session_scope() as s:
        job = records.find_job(s, job_id)
        if job.status in records.ENDED:
            return str(job.status), None
        if job.kind == JobKind.SWEEP:
            return "a sweep is settled by its trials, not run", None
        if job.status == JobStatus.RUNNING and (job.worker_host, job.worker_pid) != (host, pid):
            dead = job.worker_host == host and job.worker_pid is not None and not pid_alive(job.worker_pid)
            cutoff = None if dead else utcnow() - timedelta(seconds=settings.heartbeat_timeout)
            gone = job.worker  # read before the requeue, which clears it
            if records.requeue(s, job.id, stale_before=cutoff, held_by=(job.worker_host, job.worker_pid)) is None:
                return "running elsewhere", None
            log.warning("job %s: its worker %s is gone; taking it over", job.id, gone)
        if job.status == JobStatus.QUEUED:
            try:
                records.mark_running(s, job.id, host, pid)
            except records.InvalidTransition as taken:
                return f"taken by another worker ({taken.current})", None
            if job.parent_id is not None:
                records.start_sweep(s, job.parent_id)
        plan = plan_of(job)
    return "running", plan


def plan_of(job: Job) -> JobPlan:
    """A job's plan from its rows (inside a session): the stored files, data spec and configs."""
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    task, params = job.task, job.hyperparameters
    data = dict(params.get("data", {}))
    split_seed = data.pop("split_seed", None)
    return JobPlan(
        job_id=job.id, task=task.name, files=dict(task.files),
        spec=DataSpec(text_field=task.text_field, label_field=task.label_field,
                      pair_field=task.pair_field or "text_pair", **data),
        method=MethodConfig.from_dict(params["method"]), train=TrainConfig.from_dict(params["train"]),
        split_seed=split_seed,
    )


def stored_dataset(plan: JobPlan) -> Dataset:
    """Load a job's dataset from the store's copies, split exactly as at submission.

    Each copy is read once, and its sha256 must be the one recorded at submission: a copy that was
    changed or damaged in the store fails the job with a message that says how to repair it.

    Raises:
        TransientError: a stored file is missing (the store is unmounted or was not shared).
        InvalidDataset: a stored copy does not match its recorded sha256.
    """
    store = ArtifactStore(get_settings().artifacts)
    paths = {split: store.dataset_path(sha) for split, sha in plan.files.items()}
    for split, path in paths.items():
        if not path.is_file():
            raise TransientError(f"the stored {split} file {path} of task {plan.task!r} is missing from the store")
    seed = plan.train.seed if plan.split_seed is None else plan.split_seed
    # The size cap guarded the submission; these bytes are the ones validated then (the sha256 says so).
    spec = dataclasses.replace(plan.spec, max_bytes=sys.maxsize)
    return load_dataset(paths["train"], paths.get("validation"), paths.get("test"), spec=spec, seed=seed,
                        expected=dict(plan.files))


def finalise(job_id: str, path: Path | str, metadata: dict, backbone: BackboneInfo) -> None:
    """Record the artifact (from its verified sidecar), its metrics, and succeeded, in one transaction."""
    from streamlearn import retention

    uri = ArtifactStore(get_settings().artifacts).key_of(path)
    meta = ArtifactMetadata.from_sidecar(metadata, str(path))
    metrics, method = meta.metrics, meta.method
    with session_scope() as s:
        retention.hold_artifact(s, path)
        records.ensure_backbone(s, dataclasses.asdict(backbone))
        row = records.mark_succeeded(s, job_id, artifact={
            "uri": uri, "sha256": metadata["sha256"], "bytes": metadata["bytes"],
            "trainable_params": meta.stored_params, "stored_params": meta.stored_params,
            "method": method.method, "classes": len(meta.labels),
            "adapter_size": method.adapter_size if method.method in ("adapter", "fusion") else None,
            "backbone_fingerprint": backbone.fingerprint,
        }, metrics={"validation": metrics["val"], "test": metrics["test"]})
        if meta.sources and not s.scalar(select(FusionSource.id).where(FusionSource.artifact_id == row.id).limit(1)):
            lineage.record(s, row, meta.sources)  # the lineage commits with the artifact, never apart
    _trial_ended(job_id)


def fail(job_id: str, reason: BaseException | str) -> None:
    """Record a job as failed with its reason (best effort: logged when the catalogue is down)."""
    message = reason if isinstance(reason, str) else describe(reason)
    try:
        with session_scope() as s:
            records.mark_failed(s, job_id, message)
    except records.InvalidTransition:
        pass  # it succeeded meanwhile (another worker)
    except Exception as exc:
        log.error("job %s: could not record the failure %r: %s", job_id, message, exc)
        return
    _trial_ended(job_id)


def _trial_ended(job_id: str) -> None:
    """If the job is a sweep's trial and the last to end, select the sweep's winner (never raises)."""
    from streamlearn import trials

    trials.trial_ended(job_id)


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, StreamlearnError) else f"{type(exc).__name__}: {exc}"


def fusion_sources(plan: JobPlan, fingerprint: str) -> list:
    """A fusion job's sources as `SourceRef`s, resolved now from the catalogue (`--fuse-from`)."""
    from streamlearn.engine.loading import SourceRef

    with session_scope(readonly=True) as s:
        found = lineage.resolve(s, plan.task, plan.method.sources, fingerprint)
    return [SourceRef(**src) for src in found]


def artifact_path(uri: str, store: ArtifactStore | None = None) -> Path | str:
    """The file (S3: `s3://` address) of a catalogue artifact URI (a key of the store, so the store may move).

    Args:
        uri: The catalogue's key (an absolute path for artifacts of release 0.1.0).
        store: The store the key belongs to (default: the settings' store).
    """
    if Path(uri).is_absolute():
        return Path(uri)
    return (store or ArtifactStore(get_settings().artifacts)).location(uri)


def artifact_plans(task: str | None) -> list[tuple[JobPlan, str, str, dict]]:
    with session_scope(readonly=True) as s:
        rows = queries.task_table(s, name=task)
        if task is not None and not rows:
            records.find_task(s, task)  # raises UnknownTask
        with_artifact = [r for r in rows if r["artifact_job_id"] is not None]
        if task is not None and not with_artifact:
            raise UnknownTask(f"task {task!r} has no trained artifact yet (status: {rows[0]['status']})")
        plans = []
        for row in with_artifact:
            plan = plan_of(records.find_job(s, row["artifact_job_id"]))
            stored = queries.job_status(s, row["artifact_job_id"])["metrics"]
            plans.append((plan, row["uri"], row["sha256"], stored))
    return plans


def cancel(job_id: str) -> list[str]:
    """Cancel a queued or running job; for a sweep, also every trial that has not ended.

    A queued job never starts (its message is skipped); a running one stops at its next step once
    its worker's next heartbeat sees the change, and keeps no artifact.

    Returns:
        The ids cancelled.

    Raises:
        UnknownJob: no such job.
        InvalidConfig: the job already ended (succeeded, failed or cancelled).
    """
    with session_scope() as s:
        job = records.find_job(s, job_id)
        if job.status in records.ENDED:
            raise InvalidConfig(f"job {job.id} already {job.status}; nothing to cancel")
        return records.mark_cancelled(s, job.id)

