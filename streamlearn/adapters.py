"""The Houlsby bottleneck adapter: the module a task puts at each adapter site of the backbone.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (arXiv:1902.00751):
- Sec. 2.1 / Fig. 2: each layer gets two adapters, one after the attention output projection and
  one after the FFN output projection, each applied to the sub-layer's output *before* it is added
  back to the residual stream and normalised. The reference code (google-research/adapter-bert)
  applies it after the projection's dropout, which is where the engine's adapter site sits for BERT and RoBERTa.
- Sec. 2.1: an adapter is a bottleneck with its own skip connection,
  Adapter(h) = h + W_up f(W_down h + b_down) + b_up, so near-zero weights make it near-identity and
  training starts from the pretrained network's function.
- Sec. 3.6: weights drawn from a zero-mean normal truncated at two standard deviations; the paper
  found sigma up to 1e-2 robust (the reference code used 1e-3), so sigma is configurable.
- Sec. 2.1: the layer-normalisation parameters are trained per task too, alongside the adapters.

The shared backbone is never written: the engine's sites (`streamlearn.engine.sites`) apply each
row's task's adapter after the backbone's own module, and the backbone's tensors stay as loaded.
"""

from __future__ import annotations

import torch
from torch import nn


class HoulsbyAdapter(nn.Module):
    """A bottleneck adapter: h + W_up GELU(W_down h + b_down) + b_up (Houlsby et al. 2019, Sec. 2.1).

    Args:
        hidden: Model width d.
        size: Bottleneck width m.
        sigma: Standard deviation of the truncated-normal weight init (truncated at 2 sigma).
    """

    def __init__(self, hidden: int, size: int, sigma: float = 1e-2) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        self.act = nn.GELU()
        for linear in (self.down, self.up):
            # Sec. 3.6: near-identity init; truncation at 2 sigma keeps outliers from breaking that.
            nn.init.trunc_normal_(linear.weight, mean=0.0, std=sigma, a=-2 * sigma, b=2 * sigma)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Return the adapted hidden states (same shape as the input)."""
        return hidden_states + self.up(self.act(self.down(hidden_states)))
