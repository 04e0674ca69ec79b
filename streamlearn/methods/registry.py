"""The method registry: one `Method` per registered unit, and the one parameter formula.

A method is its settings (fields of `MethodConfig`), the parts it adds at each site (`build`), its
parameter count (`count`) and its default learning rate, kept together in one module under
`streamlearn/methods/`; adding a method is that module plus one line here. This module and the
counts are torch-free, so the storage law (`storage`) can use them without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streamlearn.errors import InvalidConfig


@dataclass(frozen=True)
class Shape:
    """The sizes a parameter count needs."""

    layers: int
    """Transformer layers L."""
    hidden: int
    """Hidden size d."""
    classes: int
    """Classes C of the task's head."""
    layer_params: int = 0
    """Parameters of one transformer layer (top-k)."""
    backbone_params: int = 0
    """Parameters of the whole backbone |w| (full)."""


@dataclass(frozen=True)
class Method:
    """One registered method."""

    name: str
    """The `--method` value."""
    help: str
    """One line for `--help`: what trains and is stored."""
    default_lr: float
    """Default peak AdamW learning rate."""
    drops: bool
    """Whether AdapterDrop (`drop_layers`) applies."""
    count: Callable  # (MethodConfig, Shape) -> int
    """Exact parameters a task stores, head included."""
    build: Callable  # (Backbone, MethodConfig, TaskParts) -> None
    """Add the method's parts to a fresh TaskParts (the head is already there)."""


def head_params(shape: Shape) -> int:
    """The classification head: (d + 1)C."""
    return (shape.hidden + 1) * shape.classes


def norm_params(shape: Shape, drop: int) -> int:
    """Per-task LayerNorms: two per layer from N up, 4(L−N)d, and the embeddings' 2d when N = 0."""
    return 4 * (shape.layers - drop) * shape.hidden + (2 * shape.hidden if drop == 0 else 0)


def _registry() -> dict[str, Method]:
    from streamlearn.methods import adapter, full, fusion, layernorm, top_k

    return {m.name: m for m in (adapter.METHOD, full.METHOD, top_k.METHOD, layernorm.METHOD, fusion.METHOD)}


METHODS: dict[str, Method] = _registry()
"""Name -> Method, in `--method` order."""


def method(name: str) -> Method:
    """The registered method of that name."""
    if name not in METHODS:
        raise InvalidConfig(f"method {name!r} is not one of {', '.join(METHODS)}")
    return METHODS[name]


def parameter_count(config, shape: Shape) -> int:
    """Exact parameters one task of `config` stores on a backbone of `shape` (head included).

    For the adapter method with AdapterDrop N (Houlsby et al. 2019, Sec. 2.1; Rücklé et al. 2021):
    2(L−N)(2md + m + d) + 4(L−N)d + 2d·[N = 0] + (d + 1)C; N = 0 is the faithful Houlsby count
    2L(2md + m + d) + (4L + 2)d + (d + 1)C.
    """
    if config.drop_layers > shape.layers:
        raise InvalidConfig(f"drop-lower {config.drop_layers} exceeds the backbone's {shape.layers} layers")
    return method(config.method).count(config, shape)


def default_lr(name: str) -> float:
    """Default AdamW learning rate of a method (Houlsby et al. 2019 ranges; checked on real tasks)."""
    return method(name).default_lr
