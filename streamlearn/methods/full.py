"""The full method: every weight of a private copy of the encoder, and the head, train."""

from __future__ import annotations

from streamlearn.methods.registry import Method, Shape, head_params


def count(config, shape: Shape) -> int:
    """|w| + (d + 1)C."""
    return shape.backbone_params + head_params(shape)


def build(backbone, config, parts) -> None:
    """A copy of the whole encoder (a plain Hugging Face model: copying a site copies its base)."""
    import copy

    parts.encoder = copy.deepcopy(backbone.model)


METHOD = Method(
    name="full",
    help="every weight (on a copy)",
    default_lr=3e-5,
    drops=False,
    count=count,
    build=build,
)
