"""Stage 2 of a fused task (AdapterFusion, Pfeiffer et al. 2021, arXiv:2005.00247, Sec. 2.2): after its
own adapter trained (stage 1, exactly the adapter method), every adapter is frozen, the sources'
adapters are attached at each site, and the fusion layers and the head train.

What trains in stage 2 follows the paper, which fixes every adapter (Φ) and learns the fusion
parameters (Ψ) with the task's output layer: here the fusion layers and the head (which starts
from stage 1's). The task's own LayerNorms were trained in stage 1 with its adapter (Houlsby et al.
2019, Sec. 2.1) and stay frozen with it, so stage 2 changes only what the fusion adds.

`--fusion-top N` (AdapterDrop, Rücklé et al. 2021, arXiv:2010.11918, Sec. 5) then keeps the task's
own adapter and the N sources with the largest mean validation attention, without retraining
(softmax renormalises over the kept ones), and the task is measured and stored that way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from streamlearn import training
from streamlearn.engine.fusion import attach_sources, mean_attention
from streamlearn.engine.loading import SourceRef, load_sources
from streamlearn.training import Progress, TrainConfig

log = logging.getLogger(__name__)


def staged(on_progress: Progress | None, stage: int, steps: int, epochs: int) -> Progress | None:
    """Report both stages as one run: stage 2's epochs and steps follow stage 1's (2E epochs, 2S steps)."""
    if on_progress is None:
        return None

    def report(epoch: int, step: int, total: int, loss: float) -> None:
        on_progress(epoch + (stage - 1) * epochs, step + (stage - 1) * steps, 2 * steps, loss)

    return report


def freeze_for_stage_one(parts) -> None:
    """Stage 1 is the adapter method: the fusion layers exist (so the tensors are complete) but neither act nor train."""
    for site in parts.sites():
        if site.fusion is not None:
            site.fusion.requires_grad_(False)


def second_stage(model, parts, refs: Sequence[SourceRef], backbone, batches: tuple, config: TrainConfig, owner: str,
                 top: int = 0, on_progress: Progress | None = None, locate=None) -> dict:
    """Attach the sources, train the fusion layers and the head, measure the attention, prune to `top`.

    Args:
        model: The task's `TaskModel` (after stage 1).
        parts: Its parts.
        refs: The sources, in order (each artifact is read and verified by its sha256 and the backbone).
        backbone: The shared backbone.
        batches: (train, validation) batches.
        config: The training settings (the same as stage 1's).
        owner: The task's name (for messages).
        top: Keep this many sources (0: all).
        on_progress: Stage 2's progress callback.
        locate: key -> path of a source artifact.

    Returns:
        `{"log": TrainLog, "sources": [SourceRef kept], "attention": ..., "attention_all": ... or None,
        "pruned": [task, ...]}`.
    """
    train_batches, val_batches = batches
    loaded = load_sources(refs, backbone, owner, locate)
    attach_sources(parts, loaded)
    parts.requires_grad_(False)
    for site in parts.sites():
        if site.fusion is not None:
            site.fusion.requires_grad_(True)
    parts.head.requires_grad_(True)
    log_ = training.train(model, train_batches, val_batches, config, on_progress)
    attention = mean_attention(model, val_batches)
    kept, pruned, before = list(refs), [], None
    if top and len(refs) > top:
        before = attention
        by_name = {name: [row[j] for row in attention["mean"] if row[j] is not None]
                   for j, name in enumerate(attention["sources"]) if name != "self"}
        ranked = sorted(range(len(refs)), key=lambda i: -_mean(by_name.get(refs[i].task, [])))
        keep = sorted(ranked[:top])
        kept = [refs[i] for i in keep]
        pruned = [refs[i].task for i in ranked[top:]]
        attach_sources(parts, [loaded[i] for i in keep])
        attention = mean_attention(model, val_batches)
        log.info("%s: kept the %d sources with the largest attention (%s), pruned %s", owner, top,
                 ", ".join(r.task for r in kept), ", ".join(pruned))
    parts.requires_grad_(False)
    return {"log": log_, "sources": kept, "attention": attention, "attention_all": before, "pruned": pruned}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def describe(stage1: dict, stage2: dict, rank: int) -> dict:
    """The sidecar's `fusion` entry: stage-1 metrics, the rank, the attention, and what was pruned."""
    return {"rank": rank, "stage1": stage1, "stage2_history": stage2["log"].history,
            "stage2_best_epoch": stage2["log"].best_epoch, "attention": stage2["attention"],
            "attention_all": stage2["attention_all"], "pruned": stage2["pruned"]}


def metrics_dict(metrics) -> dict | None:
    """A Metrics as a dict (None stays None)."""
    return dataclasses.asdict(metrics) if metrics is not None else None
