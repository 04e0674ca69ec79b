"""Houlsby adapters and the engine's sites: initialisation, placement, near-identity, untouched backbone."""

from __future__ import annotations

import torch

from streamlearn.adapters import HoulsbyAdapter
from streamlearn.backbone import fingerprint
from streamlearn.engine import TaskModel, encoder, prepare
from streamlearn.engine.sites import Route, Site, routed
from streamlearn.methods import MethodConfig, build_parts


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
    """With fresh adapters the pooled states differ from the bare backbone's by under 5% of their scale."""
    batch = _batch(tiny_backbone)
    with torch.no_grad():
        base = tiny_backbone.model(**batch).last_hidden_state
        parts = build_parts(tiny_backbone, MethodConfig(adapter_size=16), classes=2)
        with routed(Route((parts,), None)):
            adapted = encoder.encode(tiny_backbone, batch)
    assert (adapted - base).abs().max() < 0.05 * base.abs().max()
    assert not torch.equal(adapted, base)


def test_sites_sit_after_the_output_projections_and_at_every_layernorm(tiny_backbone):
    """Each layer's attention-output and FFN-output dropout and every LayerNorm is a Site over the original module."""
    before = fingerprint(tiny_backbone.model)
    prepare(tiny_backbone)
    prepare(tiny_backbone)  # idempotent: no site over a site
    for i in range(2):
        layer = tiny_backbone.layer(i)
        for site, role in ((layer.attention.output.dropout, "adapter"), (layer.output.dropout, "adapter"),
                           (layer.attention.output.LayerNorm, "norm"), (layer.output.LayerNorm, "norm")):
            assert isinstance(site, Site) and site.role == role and not isinstance(site.base, Site)
        assert isinstance(layer.attention.output.dropout.base, torch.nn.Dropout)
    assert isinstance(tiny_backbone.model.embeddings.LayerNorm, Site)
    assert fingerprint(tiny_backbone.model) == before == tiny_backbone.info.fingerprint
    saved = tiny_backbone.model.state_dict()
    assert "embeddings.LayerNorm.weight" in saved and not any(".base." in k for k in saved)
    tiny_backbone.model.load_state_dict({k: v.clone() for k, v in saved.items()})  # same names back in
    assert fingerprint(tiny_backbone.model) == before


def test_training_a_task_model_never_changes_the_shared_modules_flags(tiny_backbone):
    """TaskModel.train() switches only the task's own modules; the shared backbone stays in eval mode, frozen."""
    model = TaskModel(tiny_backbone, build_parts(tiny_backbone, MethodConfig(adapter_size=4), classes=2))
    model.train()
    batch = _batch(tiny_backbone)
    loss = model(**batch).sum()
    loss.backward()
    assert not any(m.training for m in tiny_backbone.model.modules())
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert all(p.grad is not None for p in model.parameters())
    assert {n for n, _ in model.named_parameters()} == {f"parts.{n}" for n, _ in model.parts.named_parameters()}
    assert fingerprint(tiny_backbone.model) == tiny_backbone.info.fingerprint
