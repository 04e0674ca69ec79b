"""A task's parts: the per-task modules that act at the backbone's sites, named as they are stored.

The parameter names of a `TaskParts` are the artifact's tensor names (format 2), so a stored file
reads like a map of where each tensor goes:

    embeddings.norm.weight                    the embeddings' LayerNorm, this task's copy
    layers.3.attention.adapter.down.weight    the adapter after layer 3's attention output
    layers.3.attention.norm.weight            layer 3's post-attention LayerNorm
    layers.3.ffn.adapter.up.bias              the adapter after layer 3's FFN output
    layers.5.copy.<hf name>                   a private copy of layer 5 (top-k)
    encoder.<hf name>                         a private copy of the whole encoder (full)
    head.weight, head.bias                    the classification head
"""

from __future__ import annotations

import torch
from torch import nn

SITE_KINDS = ("attention", "ffn")
"""The two adapter/LayerNorm sites of a layer, in order."""


class SiteParts(nn.Module):
    """What one task puts at one site: an adapter, a LayerNorm, or both; a fused task also a fusion
    layer, and (not registered, so never stored) the sources' adapters it attends over."""

    def __init__(self, adapter: nn.Module | None = None, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.adapter = adapter
        self.norm = norm
        self.fusion: nn.Module | None = None
        self.sources: list | None = None
        """(task, adapter) of each source present here; None until attached (stage 1 runs the adapter alone)."""


class LayerParts(nn.Module):
    """One task's parts in one transformer layer: its two sites, or a private copy of the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.attention: SiteParts | None = None
        self.ffn: SiteParts | None = None
        self.copy: nn.Module | None = None


class TaskParts(nn.Module):
    """Every per-task module of one task; its parameters are exactly what trains and is stored.

    Args:
        classes: Number of classes C of the head.
        hidden: Model width d.
        pooling: How the head pools token states (`mean` or `cls`).
    """

    def __init__(self, classes: int, hidden: int, pooling: str) -> None:
        super().__init__()
        self.pooling = pooling
        self.embeddings: SiteParts | None = None
        self.layers = nn.ModuleDict()
        self.encoder: nn.Module | None = None
        self.head = nn.Linear(hidden, classes)
        self._sites: dict[str, SiteParts] = {}
        self.source_names: list[str] = []
        """A fused task's sources, in order (set when they are attached)."""
        self.source_bytes = 0
        """Bytes of the sources' parts held for a fused task (resident, not stored with it)."""

    def put(self, key: str, adapter: nn.Module | None = None, norm: nn.Module | None = None) -> None:
        """Add an adapter and/or a LayerNorm at a site (`embeddings` or `layers.I.attention|ffn`)."""
        site = SiteParts(adapter, norm)
        if key == "embeddings":
            self.embeddings = site
        else:
            _, index, kind = key.split(".")
            setattr(self._layer(int(index)), kind, site)
        self._sites[key] = site

    def put_copy(self, index: int, layer: nn.Module) -> None:
        """Give the task its own copy of layer `index` (top-k)."""
        self._layer(index).copy = layer

    def _layer(self, index: int) -> LayerParts:
        if str(index) not in self.layers:
            self.layers[str(index)] = LayerParts()
        return self.layers[str(index)]

    def at(self, key: str) -> SiteParts | None:
        """This task's parts at a site, or None (the backbone's own module acts there)."""
        return self._sites.get(key)

    def site_keys(self) -> list[str]:
        """Keys of the sites where this task has parts, in the order they were put."""
        return list(self._sites)

    def sites(self) -> list[SiteParts]:
        """This task's parts at each of its sites."""
        return list(self._sites.values())

    def copy_of(self, index: int) -> nn.Module | None:
        """This task's own copy of layer `index`, or None."""
        layer = self.layers[str(index)] if str(index) in self.layers else None
        return layer.copy if layer is not None else None

    def divergence(self, layers: int) -> int:
        """First stage where this task differs from the bare backbone: 0 embeddings, i+1 layer i."""
        if self.encoder is not None or self.embeddings is not None:
            return 0
        for i in range(layers):
            if str(i) in self.layers:
                return i + 1
        return layers + 1

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Exactly the trained tensors, detached, contiguous and on the CPU, under their stored names."""
        return {name: p.detach().to("cpu").contiguous().clone() for name, p in self.named_parameters()}

    @property
    def nbytes(self) -> int:
        """Bytes of the parameters as resident."""
        return sum(p.numel() * p.element_size() for p in self.parameters())
