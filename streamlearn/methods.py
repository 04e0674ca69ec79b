"""Methods: which tensors a task trains and stores (adapter, full, top-k, layernorm), and the head.

Every method builds a `TaskModules`: exactly the per-task tensors it trains, under stable names.
Those are the tensors stored in the artifact, nothing more. `attached` puts them around the shared
backbone (or, for `full`, around a private copy of it) and yields a `Classifier`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from streamlearn.adapters import Adapted, HoulsbyAdapter, swapped
from streamlearn.backbone import Backbone
from streamlearn.errors import InvalidConfig
from streamlearn.rates import DEFAULT_LR

METHODS = ("adapter", "full", "top-k", "layernorm")
"""Selectable methods (`--method`)."""
POOLINGS = ("mean", "cls")
"""Head poolings: mask-aware mean over tokens (how all-MiniLM-L6-v2 was trained), or the first token."""

_DEFAULT_LR = DEFAULT_LR


@dataclass(frozen=True)
class MethodConfig:
    """How a task adapts the backbone; stored with its artifact."""

    method: str = "adapter"
    """One of adapter, full, top-k, layernorm."""
    adapter_size: int = 64
    """Adapter bottleneck width m (adapter method only)."""
    top_k: int = 1
    """Number of top layers fine-tuned (top-k method only)."""
    sigma: float = 1e-2
    """Standard deviation of the adapters' truncated-normal init."""
    pooling: str = "mean"
    """How the head pools token states: mean or cls."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidConfig(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 1 <= self.adapter_size <= 8192:
            raise InvalidConfig(f"adapter size {self.adapter_size} must be between 1 and 8192")
        if self.top_k < 1:
            raise InvalidConfig(f"top-k {self.top_k} must be at least 1")
        if not 0 < self.sigma <= 1:
            raise InvalidConfig(f"sigma {self.sigma} must be in (0, 1]")
        if self.pooling not in POOLINGS:
            raise InvalidConfig(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")

    def to_dict(self) -> dict:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MethodConfig:
        """Build from `to_dict()` output; unknown keys are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidConfig(f"unknown method settings: {', '.join(sorted(unknown))}")
        return cls(**data)


def expected_trainable(layers: int, hidden: int, m: int, classes: int) -> int:
    """Trainable parameters of the adapter method: 2L(2md+m+d) + (4L+2)d + (d+1)C."""
    return 2 * layers * (2 * m * hidden + m + hidden) + (4 * layers + 2) * hidden + (hidden + 1) * classes


def default_lr(method: str) -> float:
    """Default AdamW learning rate of a method (Houlsby et al. 2019 ranges; checked on real tasks)."""
    if method not in _DEFAULT_LR:
        raise InvalidConfig(f"method {method!r} is not one of {', '.join(METHODS)}")
    return _DEFAULT_LR[method]


class TaskModules(nn.Module):
    """The per-task modules of one method; its parameters are what trains and what is stored.

    Attributes:
        adapters: 2L Houlsby adapters, [layer 0 attention, layer 0 FFN, layer 1 attention, ...].
        norms: Per-task copies of the LayerNorms, [embeddings, layer 0 attention, layer 0 FFN, ...].
        layers: Per-task copies of the top-k layers, bottom to top.
        encoder: A private copy of the whole backbone (full fine-tuning only).
        head: Linear d -> C.
    """

    def __init__(self, backbone: Backbone, config: MethodConfig, classes: int) -> None:
        super().__init__()
        if classes < 2:
            raise InvalidConfig(f"a task needs at least 2 classes, got {classes}")
        arch, n_layers, d = backbone.arch, backbone.info.layers, backbone.info.hidden
        self.config = config
        self.adapters = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.layers = nn.ModuleList()
        self.encoder: nn.Module | None = None
        if config.method == "adapter":
            for _ in range(2 * n_layers):
                self.adapters.append(HoulsbyAdapter(d, config.adapter_size, config.sigma))
        if config.method in ("adapter", "layernorm"):
            # copies, so training never writes the shared LayerNorms (Houlsby et al. 2019, Sec. 2.1)
            self.norms.append(copy.deepcopy(backbone.model.get_submodule(arch.embeddings_norm)))
            for i in range(n_layers):
                layer = backbone.layer(i)
                self.norms.append(copy.deepcopy(layer.get_submodule(arch.attn_norm)))
                self.norms.append(copy.deepcopy(layer.get_submodule(arch.ffn_norm)))
        if config.method == "top-k":
            if config.top_k > n_layers:
                raise InvalidConfig(f"top-k {config.top_k} exceeds the backbone's {n_layers} layers")
            for i in range(n_layers - config.top_k, n_layers):
                self.layers.append(copy.deepcopy(backbone.layer(i)))
        if config.method == "full":
            self.encoder = copy.deepcopy(backbone.model)
        self.head = nn.Linear(d, classes)
        self.requires_grad_(True)
        self.to(backbone.device)

    def replacements(self, backbone: Backbone) -> dict[str, nn.Module]:
        """Dotted backbone path -> module to put there while this task is attached."""
        arch, n_layers = backbone.arch, backbone.info.layers
        out: dict[str, nn.Module] = {}
        prefix = [f"{arch.layers}.{i}" for i in range(n_layers)]
        if len(self.adapters):
            for i in range(n_layers):
                for j, site in enumerate((arch.attn_site, arch.ffn_site)):
                    path = f"{prefix[i]}.{site}"
                    out[path] = Adapted(backbone.model.get_submodule(path), self.adapters[2 * i + j])
        if len(self.norms):
            out[arch.embeddings_norm] = self.norms[0]
            for i in range(n_layers):
                out[f"{prefix[i]}.{arch.attn_norm}"] = self.norms[1 + 2 * i]
                out[f"{prefix[i]}.{arch.ffn_norm}"] = self.norms[2 + 2 * i]
        for j, layer in enumerate(self.layers):
            out[prefix[n_layers - len(self.layers) + j]] = layer
        return out

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Return exactly the trained tensors, detached, contiguous and on the CPU."""
        return {name: p.detach().to("cpu").contiguous().clone() for name, p in self.named_parameters()}

    @property
    def trainable_params(self) -> int:
        """Number of trainable (and stored) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class Classifier(nn.Module):
    """Encoder, pooling and linear head; `forward(**batch)` returns logits."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.pooling = pooling

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> torch.Tensor:
        """Return logits of shape (batch, classes); extra batch keys such as labels are ignored."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        states = self.encoder(**inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


@contextlib.contextmanager
def attached(backbone: Backbone, task: TaskModules) -> Iterator[Classifier]:
    """Attach a task's modules to the backbone for the block; the backbone is restored on exit.

    Args:
        backbone: The shared, frozen backbone.
        task: The task's modules (fresh, or loaded from an artifact).

    Yields:
        A Classifier whose trainable parameters are exactly `task`'s.
    """
    if task.encoder is not None:
        yield Classifier(task.encoder, task.head, task.config.pooling)
        return
    with swapped(backbone.model, task.replacements(backbone)) as model:
        yield Classifier(model, task.head, task.config.pooling)
