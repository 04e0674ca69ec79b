"""Methods as registered units (adapter, full, top-k, layernorm): settings, parts, count, default lr.

`build_parts` makes a task's fresh `TaskParts` for a method; `parameter_count` is the one formula
that the storage law, the report and the plot use.
"""

from __future__ import annotations

from streamlearn.methods.config import POOLINGS, MethodConfig
from streamlearn.methods.registry import METHODS, Method, Shape, default_lr, method, parameter_count

__all__ = ["METHODS", "POOLINGS", "Method", "MethodConfig", "Shape", "build_parts", "default_lr", "method",
           "parameter_count", "shape_of"]


def shape_of(backbone, classes: int) -> Shape:
    """The `Shape` of a loaded backbone for a task of `classes` classes."""
    layer = backbone.layer(0)
    return Shape(backbone.info.layers, backbone.info.hidden, classes,
                 layer_params=sum(p.numel() for p in layer.parameters()), backbone_params=backbone.info.params)


def build_parts(backbone, config: MethodConfig, classes: int):
    """A fresh task's parts for `config` on `backbone`: every parameter trainable, on its device.

    Raises:
        InvalidConfig: fewer than 2 classes, or a setting the backbone cannot take (top-k > L, N > L).
    """
    from streamlearn.engine.parts import TaskParts
    from streamlearn.errors import InvalidConfig

    if classes < 2:
        raise InvalidConfig(f"a task needs at least 2 classes, got {classes}")
    if config.drop_layers > backbone.info.layers:
        raise InvalidConfig(f"drop-lower {config.drop_layers} exceeds the backbone's {backbone.info.layers} layers")
    parts = TaskParts(classes, backbone.info.hidden, config.pooling)
    method(config.method).build(backbone, config, parts)
    parts.requires_grad_(True)
    return parts.to(backbone.device)
