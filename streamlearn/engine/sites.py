"""Persistent sites: the places in the shared backbone where a task's parts act, routed per row.

When an `Engine` first meets a backbone it replaces, once, every adapter site (the attention
output and the FFN output, after their dropout: Houlsby et al. 2019, arXiv:1902.00751, Sec. 2.1 /
Fig. 2) and every LayerNorm with a `Site` that holds the original module as `base` (peft's
`base_layer`). A site keeps no task state of its own: each forward carries a `Route` (which task
each row belongs to, and the parts of those tasks, snapshotted when the forward began), so a
concurrent attach can never make one forward see old parts in one layer and new ones in the next,
and several threads can run forwards at once. The route lives in a `contextvars.ContextVar`, which
is per thread (and per asyncio task), not a process-global forward context.

A site is transparent to `state_dict` and `load_state_dict` (its base's tensors under the base's
own names), so the backbone's fingerprint and tensor names do not change, and `copy.deepcopy` of a
site is a copy of its base: a private copy of a layer (top-k) or of the model (full) is a plain
Hugging Face module.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from streamlearn.engine.fusion import fuse


@dataclass(frozen=True)
class Route:
    """Which task's parts act on each row of one forward."""

    parts: tuple  # tuple[TaskParts | None, ...]; None is the bare backbone (a Parallel trunk)
    """The parts of each distinct task of the batch, in the order `index` refers to."""
    index: torch.Tensor | None
    """(rows,) position in `parts` of each row's task; None when every row belongs to `parts[0]`."""
    training: bool = False
    """Apply the sites' dropout (training); the shared modules themselves stay in eval mode."""

    def rows(self, rows: torch.Tensor) -> Route:
        """The route of a subset of the rows (for a group that a layer copy runs separately)."""
        if self.index is None:
            return self
        return Route(self.parts, self.index.index_select(0, rows), self.training)

    def groups(self) -> list[tuple[int, torch.Tensor | None]]:
        """(position in `parts`, its rows) for every distinct task present; rows None means all."""
        if self.index is None:
            return [(0, None)]
        return [(int(i), (self.index == i).nonzero().squeeze(1)) for i in torch.unique(self.index).tolist()]


_ROUTE: contextvars.ContextVar[Route | None] = contextvars.ContextVar("streamlearn_route", default=None)


@contextlib.contextmanager
def routed(route: Route) -> Iterator[Route]:
    """Make `route` the route of the forwards run inside the block (this thread/context only)."""
    token = _ROUTE.set(route)
    try:
        yield route
    finally:
        _ROUTE.reset(token)


def current() -> Route | None:
    """The route of the forward running in this context, or None outside the engine."""
    return _ROUTE.get()


class Site(nn.Module):
    """A shared backbone module plus the per-task parts that act at its place, chosen per row.

    Args:
        base: The backbone's module (left untouched; its tensors are never written).
        key: Where the site is, in artifact terms: `embeddings`, `layers.3.attention`, `layers.3.ffn`.
        role: `adapter` (after the sub-layer's output) or `norm` (a LayerNorm).
    """

    def __init__(self, base: nn.Module, key: str, role: str) -> None:
        super().__init__()
        self.base = base
        self.key = key
        self.role = role
        self.register_load_state_dict_pre_hook(_to_base_names)

    def __deepcopy__(self, memo: dict) -> nn.Module:
        # a private copy of a layer or model is the plain backbone module, without sites
        return copy.deepcopy(self.base, memo)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The base's tensors under the base's own names (so the fingerprint is unchanged)."""
        return self.base.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the base, then (or instead, for a norm) each row's task's part."""
        route = current()
        if self.role == "norm":
            return self._norm(hidden, route)
        out = self._base(hidden, route)
        if route is None:
            return out
        found = [(i, p.at(self.key)) for i, p in enumerate(route.parts) if p is not None and p.at(self.key) is not None]
        found = [(i, site) for i, site in found if site.adapter is not None]
        if not found:
            return out
        fused = [(i, site) for i, site in found if site.fusion is not None and site.sources is not None]
        if route.index is None:
            site = found[0][1]
            return fuse(site, self.key, out, route.training) if fused else site.adapter(out)
        plain = [(i, site.adapter) for i, site in found if site.fusion is None or site.sources is None]
        result = _mixed_adapters(out, route, plain) if plain else out.clone()
        for i, site in fused:  # a fused task's rows: its own and its sources' adapters, then its fusion layer
            rows = (route.index == i).nonzero().squeeze(1)
            result[rows] = fuse(site, self.key, out.index_select(0, rows), route.training)
        return result

    def _base(self, hidden: torch.Tensor, route: Route | None) -> torch.Tensor:
        if isinstance(self.base, nn.Dropout):
            # the shared module stays in eval mode; the route says whether this forward trains
            active = route is not None and route.training and self._trains(route)
            return F.dropout(hidden, self.base.p, training=active)
        return self.base(hidden)

    def _trains(self, route: Route) -> bool:
        return any(p is not None and p.at(self.key) is not None for p in route.parts)

    def _norm(self, hidden: torch.Tensor, route: Route | None) -> torch.Tensor:
        if route is None:
            return self.base(hidden)
        norms = [self._task_norm(p) for p in route.parts]
        if route.index is None:
            return norms[0](hidden)
        if all(n is self.base for n in norms):
            return self.base(hidden)
        # per-row LayerNorm: normalise once, then each row's own gain and bias (gathered)
        base = self.base
        flat = F.layer_norm(hidden, base.normalized_shape, None, None, base.eps)
        weight = torch.stack([n.weight for n in norms]).index_select(0, route.index)
        bias = torch.stack([n.bias for n in norms]).index_select(0, route.index)
        return torch.addcmul(bias.unsqueeze(1), flat, weight.unsqueeze(1))

    def _task_norm(self, parts) -> nn.Module:
        site = parts.at(self.key) if parts is not None else None
        return site.norm if site is not None and site.norm is not None else self.base


