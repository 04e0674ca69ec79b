"""Backbone loading, caching, freezing, fingerprinting, description and architecture checks."""

from __future__ import annotations

import json

import pytest
import torch

from streamlearn.backbone import default_backbone_path, fingerprint, load_backbone, resolve_device
from streamlearn.errors import InvalidConfig, UnsupportedBackbone


def test_backbone_is_described_frozen_and_in_eval_mode(tiny_backbone):
    """The tiny BERT is described as L=2, d=32 with its exact parameter count, frozen and in eval mode."""
    info = tiny_backbone.info
    assert (info.layers, info.hidden) == (2, 32)
    assert info.params == sum(p.numel() for p in tiny_backbone.model.parameters())
    assert info.bytes == 4 * info.params
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert not tiny_backbone.model.training


def test_backbone_is_loaded_once_per_process(tiny_backbone_dir):
    """Loading the same directory twice returns the same cached object."""
    assert load_backbone(tiny_backbone_dir, device="cpu") is load_backbone(tiny_backbone_dir + "/", device="cpu")


def test_fingerprint_is_stable_and_sensitive_to_one_value(tiny_backbone):
    """The fingerprint matches the recorded one and changes when a single value of a copy changes."""
    import copy

    assert fingerprint(tiny_backbone.model) == tiny_backbone.info.fingerprint
    changed = copy.deepcopy(tiny_backbone.model)
    with torch.no_grad():
        changed.embeddings.LayerNorm.weight[0] += 1e-3
    assert fingerprint(changed) != tiny_backbone.info.fingerprint
    tiny_backbone.verify()


def test_unsupported_architecture_is_named(tmp_path):
    """A known but unsupported architecture (GPT-2) is refused with an error naming it."""
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedBackbone, match="'gpt2'"):
        load_backbone(str(tmp_path), device="cpu")


def test_unknown_architecture_is_named(tmp_path):
    """A model_type transformers does not know is refused with an error naming it."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery-net"}))
    with pytest.raises(UnsupportedBackbone, match="'mystery-net'"):
        load_backbone(str(tmp_path), device="cpu")


def test_missing_directory_is_a_clear_error(tmp_path):
    """A backbone directory without config.json is refused with its path."""
    with pytest.raises(InvalidConfig, match="has no config.json"):
        load_backbone(str(tmp_path / "nowhere"), device="cpu")


def test_backbone_setting_and_device_setting_are_honoured(isolated_home, monkeypatch):
    """STREAMLEARN_BACKBONE selects the default directory and STREAMLEARN_DEVICE the device."""
    from streamlearn.settings import get_settings

    monkeypatch.setenv("STREAMLEARN_BACKBONE", "/some/model")
    get_settings.cache_clear()
    assert default_backbone_path() == "/some/model"
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidConfig, match="not one of auto, cpu, cuda"):
        resolve_device("quantum")


def test_auto_device_is_cpu_without_cuda(monkeypatch):
    """The auto device falls back to the CPU when CUDA is unavailable."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InvalidConfig, match="CUDA is not available"):
        resolve_device("cuda")
