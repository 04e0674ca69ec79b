"""The Houlsby bottleneck adapter and the context manager that swaps per-task modules in and out.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (arXiv:1902.00751):
- Sec. 2.1 / Fig. 2: each layer gets two adapters, one after the attention output projection and
  one after the FFN output projection, each applied to the sub-layer's output *before* it is added
  back to the residual stream and normalised. The reference code (google-research/adapter-bert)
  applies it after the projection's dropout, which is where `Adapted` sits for BERT and RoBERTa.
- Sec. 2.1: an adapter is a bottleneck with its own skip connection,
  Adapter(h) = h + W_up f(W_down h + b_down) + b_up, so near-zero weights make it near-identity and
  training starts from the pretrained network's function.
- Sec. 3.6: weights drawn from a zero-mean normal truncated at two standard deviations; the paper
  found sigma up to 1e-2 robust (the reference code used 1e-3), so sigma is configurable.
- Sec. 2.1: the layer-normalisation parameters are trained per task too, alongside the adapters.

The shared backbone is never written. `swapped` replaces submodules at dotted paths for the
duration of a `with` block and puts the exact original objects (and train/eval flags) back on exit,
so a backbone cached by a worker serves one job after another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

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


class Adapted(nn.Module):
    """Runs a shared backbone module, then a per-task adapter on its output."""

    def __init__(self, base: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        """Apply the base module, then the adapter."""
        return self.adapter(self.base(*args, **kwargs))


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), name


@contextlib.contextmanager
def swapped(root: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Replace submodules of `root` at dotted paths inside the block; restore them exactly on exit.

    The original module objects go back in place, and every module's train/eval flag and every
    parameter's `requires_grad` are restored too, even when the block raises.

    Args:
        root: The shared model.
        replacements: Dotted path (as in `named_modules`) -> the module to put there.

    Yields:
        `root`, with the replacements in place.
    """
    modes = {module: module.training for module in root.modules()}
    grads = {param: param.requires_grad for param in root.parameters()}
    originals: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for path, module in replacements.items():
            parent, name = _parent(root, path)
            original = parent.get_submodule(name)
            originals.append((parent, name, original))
            setattr(parent, name, module)
        yield root
    finally:
        for parent, name, original in reversed(originals):
            setattr(parent, name, original)
        for module, mode in modes.items():
            module.training = mode
        for param, flag in grads.items():
            param.requires_grad_(flag)
