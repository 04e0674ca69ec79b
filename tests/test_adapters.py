"""Houlsby adapters: initialisation, placement, near-identity at init, exact detach."""

from __future__ import annotations

import pytest
import torch

from streamlearn.adapters import Adapted, HoulsbyAdapter, swapped
from streamlearn.methods import MethodConfig, TaskModules, attached


def _batch(backbone, texts=("the movie was good", "bad plot and very dull film it was")):
    return dict(backbone.tokenizer(list(texts), padding=True, return_tensors="pt"))


def test_adapter_init_is_truncated_normal_with_zero_biases():
    """Weights lie within 2 sigma with standard deviation near sigma, and both biases are zero."""
    adapter = HoulsbyAdapter(hidden=256, size=64, sigma=0.01)
    for linear in (adapter.down, adapter.up):
        assert linear.weight.abs().max() <= 0.02
        assert 0.006 < linear.weight.std().item() < 0.01
        assert torch.count_nonzero(linear.bias) == 0
    assert adapter.down.weight.shape == (64, 256) and adapter.up.weight.shape == (256, 64)


def test_adapter_is_bottleneck_with_skip_and_gelu():
    """The adapter computes h + W_up GELU(W_down h + b_down) + b_up."""
    adapter = HoulsbyAdapter(hidden=8, size=3, sigma=0.5)
    h = torch.randn(4, 8)
    expected = h + adapter.up(torch.nn.functional.gelu(adapter.down(h)))
    torch.testing.assert_close(adapter(h), expected)


def test_adapted_backbone_output_is_near_the_backbone_at_init(tiny_backbone):
    """With fresh adapters the hidden states differ from the backbone's by under 5% of their scale."""
    batch = _batch(tiny_backbone)
    with torch.no_grad():
        base = tiny_backbone.model(**batch).last_hidden_state
        task = TaskModules(tiny_backbone, MethodConfig(adapter_size=16), classes=2)
        with attached(tiny_backbone, task) as model:
            adapted = model.encoder(**batch).last_hidden_state
    assert (adapted - base).abs().max() < 0.05 * base.abs().max()
    assert not torch.equal(adapted, base)


def test_two_adapters_per_layer_sit_after_the_output_projections(tiny_backbone):
    """While attached, each layer's attention-output and FFN-output dropout is wrapped by an adapter."""
    task = TaskModules(tiny_backbone, MethodConfig(adapter_size=4), classes=2)
    with attached(tiny_backbone, task):
        for i in range(2):
            layer = tiny_backbone.layer(i)
            for site in (layer.attention.output.dropout, layer.output.dropout):
                assert isinstance(site, Adapted) and isinstance(site.base, torch.nn.Dropout)
            assert layer.attention.output.LayerNorm is task.norms[1 + 2 * i]
    assert isinstance(tiny_backbone.layer(0).output.dropout, torch.nn.Dropout)


def test_detach_restores_the_exact_modules_and_flags_even_on_error(tiny_backbone):
    """After the block (even one that raises) the original module objects and eval mode are back."""
    before = dict(tiny_backbone.model.named_modules())
    task = TaskModules(tiny_backbone, MethodConfig(adapter_size=4), classes=2)
    with pytest.raises(RuntimeError, match="boom"):
        with attached(tiny_backbone, task) as model:
            model.train()
            raise RuntimeError("boom")
    after = dict(tiny_backbone.model.named_modules())
    assert before.keys() == after.keys()
    assert all(before[name] is after[name] for name in before)
    assert not any(m.training for m in tiny_backbone.model.modules())
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())


def test_swapped_replaces_by_dotted_path_and_restores():
    """A module swapped at a dotted path is visible inside the block and the original is back after."""
    root = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.ReLU()))
    original = root[1][0]
    with swapped(root, {"1.0": torch.nn.Tanh()}):
        assert isinstance(root[1][0], torch.nn.Tanh)
    assert root[1][0] is original
