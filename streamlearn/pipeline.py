"""The recipes. Engine part: `fit` (attach -> train -> evaluate -> collect -> detach) and `save`,
used in-process by `streamlearn train` and the benchmarks. The service part (`submit_task`,
`run_task`) composes them with the catalogue. Using a stored artifact lives in `predictor`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from sqlalchemy.exc import OperationalError

from streamlearn import fusion, jobs, submission, training
from streamlearn.artifacts import ArtifactInfo, ArtifactStore, read_artifact, read_metadata, sidecar_path, write_artifact
from streamlearn.backbone import Backbone, resident_backbone
from streamlearn.batches import Batches
from streamlearn.catalogue import records
from streamlearn.data import Dataset, DataSpec, Example, file_sha256
from streamlearn.engine.loading import SourceRef, cast_like_stored
from streamlearn.errors import (
    ArtifactCorrupt,
    ArtifactWriteFailed,
    BackboneChanged,
    BackboneMismatch,
    InvalidConfig,
    TransientError,
)
from streamlearn.heartbeat import Heartbeat, JobSuperseded
from streamlearn.layercache import CacheConfig, cached_training
from streamlearn.methods import MethodConfig, build_parts, default_lr
from streamlearn.settings import get_settings
from streamlearn.sidecar import ArtifactMetadata
from streamlearn.sweep import SweepSpec
from streamlearn.training import Metrics, Progress, TrainConfig, evaluate


def _stored_key(path: Path, sha: str | None = None) -> dict[str, str]:
    """A dataset file as an artifact records it: its digest and its store-relative key, never a path."""
    sha = sha or file_sha256(path)
    return {"sha256": sha, "key": f"datasets/{sha}.jsonl" + (".gz" if str(path).endswith(".gz") else "")}


@dataclass
class FitResult:
    """Everything `fit` produced: the tensors to store, their description, and the numbers."""

    tensors: dict[str, torch.Tensor]
    """Exactly the trained tensors (CPU, in the store dtype), under their format-2 names."""
    metadata: dict
    """The artifact sidecar content (without the file's sha256 and bytes)."""
    val: Metrics
    """Validation metrics of the best epoch, measured with the stored (rounded) tensors."""
    test: Metrics | None
    """Test metrics of the stored tensors, or None without a test split."""
    trainable_params: int
    """Parameters trained."""
    stored_params: int
    """Parameters stored (equal to trainable_params: every method stores exactly what it trained)."""
    backbone_params: int
    """Parameters of the shared backbone |w|."""
    best_epoch: int
    """Epoch (from 1) whose tensors were kept."""
    epochs: int
    """Epochs run."""
    train_examples_per_s: float
    """Training throughput."""
    seconds: float
    """Wall time of fit, evaluation included."""
    cached_layers: int = 0
    """Lower layers served from the training cache (0: every layer ran every step)."""


def _batches(dataset: Dataset, examples: Sequence[Example], backbone: Backbone, cfg: TrainConfig, shuffle: bool) -> Batches:
    index = {name: i for i, name in enumerate(dataset.labels)}
    return Batches(examples, backbone.tokenizer, index, cfg.batch_size, cfg.max_length, shuffle=shuffle, seed=cfg.seed, by_length=not shuffle)


def _resolve(train_cfg: TrainConfig, method: MethodConfig, backbone: Backbone) -> TrainConfig:
    if train_cfg.max_length > backbone.max_length:
        raise InvalidConfig(f"max length {train_cfg.max_length} exceeds the backbone's limit of {backbone.max_length} tokens")
    if train_cfg.lr is None:
        train_cfg = dataclasses.replace(train_cfg, lr=default_lr(method.method))
    return train_cfg


def fit(
    dataset: Dataset,
    method: MethodConfig,
    train: TrainConfig,
    backbone: Backbone,
    on_progress: Progress | None = None,
    verify: bool = True,
    cache: CacheConfig | None = None,
    sources: Sequence[SourceRef] = (),
    locate=None,
    name: str = "task",
) -> FitResult:
    """Train one task's modules on the shared backbone and evaluate them.

    Args:
        dataset: A validated dataset.
        method: Which tensors to train.
        train: Optimisation settings (lr None means the method's default).
        backbone: The shared, frozen backbone; it is bit-identical afterwards (verified).
        on_progress: Called after every step with (epoch, step, total_steps, loss).
        verify: Re-hash the backbone afterwards; a worker passes False because `check_resident`
            re-hashes it after every job anyway (one hash of |w| per job, not two).
        cache: Budget and dtype of the lower-layer cache (AdapterDrop N); None reads the environment
            (`STREAMLEARN_LAYER_CACHE_BYTES`, `STREAMLEARN_LAYER_CACHE_DTYPE`).
        sources: A fused task's sources (method fusion), in order, each verified when read.
        locate: key -> path of a source's artifact (default: in the settings' artifact store).
        name: The task's name (in a fused task's messages).

    Returns:
        The FitResult; nothing is written to disk.

    Raises:
        BackboneMismatch: With `verify`, the shared backbone changed during training (a bug, never expected).
    """
    start = time.perf_counter()
    train_cfg = _resolve(train, method, backbone)
    train_batches = _batches(dataset, dataset.train, backbone, train_cfg, shuffle=True)
    val_batches = _batches(dataset, dataset.validation, backbone, train_cfg, shuffle=False)
    torch.manual_seed(train_cfg.seed)
    parts = build_parts(backbone, method, len(dataset.labels))
    fused = method.method == "fusion"
    if fused:
        if not sources:
            raise InvalidConfig("fusion needs at least one source task with an adapter (--fuse-from)")
        fusion.freeze_for_stage_one(parts)
    # the lowest N layers are frozen and deterministic: from a cache computed once (layercache)
    model, train_batches, val_batches, lower = cached_training(backbone, parts, train_batches, val_batches,
                                                               cache or CacheConfig.from_env())
    steps = train_cfg.epochs * len(train_batches)
    log = training.train(model, train_batches, val_batches, train_cfg,
                         fusion.staged(on_progress, 1, steps, train_cfg.epochs) if fused else on_progress)
    test_batches = _batches(dataset, dataset.test, backbone, train_cfg, shuffle=False) if dataset.test else None
    fused_info, kept = {}, []
    if fused:
        stage1 = {"val": fusion.metrics_dict(log.best), "best_epoch": log.best_epoch,
                  "test": fusion.metrics_dict(evaluate(model, test_batches)) if test_batches else None}
        stage2 = fusion.second_stage(model, parts, list(sources), backbone, (train_batches, val_batches), train_cfg,
                                     name, method.fusion_top,
                                     fusion.staged(on_progress, 2, steps, train_cfg.epochs), locate or _locate)
        log, kept = stage2["log"], stage2["sources"]
        fused_info = fusion.describe(stage1, stage2, method.fusion_rank)
    # Cast once, then measure with the rounded tensors: the recorded metrics are what a later
    # load of the artifact computes, so `evaluate` shows drift 0 for every store dtype (and for a
    # fused task pruned to --fusion-top, with the kept sources only).
    tensors = cast_like_stored(parts, train_cfg.store_dtype)
    pruned = bool(fused_info.get("pruned"))
    val = evaluate(model, val_batches) if train_cfg.store_dtype != "float32" or pruned else log.best
    test = evaluate(model, test_batches) if test_batches else None
    del model, parts
    if verify:
        backbone.verify()
    stored = sum(t.numel() for t in tensors.values())
    meta = ArtifactMetadata(
        method=method,
        labels=tuple(dataset.labels),
        label_type="int" if isinstance(dataset.train[0].label, int) else "str",
        pair=dataset.is_pair,
        backbone={k: getattr(backbone.info, k) for k in ("name", "fingerprint", "layers", "hidden", "params")},
        train=train_cfg.to_dict(),
        stored_params=stored,
        metrics={"best_epoch": log.best_epoch, "history": log.history, "val": dataclasses.asdict(val),
                 "test": dataclasses.asdict(test) if test else None},
        data={"files": {split: _stored_key(path, dataset.digests.get(split)) for split, path in dataset.files.items()},
              "examples": {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(dataset.test)}},
        dtype=train_cfg.store_dtype,
        sources=tuple(ref.to_dict() for ref in kept),
        fusion=fused_info,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    metadata = meta.to_sidecar()
    return FitResult(
        tensors=tensors,
        metadata=metadata,
        val=val,
        test=test,
        trainable_params=stored,
        stored_params=stored,
        backbone_params=backbone.info.params,
        best_epoch=log.best_epoch,
        epochs=train_cfg.epochs,
        train_examples_per_s=log.train_examples_per_s,
        seconds=time.perf_counter() - start,
        cached_layers=lower["layers"],
    )


def _locate(key: str) -> Path | str:
    """A source artifact's location in the settings' store (as a worker finds it)."""
    return ArtifactStore(get_settings().artifacts).location(key)


def save(result: FitResult, path: str | Path) -> ArtifactInfo:
    """Write a fit's tensors and sidecar to `path` (`.safetensors`), via temp files and renames."""
    return write_artifact(path, result.tensors, result.metadata)


# --------------------------------------------------------------------------------------------
# Service recipes: submit_task (validate -> store -> catalogue -> enqueue) and run_task (claim ->
# backbone -> fit -> artifact -> catalogue), which a worker calls and which is idempotent.
# --------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)


def submit_task(
    train: str | Path,
    *,
    name: str | None = None,
    validation: str | Path | None = None,
    test: str | Path | None = None,
    method: MethodConfig | None = None,
    train_config: TrainConfig | None = None,
    spec: DataSpec | None = None,
    force: bool = False,
    sweep: SweepSpec | None = None,
) -> jobs.Submission:
    """Validate a task's files, store them, record a queued job, and enqueue it.

    An identical resubmit (same task name, dataset files and hyperparameters, a job that has not
    failed) returns the existing job unless `force`. With `sweep`, the job is a sweep: one trial
    job per grid point is recorded and enqueued, and the best on validation is kept (`trials`).

    Raises:
        InvalidDataset: a file is invalid (nothing is stored or recorded).
        InvalidConfig: a bad task name, or the name is taken by another dataset.
        BrokerUnavailable: the job could not be enqueued; it is recorded as failed with the reason.
    """
    method, train_config = method or MethodConfig(), train_config or TrainConfig()
    return submission.submit(submission.SubmitRequest(
        train, method=method.to_dict(), train_config=train_config.to_dict(), spec=spec or DataSpec(), name=name,
        validation=validation, test=test, sweep=sweep, force=force,
    ))


def run_task(job_id: str) -> str:
    """Run one job to its end; safe to call twice, concurrently, or after a crash.

    - a job that already ended is left alone;
    - a job another live worker is running is left alone; one whose worker is gone is taken over;
    - an artifact already on disk with a matching sha256 is finalised without retraining;
    - otherwise: fit on the resident backbone with progress and heartbeats, save the artifact
      (temp file + rename), then record artifact + metrics + succeeded in one transaction.

    Returns:
        The outcome: `succeeded`, `failed`, `running elsewhere`, `superseded`, ...

    Raises:
        StreamlearnError: the job failed (already recorded on its row); do not retry.
        TransientError: the catalogue or the store is briefly unavailable; retry later.
    """
    settings = get_settings()
    if _refusal is not None:
        # Before the claim: the job stays queued for a healthy worker (any worker's reconcile re-enqueues it).
        raise BackboneChanged(_refusal)
    outcome, plan = jobs.claim(job_id, settings)
    if plan is None:
        return outcome
    try:
        with Heartbeat(job_id, socket.gethostname(), os.getpid(), settings.progress_interval,
                       settings.task_time_limit) as beat:
            backbone = resident_backbone()
            path = ArtifactStore(settings.artifacts).task_artifact_path(plan.task, job_id)
            metadata = _finished_artifact(path, backbone)
            if metadata is None:
                log.info("job %s: started on %s:%d (task %s)", job_id, socket.gethostname(), os.getpid(), plan.task)
                sources = jobs.fusion_sources(plan, backbone.info.fingerprint) if plan.method.method == "fusion" else ()
                try:
                    result = fit(jobs.stored_dataset(plan), plan.method, plan.train, backbone,
                                 on_progress=beat.progress, verify=False, sources=sources, name=plan.task)
                finally:
                    check_resident(backbone)  # after every job, before anything is kept
                beat.check()
                metadata = read_metadata(_write(result, path).path)
        jobs.finalise(job_id, path, metadata, backbone.info)
    except JobSuperseded as lost:
        log.warning("%s", lost)
        if lost.cancelled:
            store = ArtifactStore(settings.artifacts)
            store.delete_task_artifact(store.task_artifact_path(plan.task, job_id))  # nothing of it is kept
            return "cancelled"
        return "superseded"
    except records.InvalidTransition as lost:
        # Another worker requeued or finished the job meanwhile: it is theirs now; failing it here
        # would be wrong (our complete artifact, if any, is picked up by their run).
        log.warning("job %s: %s; leaving it to the worker that holds it", job_id, lost)
        return "superseded"
    except (TransientError, OperationalError):
        raise
    except Exception as exc:
        jobs.fail(job_id, exc)
        raise
    return "succeeded"


_refusal: str | None = None
"""Why this process refuses jobs (its resident backbone changed), or None. Set once, never cleared:
only a restart, which loads the backbone afresh from disk, makes the worker usable again."""


def check_resident(backbone: Backbone) -> None:
    """Re-hash the resident backbone; if it changed, refuse every later job in this process.

    Raises:
        BackboneChanged: the tensors differ from their fingerprint at load time.
    """
    global _refusal
    try:
        backbone.verify()
    except BackboneMismatch as exc:
        _refusal = (f"{exc}; this worker refuses further jobs (restart it to reload the backbone from disk)")
        log.critical("BACKBONE CHANGED IN MEMORY: %s", _refusal)
        raise BackboneChanged(_refusal) from None


def refusal() -> str | None:
    """Why this process refuses jobs, or None while its backbone is intact."""
    return _refusal


def _write(result: FitResult, path: Path | str) -> ArtifactInfo:
    """Save a job's artifact, turning a store that cannot be written into a clear, final error."""
    store = ArtifactStore(get_settings().artifacts)
    try:
        if not store.remote:
            return save(result, path)
        # Remote store: write locally first, then upload; an upload that fails keeps the staged copy
        # for the retry (StoreUnavailable is transient), which uploads it without retraining.
        staged = store.staging_path(path)
        info = save(result, staged)
        store.publish(staged, path)
        return dataclasses.replace(info, path=path, sidecar=sidecar_path(path))
    except OSError as exc:
        # write_artifact removes its temporary files; a tensors file whose sidecar could not follow
        # is removed here, so nothing partial is left behind.
        try:
            store.delete_task_artifact(path)
        except (OSError, TransientError):
            pass
        raise ArtifactWriteFailed(
            f"could not write the artifact to {str(path).rsplit('/', 1)[0]}: {exc.strerror or exc} "
            "(is the artifact store full, read-only or not mounted?); nothing was kept, submit again once it is fixed"
        ) from exc


def _finished_artifact(path: Path | str, backbone: Backbone) -> dict | None:
    """The sidecar of a complete, verified artifact from an earlier run of this job, else None."""
    store = ArtifactStore(get_settings().artifacts)
    staged = store.staging_path(path) if store.remote else None
    if not store.exists(path):
        if staged is None or not staged.exists():
            return None
        source = staged  # trained before the store went away: upload it now (below), do not retrain
    else:
        source = path
    try:
        _, metadata = read_artifact(source)
    except ArtifactCorrupt as exc:
        log.warning("ignoring an unusable earlier artifact, retraining: %s", exc)
        return None
    if metadata.get("backbone", {}).get("fingerprint") != backbone.info.fingerprint:
        return None
    if source is staged:
        store.publish(staged, path)
        log.info("artifact %s uploaded from its staged copy: finalising without retraining", path)
        return metadata
    log.info("artifact %s already complete: finalising without retraining", path)
    return metadata


fail_task = jobs.fail
"""Record a job as failed with its reason (used by the worker's task on errors it maps itself)."""
