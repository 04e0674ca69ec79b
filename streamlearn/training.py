"""Training and evaluation steps: pure functions of a model and batches (no paths, catalogue or queue).

AdamW with a linear warm-up over the first 10% of steps then linear decay to zero, gradient
clipping, evaluation on validation after every epoch, and the best epoch's trainable tensors put
back at the end (model selection as in Houlsby et al. 2019, Sec. 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from streamlearn.errors import InvalidConfig

Progress = Callable[[int, int, int, float], None]
"""`on_progress(epoch, step, total_steps, loss)`, called after every optimizer step (epoch from 1)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run; stored with its artifact."""

    epochs: int = 3
    """Passes over the training set (1 to 1000)."""
    lr: float | None = None
    """Peak AdamW learning rate; None means the method's default (`methods.default_lr`)."""
    batch_size: int = 32
    """Examples per optimizer step (1 to 4096)."""
    max_length: int = 128
    """Tokens per example after truncation (2 to the backbone's position limit)."""
    seed: int = 0
    """Seed of the init, the shuffling, dropout and the carved validation split."""
    warmup: float = 0.1
    """Fraction of all steps spent warming the learning rate up linearly from zero."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm (0 disables clipping)."""
    store_dtype: str = "float32"
    """Dtype the trained tensors are stored in: float32, float16 or bfloat16 (cast once, at the end)."""

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 1000:
            raise InvalidConfig(f"epochs {self.epochs} must be between 1 and 1000")
        if self.lr is not None and not 0 < self.lr < 1:
            raise InvalidConfig(f"learning rate {self.lr} must be in (0, 1)")
        if not 1 <= self.batch_size <= 4096:
            raise InvalidConfig(f"batch size {self.batch_size} must be between 1 and 4096")
        if self.max_length < 2:
            raise InvalidConfig(f"max length {self.max_length} must be at least 2")
        if not 0 <= self.warmup < 1:
            raise InvalidConfig(f"warmup {self.warmup} must be in [0, 1)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise InvalidConfig("weight decay and max grad norm must not be negative")
        if self.seed < 0:
            raise InvalidConfig(f"seed {self.seed} must not be negative")
        if self.store_dtype not in ("float32", "float16", "bfloat16"):
            raise InvalidConfig(f"store dtype {self.store_dtype!r} is not one of float32, float16, bfloat16")

    def to_dict(self) -> dict:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from `to_dict()` output; unknown keys are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidConfig(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class Metrics:
    """Classification quality on one split."""

    accuracy: float
    """Fraction of examples whose arg-max class is the gold class."""
    macro_f1: float
    """Unweighted mean F1 over the classes present in gold or predictions."""
    examples: int
    """Number of examples evaluated."""
    collapsed: bool = False
    """True when the model is no better than one constant class (see `collapsed`)."""


@dataclass
class TrainLog:
    """What happened during training."""

    history: list[dict] = field(default_factory=list)
    """Per epoch: {"epoch", "train_loss", "val_accuracy", "val_macro_f1"}."""
    best_epoch: int = 0
    """Epoch (from 1) whose tensors were kept."""
    best: Metrics | None = None
    """Validation metrics of the best epoch."""
    steps: int = 0
    """Optimizer steps taken."""
    seconds: float = 0.0
    """Wall time of the training loop, evaluation included."""
    train_examples_per_s: float = 0.0
    """Training examples processed per second (training passes only)."""


def majority_macro_f1(gold_counts: Iterable[int]) -> float:
    """Macro-F1 of always predicting the most frequent gold class.

    With C classes in gold and the majority's share p, that class scores F1 = 2p / (1 + p) and
    every other class 0, so the macro-F1 is 2p / ((1 + p) C). Predicting any other single class
    scores less, since 2q / (1 + q) grows with q.

    Args:
        gold_counts: Examples per class present in the gold labels (zeros are ignored).
    """
    counts = [c for c in gold_counts if c > 0]
    if not counts:
        return 0.0
    p = max(counts) / sum(counts)
    return 2 * p / ((1 + p) * len(counts))


def collapsed(macro_f1: float, gold_counts: Iterable[int], predicted_classes: int | None = None) -> bool:
    """Whether a classifier has collapsed: the one definition used by train, the catalogue and the benchmarks.

    A run is collapsed when all its predictions are one class, or when its macro-F1 is at or below
    the majority-class level (`majority_macro_f1`, with a 1e-9 tolerance for rounding): it is then
    no better than a constant answer, whatever its accuracy on an imbalanced split says.

    Args:
        macro_f1: The run's macro-F1 on the split (as computed by `scores`).
        gold_counts: Examples per gold class on that split.
        predicted_classes: Number of distinct predicted classes, when known.
    """
    if predicted_classes is not None and predicted_classes <= 1:
        return True
    return macro_f1 <= majority_macro_f1(gold_counts) + 1e-9


def scores(gold: list[int], pred: list[int]) -> Metrics:
    """Accuracy, macro-F1 and the collapsed flag of predicted against gold class indices."""
    if not gold:
        return Metrics(0.0, 0.0, 0)
    f1s = []
    for c in sorted(set(gold) | set(pred)):
        tp = sum(1 for g, p in zip(gold, pred) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, pred) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, pred) if g == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    accuracy = sum(1 for g, p in zip(gold, pred) if g == p) / len(gold)
    macro = sum(f1s) / len(f1s)
    counts = [gold.count(c) for c in sorted(set(gold))]
    return Metrics(accuracy, macro, len(gold), collapsed(macro, counts, len(set(pred))))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> Metrics:
    """Evaluate a classifier in eval mode without autograd; batches must carry `labels`."""
    return scores(*predictions(model, batches))


def predictions(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[list[int], list[int]]:
    """Gold and arg-max predicted class indices of every example, in eval mode without autograd."""
    device = _device(model)
    model.eval()
    gold: list[int] = []
    pred: list[int] = []
    with torch.inference_mode():
        for batch in batches:
            logits = model(**{k: v.to(device) for k, v in batch.items()})
            gold.extend(batch["labels"].tolist())
            pred.extend(logits.argmax(-1).tolist())
    return gold, pred


def _schedule(total: int, warmup: float) -> Callable[[int], float]:
    warm = int(total * warmup)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def train(
    model: nn.Module,
    train_batches: Iterable[dict[str, torch.Tensor]],
    val_batches: Iterable[dict[str, torch.Tensor]],
    config: TrainConfig,
    on_progress: Progress | None = None,
) -> TrainLog:
    """Train the model's trainable parameters; keep the best validation epoch's values.

    Args:
        model: A classifier; only parameters with `requires_grad` are optimised.
        train_batches: Re-iterable training batches (each pass is one epoch), with `labels`.
        val_batches: Re-iterable validation batches, with `labels`.
        config: Optimisation settings; `config.lr` must be resolved (not None).
        on_progress: Called after every step with (epoch, step, total_steps, loss).

    Returns:
        The log. On return the model holds the best epoch's trainable tensors.
    """
    if config.lr is None:
        raise InvalidConfig("train() needs a resolved learning rate (TrainConfig.lr)")
    torch.manual_seed(config.seed)
    device = _device(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise InvalidConfig("the model has no trainable parameters")
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(train_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total, config.warmup))
    loss_fn = nn.CrossEntropyLoss()
    log = TrainLog()
    best_state: dict[str, torch.Tensor] | None = None
    start, train_seconds, seen = time.perf_counter(), 0.0, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_start, losses = time.perf_counter(), []
        for batch in train_batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = loss_fn(model(**batch), batch["labels"])
            extra = model.regulariser() if hasattr(model, "regulariser") else None
            if extra is not None:  # AdapterFusion's value regulariser (a fused task's stage 2)
                loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            log.steps += 1
            seen += len(batch["labels"])
            losses.append(loss.item())
            if on_progress is not None:
                on_progress(epoch, log.steps, total, losses[-1])
        train_seconds += time.perf_counter() - epoch_start
        val = evaluate(model, val_batches)
        log.history.append(
            {"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)), "val_accuracy": val.accuracy, "val_macro_f1": val.macro_f1}
        )
        if log.best is None or (val.accuracy, val.macro_f1) > (log.best.accuracy, log.best.macro_f1):
            log.best, log.best_epoch = val, epoch
            best_state = {n: p.detach().clone() for n, p in named}
    with torch.no_grad():
        for n, p in named:
            p.copy_(best_state[n])
    model.eval()
    log.seconds = time.perf_counter() - start
    log.train_examples_per_s = seen / train_seconds if train_seconds > 0 else 0.0
    return log
