"""The one submission path of jobs and sweeps: check -> read once (validate, hash, stage) -> record -> publish -> enqueue.

`submit(request)` is what `streamlearn submit-task`, `pipeline.submit_task`, the demo and any HTTP
front end call. It imports no torch (configurations travel as plain mappings checked against the
flag names), so `submit-task` answers in well under a second.

Order, chosen so that a refused submission leaves nothing behind:
1. everything checkable without the data: the task name, the sweep grid;
2. one read of each file, which validates every line, hashes the bytes and writes them to a
   temporary copy inside the store (`artifacts.DatasetStaging`);
3. one catalogue transaction: the task and its job (or sweep and trials); a task name taken by
   another dataset refuses here;
4. still inside that transaction, the copies are renamed to `datasets/<sha256>…`; any refusal
   before this point removes them;
5. after the commit, the job (or each trial) is sent to the broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamlearn import jobs, retention, trials
from streamlearn.artifacts import ArtifactStore, DatasetStaging
from streamlearn.catalogue import lineage, records
from streamlearn.catalogue.models import JobKind, JobStatus
from streamlearn.catalogue.session import session_scope
from streamlearn.data import DataSpec, load_dataset
from streamlearn.errors import InvalidConfig
from streamlearn.methods.config import MethodConfig
from streamlearn.settings import get_settings
from streamlearn.sweep import SweepSpec

METHOD_FIELDS = ("method", "adapter_size", "top_k", "sigma", "pooling", "drop_layers", "fuse_from", "fusion_rank",
                 "fusion_top")
"""The fields of `MethodConfig`, i.e. the method flags of `submit-task` (a test checks both)."""

TRAIN_FIELDS = ("epochs", "lr", "batch_size", "max_length", "seed", "warmup", "weight_decay", "max_grad_norm",
                "store_dtype")
"""The fields of `TrainConfig`, i.e. the training flags of `submit-task` (a test checks both)."""

NEW_METHOD_DEFAULTS = {"drop_layers": 0, "fuse_from": "all", "fusion_rank": 0, "fusion_top": 0}
NEW_TRAIN_DEFAULTS = {"store_dtype": "float32"}
"""Defaults of the fields added after release 0.1.0 (AdapterDrop depth, fusion settings, stored dtype)."""

SPEC_FIELDS = ("text_field", "label_field", "max_classes", "max_line_bytes", "max_bytes")
"""The `DataSpec` fields a submission may set."""


@dataclass(frozen=True)
class SubmitRequest:
    """Everything one submission asks for."""

    train: str | Path
    """The training JSONL (or .jsonl.gz) file."""
    method: Mapping[str, Any]
    """Every field of `MethodConfig` (`METHOD_FIELDS`), so identical submissions hash alike."""
    train_config: Mapping[str, Any]
    """Every field of `TrainConfig` (`TRAIN_FIELDS`)."""
    spec: DataSpec = field(default_factory=DataSpec)
    """Field names and limits of the files."""
    name: str | None = None
    """Task name; None: the training file's stem."""
    validation: str | Path | None = None
    """Validation file; None: a seeded, stratified 10% of train."""
    test: str | Path | None = None
    """Optional test file."""
    sweep: SweepSpec | None = None
    """A grid of trials instead of one job."""
    force: bool = False
    """Make a new job even when an identical one exists."""

    def __post_init__(self) -> None:
        # Fields newer than release 0.1.0 take their defaults when a caller does not give them.
        object.__setattr__(self, "method", {**NEW_METHOD_DEFAULTS, **self.method})
        object.__setattr__(self, "train_config", {**NEW_TRAIN_DEFAULTS, **self.train_config})
        for what, given, wanted in (("method", self.method, METHOD_FIELDS), ("train_config", self.train_config,
                                                                              TRAIN_FIELDS)):
            if set(given) != set(wanted):
                raise InvalidConfig(f"{what} needs exactly the fields {', '.join(wanted)}")
        if None not in self.method.values():
            from streamlearn.methods.config import MethodConfig

            MethodConfig.from_dict(dict(self.method))  # a setting the method cannot take is refused before any read

    @classmethod
    def from_options(cls, train: str | Path, *, sweep: SweepSpec | None = None, name: str | None = None,
                     validation: str | Path | None = None, test: str | Path | None = None, force: bool = False,
                     **options: Any) -> SubmitRequest:
        """Build a request from flat options named like the `submit-task` flags (`adapter_size=64`, ...).

        Raises:
            InvalidConfig: an option that is not a method, training or data flag, or one missing.
        """
        unknown = set(options) - set(METHOD_FIELDS) - set(TRAIN_FIELDS) - set(SPEC_FIELDS)
        if unknown:
            raise InvalidConfig(f"unknown submission options: {', '.join(sorted(unknown))}")
        spec = DataSpec(**{k: options[k] for k in SPEC_FIELDS if k in options})
        method = {k: options[k] for k in METHOD_FIELDS if k in options}
        train_config = {k: options[k] for k in TRAIN_FIELDS if k in options}
        return cls(train=train, method={**{k: None for k in METHOD_FIELDS if k not in NEW_METHOD_DEFAULTS}, **method},
                   train_config={**{k: None for k in TRAIN_FIELDS if k not in NEW_TRAIN_DEFAULTS}, **train_config},
                   spec=spec, name=name,
                   validation=validation, test=test, sweep=sweep, force=force)


