"""A sweep's trials in the catalogue: the fan-out at submission and the selection after the last one.

- `record_sweep`: the sweep's part of `submission.submit`: one transaction holds the sweep's parent
  job and one queued trial job per grid point; each trial is enqueued separately (`enqueue_trials`),
  so N workers run N trials at once. The
  parent itself is never enqueued: no worker runs it, its trials carry the work and heartbeats.
- `trial_ended(job_id)`: called after every job ends (succeeded or failed). For a trial whose
  siblings have all ended it runs `settle`, so the trial that finishes last triggers selection.
- `settle(sweep_id)`: picks the winner (`sweep.choose`), marks the sweep succeeded with that trial
  chosen and drops the losers' artifact rows in one transaction, then deletes the losers' files.
  The sweep's status change is one conditional UPDATE, so when two trials end at once only one
  selection happens; the other finds the sweep ended and does nothing. If every trial failed, the
  sweep fails. A failed trial alone does not fail the sweep.
- `settle_ready()`: the reconcile step's part. It settles every sweep whose trials all ended,
  which covers a worker that crashed between finishing the last trial and the selection.

A trial is an ordinary job for the worker (`pipeline.run_task`); a crashed trial is recovered by
the heartbeat reconcile like any job, and its sweep waits for it.
"""

from __future__ import annotations

import logging

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from streamlearn import jobs
from streamlearn.artifacts import ArtifactStore
from streamlearn.catalogue import queries, records
from streamlearn.catalogue.models import Artifact, Job, JobKind, JobStatus, Metric
from streamlearn.catalogue.session import session_scope
from streamlearn.data import Dataset, DataSpec
from streamlearn.errors import BrokerUnavailable, StreamlearnError
from streamlearn.settings import get_settings
from streamlearn.sweep import SweepSpec, TrialResult, choose

log = logging.getLogger(__name__)

ENDED = records.ENDED


def record_sweep(s: Session, name: str, dataset: Dataset, sweep: SweepSpec, base: dict, spec: DataSpec,
                 force: bool) -> tuple[jobs.Submission, list[str]]:
    """Record (in the caller's transaction) a sweep's parent job and one queued trial job per grid point.

    Args:
        s: Session.
        name: Task name.
        dataset: The validated dataset (its `digests` are the stored files).
        sweep: The grid (see `sweep.resolve`).
        base: `jobs.hyperparameters(...)` of the flags; each trial overrides it from the grid.
        spec: Field names and limits of the files.
        force: Make a new sweep even when an identical one exists.

    Returns:
        The sweep's submission and the new trials' ids (none for an identical resubmit).
    """
    sweep.trials(base)  # refuse a grid the method cannot take before recording anything
    params = {"sweep": sweep.to_dict(), "base": base}
    task, parent, created = jobs.record_submission(s, name, dataset, params, spec, force, kind=JobKind.SWEEP)
    trial_ids = create_trials(s, task, parent.id, params) if created else []
    return jobs.Submission(parent.id, task.name, str(parent.status), created), trial_ids


def create_trials(s: Session, task, sweep_id: str, sweep_params: dict) -> list[str]:
    """Record one queued trial job per grid point of a sweep (`{"sweep": spec, "base": hyperparameters}`)."""
    grid = SweepSpec.from_dict(sweep_params["sweep"]).trials(sweep_params["base"])
    return [records.create_job(s, task, method=params["method"]["method"], hyperparameters=params,
                               kind=JobKind.TRIAL, parent_id=sweep_id).id for params in grid]


def enqueue_trials(sweep_id: str, trial_ids: list[str]) -> None:
    """Send each trial to the broker; if the broker fails, record the unsent trials failed and re-raise."""
    from streamlearn import dispatch

    for i, job_id in enumerate(trial_ids):
        try:
            dispatch.enqueue(job_id)
        except BrokerUnavailable as exc:
            # No trial may sit queued without a message: record why the rest will not run.
            for unsent in trial_ids[i:]:
                jobs.fail(unsent, f"not enqueued: {exc}")
            settle(sweep_id)
            raise BrokerUnavailable(
                f"{exc}. {len(trial_ids) - i} of {len(trial_ids)} trials of sweep {sweep_id} are recorded as "
                "failed; start the broker (or fix STREAMLEARN_BROKER_URL) and submit again with --force"
            ) from exc


