"""The fusion layer at an adapter site (AdapterFusion, Pfeiffer et al. 2021, arXiv:2005.00247, Sec. 2.2),
and the mean attention it pays to each source on a set of batches.

At a site, each source adapter s (the task's own first, then the earlier tasks' in their order)
turns the sub-layer output h into h + u_s; the fusion layer attends from h over the u_s:

    q = Q(h),  k_s = K(u_s),  v_s = V(u_s),  a = softmax_s(q · k_s)  (temperature 1),
    out = h + Σ_s a_s v_s

as AdapterHub's "dynamic" configuration does it (query and key with bias, value without bias and
initialised to the identity, dropout 0.1 on the scores while training, the weighted sum added to
the residual h). The value regulariser 0.01·Σ(I − V)² keeps V near the identity (`regulariser`).
With rank R, Q and K are d×R then R×d, and V is the identity plus a d×R, R×d term that starts at 0.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

SCORE_DROPOUT = 0.1
"""Dropout on the attention scores while training (AdapterHub: the backbone's attention dropout)."""
REGULARISER = 0.01
"""Weight of the value regulariser Σ(I − V)² (Pfeiffer et al. 2021; AdapterHub's `regularization`)."""


def _low_rank(hidden: int, rank: int, bias: bool, zero_up: bool) -> nn.Sequential:
    down, up = nn.Linear(hidden, rank, bias=False), nn.Linear(rank, hidden, bias=bias)
    nn.init.normal_(down.weight, std=0.02)
    if zero_up:
        nn.init.zeros_(up.weight)
    else:
        nn.init.normal_(up.weight, std=0.02)
    if bias:
        nn.init.zeros_(up.bias)
    return nn.Sequential(down, up)


class FusionLayer(nn.Module):
    """Query, key and value of one site's fusion (full d×d, or rank R).

    Args:
        hidden: Model width d.
        rank: 0 for the full layer, else the rank R of query, key and the value's correction.
    """

    def __init__(self, hidden: int, rank: int = 0) -> None:
        super().__init__()
        self.rank = rank
        if rank:
            self.query = _low_rank(hidden, rank, bias=True, zero_up=False)
            self.key = _low_rank(hidden, rank, bias=True, zero_up=False)
            self.value = _low_rank(hidden, rank, bias=False, zero_up=True)  # V = I + up·down, starts at I
        else:
            self.query, self.key = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden, bias=False)
            for linear in (self.query, self.key):
                nn.init.normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)
            with torch.no_grad():
                self.value.weight.copy_(torch.eye(hidden))

    def _apply_value(self, mixed: torch.Tensor) -> torch.Tensor:
        """V applied to a (weighted sum of) source output(s)."""
        return mixed + self.value(mixed) if self.rank else self.value(mixed)

    def _key_query(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kᵀq and q·b_k, so that q · K(u) = (Kᵀq) · u + q·b_k without applying K to every source."""
        if self.rank:
            down, up = self.key
            return (q @ up.weight) @ down.weight, q @ up.bias
        return q @ self.key.weight, q @ self.key.bias

    def forward_per_source(self, hidden: torch.Tensor, ups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The formula as written, K and V applied to every source (no dropout): the reference that
        `forward` must equal, used by the tests and by the layer-cost benchmark."""
        scores = torch.einsum("btd,btsd->bts", self.query(hidden), self.key(ups))
        attention = torch.softmax(scores, dim=-1)
        values = ups + self.value(ups) if self.rank else self.value(ups)
        return hidden + torch.einsum("bts,btsd->btd", attention, values), attention

    def regulariser(self) -> torch.Tensor:
        """Σ(I − V)² over V's entries (for rank R: the squared entries of its correction)."""
        if self.rank:
            down, up = self.value
            return (up.weight @ down.weight).pow(2).sum()
        eye = torch.eye(self.value.weight.shape[0], device=self.value.weight.device, dtype=self.value.weight.dtype)
        return (eye - self.value.weight).pow(2).sum()

    def forward(self, hidden: torch.Tensor, ups: torch.Tensor, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse: `hidden` (B, T, d) is query and residual, `ups` (B, T, S, d) the sources' outputs.

        K and V are linear, so the layer never applies them to each source: the score of source s is
        (Kᵀq)·u_s + q·b_k, and Σ_s a_s V(u_s) = V(Σ_s a_s u_s). That is the formula above, at 3d² per
        token and site whatever the number of sources S (applying K and V per source costs (1 + 2S)d²).

        Returns:
            The fused states (B, T, d) and the attention (B, T, S).
        """
        key_query, offset = self._key_query(self.query(hidden))
        scores = torch.einsum("btd,btsd->bts", key_query, ups) + offset.unsqueeze(-1)
        scores = F.dropout(scores, SCORE_DROPOUT, training=training)
        attention = torch.softmax(scores, dim=-1)
        return hidden + self._apply_value(torch.einsum("bts,btsd->btd", attention, ups)), attention


_RECORDER: contextvars.ContextVar[dict | None] = contextvars.ContextVar("streamlearn_fusion_recorder", default=None)


def fuse(site, key: str, hidden: torch.Tensor, training: bool) -> torch.Tensor:
    """One task's rows at one site: its own and its sources' adapters on `hidden`, then its fusion layer.

    Args:
        site: The task's `SiteParts` there (its `adapter`, `fusion` and `sources`).
        key: The site's key (for the attention recorder).
        hidden: The sub-layer output of the task's rows (B, T, d).
        training: Apply the scores' dropout.
    """
    adapters = [site.adapter, *(a for _, a in site.sources)]
    ups = torch.stack([a(hidden) - hidden for a in adapters], dim=2)
    out, attention = site.fusion(hidden, ups, training)
    record = _RECORDER.get()
    if record is not None:
        mask = record["mask"].to(attention.dtype).unsqueeze(-1)  # (B, T, 1): padding does not count
        total = (attention * mask).sum((0, 1)).detach().cpu()
        names = ["self", *(n for n, _ in site.sources)]
        sums = record["sums"].setdefault(key, {})
        for name, value in zip(names, total.tolist()):
            sums[name] = sums.get(name, 0.0) + value
        record["tokens"][key] = record["tokens"].get(key, 0.0) + float(mask.sum())
    return out


@contextlib.contextmanager
def recording(mask: torch.Tensor, record: dict) -> Iterator[dict]:
    """Accumulate the attention of the forwards inside the block (one batch, its attention mask) into `record`."""
    record["mask"] = mask
    token = _RECORDER.set(record)
    try:
        yield record
    finally:
        _RECORDER.reset(token)


def mean_attention(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict:
    """Mean fusion attention per site and source over every real token of `batches` (eval mode, no autograd).

    Returns:
        `{"sites": [key, ...], "sources": ["self", task, ...], "mean": [[a or None per source] per site]}`;
        None marks a source without an adapter at that site.
    """
    record: dict = {"sums": {}, "tokens": {}}
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with recording(batch["attention_mask"], record):
                model(**batch)
    sites = list(record["sums"])
    sources = list(dict.fromkeys(n for key in sites for n in record["sums"][key]))
    mean = [[record["sums"][key][n] / record["tokens"][key] if n in record["sums"][key] else None for n in sources]
            for key in sites]
    return {"sites": sites, "sources": sources, "mean": mean}


def regulariser(parts) -> torch.Tensor | None:
    """0.01·Σ(I − V)² over every fusion layer of a task's parts, or None when it has none."""
    layers = [site.fusion for site in parts.sites() if site.fusion is not None and site.sources is not None]
    if not layers:
        return None
    return REGULARISER * sum(layer.regulariser() for layer in layers)


def attach_sources(parts, sources: list[tuple[str, object]]) -> None:
    """Give a fused task's sites their sources' adapters (frozen, not part of its stored tensors).

    Args:
        parts: The fused task's TaskParts.
        sources: (task name, its TaskParts) of each source, in order.
    """
    for key in parts.site_keys():
        site = parts.at(key)
        if site.fusion is None:
            continue
        found = [(name, src.at(key).adapter) for name, src in sources
                 if src.at(key) is not None and src.at(key).adapter is not None]
        for _, adapter in found:
            adapter.requires_grad_(False)
        site.sources = found
    parts.source_names = [name for name, _ in sources]
    parts.source_bytes = sum(src.nbytes for _, src in sources)
