"""The layernorm method: only the LayerNorms and the head train (Houlsby et al. 2019, Sec. 3.4's
baseline); with AdapterDrop N the lowest N layers and the embeddings keep the backbone's."""

from __future__ import annotations

from streamlearn.methods.registry import Method, Shape, head_params, norm_params


def count(config, shape: Shape) -> int:
    """4(L−N)d + 2d·[N = 0] + (d + 1)C."""
    return norm_params(shape, config.drop_layers) + head_params(shape)


def norm_copies(backbone, drop: int) -> dict:
    """Site key -> a trainable copy of the backbone's LayerNorm there, for the embeddings (N = 0)
    and both sites of every layer from N up; copies, so training never writes the shared ones."""
    import copy

    arch, out = backbone.arch, {}
    if drop == 0:
        out["embeddings"] = copy.deepcopy(backbone.model.get_submodule(arch.embeddings_norm))
    for i in range(drop, backbone.info.layers):
        layer = backbone.layer(i)
        out[f"layers.{i}.attention"] = copy.deepcopy(layer.get_submodule(arch.attn_norm))
        out[f"layers.{i}.ffn"] = copy.deepcopy(layer.get_submodule(arch.ffn_norm))
    return out


def build(backbone, config, parts) -> None:
    """Copies of the LayerNorms from N up (and of the embeddings' when N = 0)."""
    for key, norm in norm_copies(backbone, config.drop_layers).items():
        parts.put(key, norm=norm)


METHOD = Method(
    name="layernorm",
    help="LayerNorms + head",
    default_lr=1e-3,
    drops=True,
    count=count,
    build=build,
)
