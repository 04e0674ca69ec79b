"""The top-k method: private copies of the top k layers and the head train (Houlsby et al. 2019,
Sec. 3.3's "fine-tune the top layers" baseline); rows share the backbone below layer L − k."""

from __future__ import annotations

from streamlearn.errors import InvalidConfig
from streamlearn.methods.registry import Method, Shape, head_params


def count(config, shape: Shape) -> int:
    """k·|layer| + (d + 1)C."""
    return config.top_k * shape.layer_params + head_params(shape)


def build(backbone, config, parts) -> None:
    """A copy of each of the top k layers (plain modules: copying a site copies its base)."""
    import copy

    layers = backbone.info.layers
    if config.top_k > layers:
        raise InvalidConfig(f"top-k {config.top_k} exceeds the backbone's {layers} layers")
    for i in range(layers - config.top_k, layers):
        parts.put_copy(i, copy.deepcopy(backbone.layer(i)))


METHOD = Method(
    name="top-k",
    help="the top K layers + head",
    default_lr=1e-4,
    drops=False,
    count=count,
    build=build,
)
