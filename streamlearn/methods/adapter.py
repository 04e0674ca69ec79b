"""The adapter method (Houlsby et al. 2019, arXiv:1902.00751): two bottleneck adapters per layer,
every LayerNorm and the head train; with AdapterDrop N (Rücklé et al. 2021, arXiv:2010.11918,
Sec. 3) the lowest N layers and the embeddings keep the backbone's own modules."""

from __future__ import annotations

from streamlearn.methods.registry import Method, Shape, head_params, norm_params


def count(config, shape: Shape) -> int:
    """2(L−N)(2md + m + d) + 4(L−N)d + 2d·[N = 0] + (d + 1)C."""
    m, d, n = config.adapter_size, shape.hidden, config.drop_layers
    return 2 * (shape.layers - n) * (2 * m * d + m + d) + norm_params(shape, n) + head_params(shape)


def build(backbone, config, parts) -> None:
    """An adapter at both sites of every layer from N up, and copies of their LayerNorms."""
    from streamlearn.adapters import HoulsbyAdapter
    from streamlearn.methods.layernorm import norm_copies

    d = backbone.info.hidden
    norms = norm_copies(backbone, config.drop_layers)
    for key in [k for k in norms if k != "embeddings"]:
        parts.put(key, HoulsbyAdapter(d, config.adapter_size, config.sigma), norms[key])
    if "embeddings" in norms:
        parts.put("embeddings", norm=norms["embeddings"])


METHOD = Method(
    name="adapter",
    help="Houlsby adapters + LayerNorms + head",
    default_lr=1e-3,
    drops=True,
    count=count,
    build=build,
)