def submit(request: SubmitRequest) -> jobs.Submission:
    """Validate a task's files, store them, record a queued job (or sweep and trials), and enqueue it.

    An identical resubmit (same task name, dataset files and hyperparameters, a job that has not
    failed) returns the existing job unless `request.force`.

    Returns:
        The submission (for a sweep: the sweep's job id).

    Raises:
        InvalidDataset: a file is invalid (nothing is stored or recorded).
        InvalidConfig: a bad task name or grid, the name is taken, or a named fusion source is the task
            itself or no adapter task (nothing is stored or recorded).
        UnknownTask: a named fusion source is not in the catalogue (nothing is stored or recorded).
        BrokerUnavailable: the job could not be enqueued; it is recorded as failed with the reason.
    """
    name = jobs.task_name(request.name, request.train)
    params = jobs.hyperparameters(dict(request.method), dict(request.train_config), request.spec)
    if request.sweep is not None:
        request.sweep.trials(params)  # a grid the method cannot take is refused before any read
    trial_ids: list[str] = []
    store = ArtifactStore(get_settings().artifacts)
    store.objects.check()  # a missing bucket or bad credentials: one line, before anything is read or stored
    with DatasetStaging(store) as staging:
        dataset = load_dataset(request.train, request.validation, request.test, spec=request.spec,
                               seed=int(request.train_config.get("seed") or 0), copy_to=staging.open)
        with session_scope() as s:
            # gc's lock, shared: the copies published below, inside this transaction, cannot be
            # collected between their publication and the commit of the rows that reference them
            retention.hold(s, {})
            named = MethodConfig.from_dict(params["method"]).sources
            if named:  # a named fusion source that can never be one is refused before anything is recorded
                lineage.check_named(s, name, named)
            if request.sweep is None:
                task, job, created = jobs.record_submission(s, name, dataset, params, request.spec, request.force,
                                                            kind=JobKind.TRAIN)
                submission = jobs.Submission(job.id, task.name, str(job.status), created)
            else:
                submission, trial_ids = trials.record_sweep(s, name, dataset, request.sweep, params, request.spec,
                                                            request.force)
            staging.publish(dict(dataset.digests))
    if request.sweep is not None:
        trials.enqueue_trials(submission.job_id, trial_ids)
    elif submission.created:
        jobs.enqueue_or_fail(submission.job_id)
    return submission


def retry(job_id: str) -> jobs.Submission:
    """Queue a failed or cancelled job again, as a new job with the same task and hyperparameters.

    A sweep is retried as a new sweep with its whole grid; a single trial is retried through its sweep.

    Raises:
        UnknownJob: no such job.
        InvalidConfig: the job did not fail or was not cancelled, or it is a trial.
    """
    trial_ids: list[str] = []
    with session_scope() as s:
        job = records.find_job(s, job_id)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise InvalidConfig(f"job {job.id} is {job.status}; only a failed or cancelled job can be retried")
        if job.kind == JobKind.TRIAL:
            raise InvalidConfig(f"job {job.id} is a trial of sweep {job.parent_id}; retry the sweep")
        new = records.create_job(s, job.task, method=job.method, hyperparameters=job.hyperparameters, kind=job.kind)
        if job.kind == JobKind.SWEEP:
            trial_ids = trials.create_trials(s, job.task, new.id, job.hyperparameters)
        submission = jobs.Submission(new.id, job.task.name, str(new.status), True)
    if job.kind == JobKind.SWEEP:
        trials.enqueue_trials(submission.job_id, trial_ids)
    else:
        jobs.enqueue_or_fail(submission.job_id)
    return submission