def trial_ended(job_id: str) -> str | None:
    """Settle the job's sweep if the job is a trial and the last of its sweep to end.

    Never raises: a failure here is logged, and the next reconcile settles the sweep instead.

    Returns:
        The winner's job id when this call completed the sweep, else None.
    """
    try:
        with session_scope(readonly=True) as s:
            parent_id = s.scalar(select(Job.parent_id).where(Job.id == job_id))
        return settle(parent_id) if parent_id is not None else None
    except Exception as exc:
        log.warning("job %s: sweep selection deferred to the next reconcile: %s", job_id, exc)
        return None


def _results(s, sweep_id: str) -> list[tuple[Job, TrialResult]]:
    """Each trial of a sweep in grid order, with its validation accuracy and artifact size."""
    val = aliased(Metric)
    rows = s.execute(
        select(Job, val.value, Artifact.bytes)
        .outerjoin(val, and_(val.job_id == Job.id, val.split == "validation", val.name == "accuracy"))
        .outerjoin(Artifact, Artifact.job_id == Job.id)
        .where(Job.parent_id == sweep_id)
        .order_by(Job.created_at, Job.id)
    )
    return [(job, TrialResult(job.id, job.status == JobStatus.SUCCEEDED, acc, size, order))
            for order, (job, acc, size) in enumerate(rows)]


def settle(sweep_id: str) -> str | None:
    """Select a sweep's winner once all its trials ended; safe to call any number of times, concurrently.

    Returns:
        The winner's job id when this call completed the sweep; None when the sweep is not ready,
        already ended, all its trials failed (it is then marked failed), or another caller won.
    """
    with session_scope() as s:
        sweep = records.find_job(s, sweep_id)
        if sweep.kind != JobKind.SWEEP or sweep.status in ENDED:
            return None
        trials = _results(s, sweep.id)
        if not trials or any(job.status not in ENDED for job, _ in trials):
            return None
        task = sweep.task.name
        winner = choose([r for _, r in trials], SweepSpec.from_dict(sweep.hyperparameters["sweep"]).prefer_smaller)
        losers = [job.id for job, _ in trials if winner is None or job.id != winner.job_id]
        try:
            if winner is None:
                errors = sorted({job.error or "unknown error" for job, _ in trials})
                records.mark_failed(s, sweep.id, f"all {len(trials)} trials failed: " + "; ".join(errors)[:2000])
                uris: list[str] = []
            else:
                uris = records.complete_sweep(s, sweep.id, winner.job_id)
        except records.InvalidTransition:
            return None  # a concurrent finisher settled it first
    _delete_files(task, losers, uris)
    if winner is not None:
        log.info("sweep %s: trial %s chosen (val accuracy %.4f, %d bytes); %d other trials' artifacts deleted",
                 sweep_id, winner.job_id, winner.val_accuracy, winner.bytes, len(uris))
    return None if winner is None else winner.job_id


def _delete_files(task: str, losers: list[str], uris: list[str]) -> None:
    """Delete the losers' artifact files, after the commit: a crash between leaves a stray file, never
    a row pointing at nothing. Also removes files of failed trials that never got a row."""
    store = ArtifactStore(get_settings().artifacts)
    paths = {jobs.artifact_path(uri) for uri in uris} | {store.task_artifact_path(task, job_id) for job_id in losers}
    for path in paths:
        try:
            store.delete_task_artifact(path)
        except (OSError, StreamlearnError) as exc:  # a store that is down: gc removes the stray later
            log.warning("could not delete the losing artifact %s: %s", path, exc)


def settle_ready() -> list[str]:
    """Settle every sweep whose trials all ended (the reconcile step); return the sweeps completed."""
    with session_scope(readonly=True) as s:
        ready = queries.sweeps_ready(s)
    return [sweep_id for sweep_id in ready if settle(sweep_id) is not None]
