"""A cache of the frozen lower layers' outputs while a task trains (AdapterDrop, issue item 5).

A task trained with AdapterDrop N (Rücklé et al. 2021, arXiv:2010.11918, Sec. 3) has no parts in
the embeddings or the lowest N layers, and the backbone runs in eval mode, so what those layers
compute for an example is the same in every epoch: the states entering layer N are computed once
per job, for the training and the validation examples, and every step runs layers N..L-1 only.
Backward stops at layer N (the cached states are constants). The same holds for any task whose
first own part sits above the embeddings (a top-k task: the layers below its copies).

Each example is cached at its own length (one flat tensor plus offsets) and re-padded per batch,
because the seeded shuffle forms different batches every epoch: the batches, their order and
their padding are exactly those of training without the cache (`CachedBatches` wraps `Batches`).
Padded positions get zeros; no real token reads them (attention masks them as keys, the pooling
ignores them), so the logits are those of the uncached run within fp32 rounding.

The cache must fit a memory budget (`CacheConfig.budget_bytes`, by default
`STREAMLEARN_LAYER_CACHE_BYTES`, 1 GiB); when it does not, the job recomputes the lower layers
every step, as without a cache, and says so once in the log. A process keeps its latest cache, so
the trials of a sweep that run in one process on the same data and backbone share it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from streamlearn.batches import Batch, Batches
from streamlearn.engine import TaskModel, encoder
from streamlearn.engine.sites import Route, routed
from streamlearn.errors import InvalidConfig

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 1 << 30
"""Default memory budget of one cache: 1 GiB."""
DTYPES = ("float32", "float16")
"""Storage dtypes of the cached states (float16 halves the memory; re-padded as the backbone's dtype)."""


@dataclass(frozen=True)
class CacheConfig:
    """How the lower layers' outputs are cached while a task trains."""

    budget_bytes: int = DEFAULT_BUDGET
    """Most bytes one cache may hold (train + validation states); 0 turns the cache off."""
    dtype: str = "float32"
    """Storage dtype of the cached states: float32 (exact) or float16 (half the memory)."""

    def __post_init__(self) -> None:
        if self.budget_bytes < 0:
            raise InvalidConfig(f"layer cache budget {self.budget_bytes} must not be negative")
        if self.dtype not in DTYPES:
            raise InvalidConfig(f"layer cache dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @classmethod
    def from_env(cls) -> CacheConfig:
        """Read `STREAMLEARN_LAYER_CACHE_BYTES` and `STREAMLEARN_LAYER_CACHE_DTYPE` (defaults: 1 GiB, float32)."""
        raw = os.environ.get("STREAMLEARN_LAYER_CACHE_BYTES") or ""
        try:
            budget = int(raw) if raw else DEFAULT_BUDGET
        except ValueError:
            raise InvalidConfig(f"STREAMLEARN_LAYER_CACHE_BYTES={raw!r} is not a whole number of bytes") from None
        return cls(budget_bytes=budget, dtype=os.environ.get("STREAMLEARN_LAYER_CACHE_DTYPE") or "float32")


def frozen_layers(backbone, parts) -> int:
    """How many lower layers a task leaves to the backbone unchanged (AdapterDrop N; 0 when none)."""
    layers = backbone.info.layers
    return max(0, min(parts.divergence(layers) - 1, layers))


class LayerCache:
    """The states entering layer `layers` for every example of some `Batches`, each at its own length.

    Args:
        states: (total tokens, d) flat tensor of every example's states, in example order.
        offsets: (examples + 1,) start of each example's rows in `states`.
        layers: Number of lower layers the states have been through.
    """

    def __init__(self, states: torch.Tensor, offsets: torch.Tensor, layers: int) -> None:
        self.states = states
        self.offsets = offsets
        self.layers = layers

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached states."""
        return self.states.numel() * self.states.element_size()

    def padded(self, indices: Sequence[int], longest: int, dtype: torch.dtype, device) -> torch.Tensor:
        """The states of the given examples, zero-padded to `longest` tokens: (len(indices), longest, d)."""
        out = torch.zeros((len(indices), longest, self.states.shape[1]), dtype=dtype)
        for row, i in enumerate(indices):
            start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
            out[row, : stop - start] = self.states[start:stop]
        return out.to(device)


def needed_bytes(batches: Sequence[Batches], hidden: int, dtype: str) -> int:
    """Bytes a cache of these examples' states would hold."""
    tokens = sum(len(ids) for b in batches for ids in b.input_ids)
    return tokens * hidden * torch.tensor([], dtype=getattr(torch, dtype)).element_size()


def compute(backbone, batches: Batches, layers: int, dtype: str, chunk: int = 64) -> LayerCache:
    """Run the embeddings and the lowest `layers` layers of the bare backbone once over every example."""
    order = sorted(range(batches.examples), key=lambda i: len(batches.input_ids[i]))  # little padding
    lengths = torch.tensor([len(ids) for ids in batches.input_ids], dtype=torch.long)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    states = torch.empty((int(offsets[-1]), backbone.info.hidden), dtype=getattr(torch, dtype))
    with torch.inference_mode(), routed(Route((None,), None, False)):
        for start in range(0, len(order), chunk):
            indices = order[start : start + chunk]
            batch = {k: v.to(backbone.device) for k, v in batches.collate(indices).items() if k != "labels"}
            hidden = encoder.encode(backbone, batch, stop=layers).to("cpu")
            for row, i in enumerate(indices):
                states[int(offsets[i]) : int(offsets[i + 1])] = hidden[row, : int(lengths[i])]
    return LayerCache(states, offsets, layers)


class CachedBatches:
    """The batches of a `Batches`, same order and padding, each carrying its rows' cached `lower` states.

    Iterating advances the wrapped `Batches`' epoch exactly as iterating it would.
    """

    def __init__(self, batches: Batches, cache: LayerCache, dtype: torch.dtype) -> None:
        self.batches = batches
        self.cache = cache
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.batches.epoch = self.batches.epoch, self.batches.epoch + 1
        for indices in self.batches.order(epoch):
            batch = self.batches.collate(indices)
            batch["lower"] = self.cache.padded(indices, batch["input_ids"].shape[1], self.dtype, "cpu")
            yield batch


class CachedTaskModel(TaskModel):
    """A `TaskModel` that, given a batch's cached `lower` states, runs only the layers above them."""

    def __init__(self, backbone, parts, layers: int) -> None:
        super().__init__(backbone, parts)
        self.layers = layers

    def forward(self, input_ids, attention_mask, token_type_ids=None, lower=None, **rest) -> torch.Tensor:
        """Return (batch, classes) logits; without `lower` the whole backbone runs, as in `TaskModel`."""
        if lower is None:
            return super().forward(input_ids, attention_mask, token_type_ids, **rest)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        with routed(Route((self.parts,), None, self.training)):
            states = encoder.encode(self.backbone, inputs, start=self.layers, hidden=lower)
        return self.parts.head(encoder.pool(states, attention_mask, self.parts.pooling))


_HELD: dict = {}
"""This process's latest cache: key -> (train LayerCache, validation LayerCache)."""
_HELD_LOCK = threading.Lock()


def _key(backbone, layers: int, dtype: str, batches: Sequence[Batches]) -> tuple:
    digest = hashlib.sha256()
    for b in batches:
        digest.update(repr((b.input_ids, b.token_type_ids)).encode())
    return (id(backbone), backbone.info.fingerprint, layers, dtype, digest.hexdigest())


def cached_training(backbone, parts, train_batches: Batches, val_batches: Batches, config: CacheConfig):
    """The model and batches to train `parts` with: from the cache when it applies and fits, else as usual.

    Args:
        backbone: The shared backbone (sites installed).
        parts: The task's parts about to train.
        train_batches: The shuffled training batches.
        val_batches: The validation batches.
        config: The budget and storage dtype.

    Returns:
        (model, train batches, validation batches, info), where info is a dict with `layers` (lower
        layers served from the cache, 0 when none), `bytes` (held by the cache) and `shared` (the
        cache was made by an earlier job of this process on the same data).
    """
    layers = frozen_layers(backbone, parts)
    plain = (TaskModel(backbone, parts), train_batches, val_batches, {"layers": 0, "bytes": 0, "shared": False})
    if layers == 0 or config.budget_bytes == 0:
        return plain
    need = needed_bytes([train_batches, val_batches], backbone.info.hidden, config.dtype)
    if need > config.budget_bytes:
        log.warning("lower-layer cache of %d bytes exceeds the budget of %d bytes "
                    "(STREAMLEARN_LAYER_CACHE_BYTES): recomputing the lowest %d layers every step",
                    need, config.budget_bytes, layers)
        return plain
    key = _key(backbone, layers, config.dtype, [train_batches, val_batches])
    with _HELD_LOCK:
        held = _HELD.get(key)
        shared = held is not None
        if held is None:
            _HELD.clear()  # one cache per process: the previous one is released before the next is made
            held = (compute(backbone, train_batches, layers, config.dtype),
                    compute(backbone, val_batches, layers, config.dtype))
            _HELD[key] = held
    log.info("training from a cache of the lowest %d layers (%d bytes, %s%s)", layers, need, config.dtype,
             ", shared with an earlier job" if shared else "")
    dtype = next(backbone.model.parameters()).dtype  # re-padded as the backbone computes
    model = CachedTaskModel(backbone, parts, layers)
    return (model, CachedBatches(train_batches, held[0], dtype), CachedBatches(val_batches, held[1], dtype),
            {"layers": layers, "bytes": need, "shared": shared})


def release() -> None:
    """Drop this process's held cache (frees its memory)."""
    with _HELD_LOCK:
        _HELD.clear()
