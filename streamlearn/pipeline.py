"""The recipes. Engine part: `fit` (attach -> train -> evaluate -> collect -> detach), `save`,
`load_predictor`. The service part (`submit_task`, `run_task`) composes these with the catalogue.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from streamlearn.artifacts import ArtifactInfo, read_artifact, write_artifact
from streamlearn.backbone import Backbone
from streamlearn.batches import Batches
from streamlearn.data import Dataset, Example, file_sha256
from streamlearn.errors import ArtifactCorrupt, BackboneMismatch, InvalidConfig
from streamlearn.methods import MethodConfig, TaskModules, attached, default_lr
from streamlearn import training
from streamlearn.training import Metrics, Progress, TrainConfig, evaluate, scores

ARTIFACT_FORMAT = 1
"""Version of the sidecar layout written by `fit`."""


@dataclass
class FitResult:
    """Everything `fit` produced: the tensors to store, their description, and the numbers."""

    tensors: dict[str, torch.Tensor]
    """Exactly the trained tensors (CPU), keyed by TaskModules parameter name."""
    metadata: dict
    """The artifact sidecar content (without the file's sha256 and bytes)."""
    val: Metrics
    """Validation metrics of the best epoch."""
    test: Metrics | None
    """Test metrics of the best epoch's tensors, or None without a test split."""
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
) -> FitResult:
    """Train one task's modules on the shared backbone and evaluate them.

    Args:
        dataset: A validated dataset.
        method: Which tensors to train.
        train: Optimisation settings (lr None means the method's default).
        backbone: The shared, frozen backbone; it is bit-identical afterwards (verified).
        on_progress: Called after every step with (epoch, step, total_steps, loss).

    Returns:
        The FitResult; nothing is written to disk.

    Raises:
        BackboneMismatch: The shared backbone changed during training (a bug, never expected).
    """
    start = time.perf_counter()
    train_cfg = _resolve(train, method, backbone)
    train_batches = _batches(dataset, dataset.train, backbone, train_cfg, shuffle=True)
    val_batches = _batches(dataset, dataset.validation, backbone, train_cfg, shuffle=False)
    torch.manual_seed(train_cfg.seed)
    task = TaskModules(backbone, method, len(dataset.labels))
    with attached(backbone, task) as model:
        log = training.train(model, train_batches, val_batches, train_cfg, on_progress)
        test = evaluate(model, _batches(dataset, dataset.test, backbone, train_cfg, shuffle=False)) if dataset.test else None
    tensors = task.stored_tensors()
    del task
    backbone.verify()
    stored = sum(t.numel() for t in tensors.values())
    metadata = {
        "format": ARTIFACT_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **method.to_dict(),
        "labels": list(dataset.labels),
        "label_type": "int" if isinstance(dataset.train[0].label, int) else "str",
        "pair": dataset.is_pair,
        "backbone": {k: getattr(backbone.info, k) for k in ("name", "fingerprint", "layers", "hidden", "params")},
        "trainable_params": stored,
        "stored_params": stored,
        "method_config": method.to_dict(),
        "train_config": train_cfg.to_dict(),
        "data": {
            "files": {split: {"path": str(path), "sha256": file_sha256(path)} for split, path in dataset.files.items()},
            "examples": {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(dataset.test)},
        },
        "metrics": {
            "best_epoch": log.best_epoch,
            "history": log.history,
            "val": dataclasses.asdict(log.best),
            "test": dataclasses.asdict(test) if test else None,
        },
    }
    return FitResult(
        tensors=tensors,
        metadata=metadata,
        val=log.best,
        test=test,
        trainable_params=stored,
        stored_params=stored,
        backbone_params=backbone.info.params,
        best_epoch=log.best_epoch,
        epochs=train_cfg.epochs,
        train_examples_per_s=log.train_examples_per_s,
        seconds=time.perf_counter() - start,
    )


def save(result: FitResult, path: str | Path) -> ArtifactInfo:
    """Write a fit's tensors and sidecar to `path` (`.safetensors`), via temp files and renames."""
    return write_artifact(path, result.tensors, result.metadata)


class Predictor:
    """A loaded artifact attached on demand to the shared backbone."""

    def __init__(self, task: TaskModules, metadata: dict, backbone: Backbone) -> None:
        self.task = task
        self.metadata = metadata
        self.backbone = backbone
        self.labels: tuple[str, ...] = tuple(metadata["labels"])
        self.max_length = int(metadata["train_config"]["max_length"])

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64) -> torch.Tensor:
        """Return the (len(texts), classes) logits, in input order, on the CPU."""
        if pairs is not None and len(pairs) != len(texts):
            raise InvalidConfig(f"{len(texts)} texts but {len(pairs)} pairs")
        examples = [Example(t, None, pairs[i] if pairs is not None else None) for i, t in enumerate(texts)]
        if not examples:
            return torch.zeros((0, len(self.labels)))
        batches = Batches(examples, self.backbone.tokenizer, None, batch_size, self.max_length, by_length=True)
        out = torch.empty((len(examples), len(self.labels)))
        with attached(self.backbone, self.task) as model, torch.inference_mode():
            model.eval()
            for indices in batches.order(0):
                batch = {k: v.to(self.backbone.device) for k, v in batches.collate(indices).items()}
                out[indices] = model(**batch).float().cpu()
        return out

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Return (label, probability) of the most likely class for each text."""
        probs = torch.softmax(self.logits(texts, pairs), dim=-1)
        top = probs.max(dim=-1)
        return [(self.labels[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]

    def evaluate(self, examples: Sequence[Example]) -> Metrics:
        """Accuracy and macro-F1 on labelled examples (labels must be among the artifact's)."""
        index = {name: i for i, name in enumerate(self.labels)}
        unknown = {str(ex.label) for ex in examples} - set(index)
        if unknown:
            raise InvalidConfig(f"labels {sorted(unknown)[:5]} are not among the artifact's {list(self.labels)}")
        pairs = [ex.text_pair for ex in examples] if examples and examples[0].text_pair is not None else None
        pred = self.logits([ex.text for ex in examples], pairs).argmax(-1).tolist()
        return scores([index[str(ex.label)] for ex in examples], pred)


def load_predictor(artifact_path: str | Path, backbone: Backbone, expected_sha256: str | None = None) -> Predictor:
    """Load a verified artifact for prediction on this backbone.

    Raises:
        ArtifactCorrupt: The file or sidecar fails its sha256, or the tensors do not fit the method.
        BackboneMismatch: The artifact was trained on a backbone with another fingerprint.
    """
    tensors, metadata = read_artifact(artifact_path, expected_sha256)
    recorded = metadata.get("backbone", {})
    if recorded.get("fingerprint") != backbone.info.fingerprint:
        raise BackboneMismatch(
            f"{artifact_path} was trained on backbone {recorded.get('name')!r} "
            f"({str(recorded.get('fingerprint'))[:12]}), not on {backbone.info.name!r} ({backbone.info.fingerprint[:12]})"
        )
    try:
        method = MethodConfig.from_dict(metadata["method_config"])
        task = TaskModules(backbone, method, len(metadata["labels"]))
        task.load_state_dict({k: v.to(backbone.device) for k, v in tensors.items()}, strict=True)
    except (KeyError, RuntimeError, InvalidConfig) as exc:
        raise ArtifactCorrupt(f"{artifact_path}: tensors do not match the recorded method ({exc})") from None
    task.requires_grad_(False).eval()
    return Predictor(task, metadata, backbone)
