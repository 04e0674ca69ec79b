"""The fusion method (AdapterFusion, Pfeiffer et al. 2021, arXiv:2005.00247): the task's own Houlsby
adapter (stage 1, as the adapter method) and, at each adapter site, a fusion layer that attends over
the outputs of its own adapter and of the frozen adapters of earlier tasks (stage 2).

AdapterHub's "dynamic" configuration: query and key d×d with bias, value d×d without bias and
initialised to the identity, softmax over the sources, the weighted sum added to the residual.
With `fusion_rank` R the three are low-rank (d×R then R×d; the value is identity plus a low-rank
term that starts at zero), so a fused task stays O(Lmd) instead of adding 3d² + 2d per site.
The sources' adapters are not stored with the task: its artifact records them by task and sha256.
"""

from __future__ import annotations

from streamlearn.methods import adapter
from streamlearn.methods.registry import Method, Shape
from streamlearn.rates import DEFAULT_LR


def fusion_site_params(hidden: int, rank: int) -> int:
    """One site's fusion layer: 3d² + 2d (full), or 6dR + 2d (rank R: query and key d×R, R×d + bias d;
    value d×R, R×d, no bias)."""
    if rank:
        return 6 * hidden * rank + 2 * hidden
    return 3 * hidden * hidden + 2 * hidden


def fusion_params(config, shape: Shape) -> int:
    """The fusion term alone: 2(L − N) sites, each `fusion_site_params` (independent of the source count)."""
    return 2 * (shape.layers - config.drop_layers) * fusion_site_params(shape.hidden, config.fusion_rank)


def count(config, shape: Shape) -> int:
    """The adapter method's count plus the fusion term: + 2L(3d² + 2d), or + 2L(6dR + 2d) with rank R."""
    return adapter.count(config, shape) + fusion_params(config, shape)


def build(backbone, config, parts) -> None:
    """The adapter method's parts, then a fusion layer at every site that has an adapter."""
    from streamlearn.engine.fusion import FusionLayer

    adapter.build(backbone, config, parts)
    for key in parts.site_keys():
        site = parts.at(key)
        if site.adapter is not None:
            site.fusion = FusionLayer(backbone.info.hidden, config.fusion_rank)


METHOD = Method(
    name="fusion",
    help="own adapter, then AdapterFusion over earlier tasks' adapters (--fuse-from)",
    default_lr=DEFAULT_LR["fusion"],
    drops=False,
    count=count,
    build=build,
)