def _to_base_names(module, state_dict, prefix, *_) -> None:
    """Load hook: the base's tensors arrive under the site's own prefix (as `state_dict` gave them)."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "base.")]:
        state_dict[prefix + "base." + key[len(prefix):]] = state_dict.pop(key)


def _mixed_adapters(out: torch.Tensor, route: Route, found: Sequence[tuple[int, nn.Module]]) -> torch.Tensor:
    """Each row's own adapter: one call of each task's adapter module on that task's rows.

    A task's rows go through its adapter as they would alone (the same module, the same matmuls),
    so a mixed row equals its single-task run. Rows of one task that sit together (a Parallel
    block, a batch grouped by task) are a slice, with no gather or scatter. Gathering a weight
    matrix per row and one batched matmul (S-LoRA's approach on a GPU) measured no faster than
    this loop on the CPU at 50 tasks in 64 rows, and slower for Parallel blocks (docs/MULTITASK.md).
    """
    result = out.clone()
    for i, adapter in found:
        rows = (route.index == i).nonzero().squeeze(1)
        n = rows.numel()
        if n == 0:
            continue
        first = int(rows[0])
        if int(rows[-1]) - first + 1 == n:  # contiguous: a slice
            result[first:first + n] = adapter(out[first:first + n])
        else:
            result.index_copy_(0, rows, adapter(out.index_select(0, rows)))
    return result


def install(model: nn.Module, arch, layers: int) -> None:
    """Put a Site at every adapter site and LayerNorm of `model`, once (idempotent).

    Args:
        model: The backbone's Hugging Face model.
        arch: Its `ModuleMap` (dotted paths of the sites).
        layers: Number of transformer layers.
    """
    targets = [(arch.embeddings_norm, "embeddings", "norm")]
    for i in range(layers):
        prefix = f"{arch.layers}.{i}"
        targets += [
            (f"{prefix}.{arch.attn_site}", f"layers.{i}.attention", "adapter"),
            (f"{prefix}.{arch.attn_norm}", f"layers.{i}.attention", "norm"),
            (f"{prefix}.{arch.ffn_site}", f"layers.{i}.ffn", "adapter"),
            (f"{prefix}.{arch.ffn_norm}", f"layers.{i}.ffn", "norm"),
        ]
    for path, key, role in targets:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        module = getattr(parent, name)
        if not isinstance(module, Site):
            setattr(parent, name, Site(module, key, role).train(module.training))


_INSTALL = threading.Lock()


def prepare(backbone) -> None:
    """Install the persistent sites into `backbone` (once per backbone object; idempotent, thread-safe)."""
    if getattr(backbone, "sites_installed", False):
        return
    with _INSTALL:
        if not getattr(backbone, "sites_installed", False):
            install(backbone.model, backbone.arch, backbone.info.layers)
            backbone.sites_installed = True
