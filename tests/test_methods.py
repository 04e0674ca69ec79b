"""Methods: the one parameter formula matches the stored tensors, each method stores exactly what it trains."""

from __future__ import annotations

import pytest
import torch

from streamlearn.backbone import Backbone, BackboneInfo, fingerprint
from streamlearn.engine import TaskModel, encoder
from streamlearn.engine.sites import Route, Site, routed
from streamlearn.errors import InvalidConfig
from streamlearn.methods import MethodConfig, Shape, build_parts, default_lr, parameter_count, shape_of


def _backbone(kind: str, layers: int, hidden: int) -> Backbone:
    """A random, frozen backbone of the given architecture, without tokenizer or directory."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    if kind == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=50, dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden))
    else:
        config_cls, model_cls = (BertConfig, BertModel) if kind == "bert" else (RobertaConfig, RobertaModel)
        config = config_cls(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=2 * hidden, max_position_embeddings=40)
        model = model_cls(config)
    model.requires_grad_(False).eval()
    params = sum(p.numel() for p in model.parameters())
    info = BackboneInfo(kind, "", fingerprint(model), layers, hidden, params, 4 * params)
    return Backbone(model, None, info, torch.device("cpu"))


def _count(config: MethodConfig, backbone: Backbone, classes: int) -> int:
    return parameter_count(config, shape_of(backbone, classes))


def test_formula_for_minilm_is_605954():
    """The issue's worked example: L=6, d=384, m=64, C=2 gives 605,954 trainable parameters."""
    assert parameter_count(MethodConfig(), Shape(6, 384, 2)) == 595_200 + 9_984 + 770 == 605_954


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("layers,hidden,m,classes", [(1, 16, 4, 2), (2, 32, 8, 5), (3, 24, 64, 3)])
def test_adapter_trainable_count_matches_formula(kind, layers, hidden, m, classes):
    """For each architecture and several (L, d, m, C) the adapter method trains exactly 2L(2md+m+d)+(4L+2)d+(d+1)C."""
    backbone = _backbone(kind, layers, hidden)
    parts = build_parts(backbone, MethodConfig(adapter_size=m), classes)
    formula = 2 * layers * (2 * m * hidden + m + hidden) + (4 * layers + 2) * hidden + (hidden + 1) * classes
    assert sum(p.numel() for p in parts.parameters()) == formula == _count(MethodConfig(adapter_size=m), backbone, classes)
    ids = torch.randint(5, 50, (2, 7))
    model = TaskModel(backbone, parts)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert trainable == formula
    assert logits.shape == (2, classes)
    assert fingerprint(backbone.model) == backbone.info.fingerprint


@pytest.mark.parametrize("layers,hidden,m,classes,drop", [
    (1, 16, 4, 2, 0), (1, 16, 4, 2, 1), (2, 32, 8, 5, 1), (3, 24, 64, 3, 2), (4, 16, 2, 7, 3), (3, 16, 8, 2, 3),
])
def test_parameter_formula_equals_the_stored_tensors_with_drop_lower(layers, hidden, m, classes, drop):
    """For several (L, d, m, C, N) the one formula equals the stored tensors of adapter and layernorm tasks."""
    backbone = _backbone("bert", layers, hidden)
    for config in (MethodConfig(adapter_size=m, drop_layers=drop), MethodConfig(method="layernorm", drop_layers=drop)):
        stored = build_parts(backbone, config, classes).stored_tensors()
        assert sum(t.numel() for t in stored.values()) == _count(config, backbone, classes), config
        sites = {".".join(n.split(".")[:2]) for n in stored if n.startswith("layers.")}
        assert sites == {f"layers.{i}" for i in range(drop, layers)}
        assert any(n.startswith("embeddings.norm.") for n in stored) == (drop == 0)
    m_term = 2 * (layers - drop) * (2 * m * hidden + m + hidden)
    norms = 4 * (layers - drop) * hidden + (2 * hidden if drop == 0 else 0)
    assert _count(MethodConfig(adapter_size=m, drop_layers=drop), backbone, classes) == m_term + norms + (hidden + 1) * classes


def test_each_method_stores_exactly_its_trained_tensors():
    """adapter, layernorm, top-k and full report counts from their own formulas and store those tensors only."""
    backbone = _backbone("bert", 3, 16)
    layer_params = sum(p.numel() for p in backbone.layer(0).parameters())
    head = 17 * 4
    expected = {
        MethodConfig(method="adapter", adapter_size=8): 2 * 3 * (2 * 8 * 16 + 8 + 16) + (4 * 3 + 2) * 16 + head,
        MethodConfig(method="layernorm"): (4 * 3 + 2) * 16 + head,
        MethodConfig(method="top-k", top_k=2): 2 * layer_params + head,
        MethodConfig(method="full"): backbone.info.params + head,
    }
    for config, count in expected.items():
        parts = build_parts(backbone, config, classes=4)
        stored = parts.stored_tensors()
        assert _count(config, backbone, 4) == count == sum(t.numel() for t in stored.values()), config.method
        assert set(stored) == {n for n, p in parts.named_parameters() if p.requires_grad}


def test_stored_tensor_names_say_where_they_go():
    """Format-2 names: site and role for adapters and norms, `layers.I.copy.*` for top-k, `encoder.*` for full."""
    backbone = _backbone("bert", 2, 16)
    adapter = build_parts(backbone, MethodConfig(adapter_size=4), 2).stored_tensors()
    assert {"layers.1.attention.adapter.down.weight", "layers.0.ffn.adapter.up.bias", "layers.1.attention.norm.weight",
            "embeddings.norm.bias", "head.weight"} <= set(adapter)
    top = build_parts(backbone, MethodConfig(method="top-k", top_k=1), 2).stored_tensors()
    assert {n.split(".")[1] for n in top if n.startswith("layers.")} == {"1"}
    assert "layers.1.copy.attention.output.LayerNorm.weight" in top
    full = build_parts(backbone, MethodConfig(method="full"), 2).stored_tensors()
    assert "encoder.embeddings.word_embeddings.weight" in full and not any(".base." in n for n in full)


def test_top_k_copies_only_the_top_layers_as_plain_modules():
    """top-k holds private copies of the last k layers (without sites); the lower ones stay shared."""
    backbone = _backbone("bert", 3, 16)
    TaskModel(backbone, build_parts(backbone, MethodConfig(), 2))  # sites installed
    parts = build_parts(backbone, MethodConfig(method="top-k", top_k=2), classes=2)
    assert parts.copy_of(0) is None
    assert parts.copy_of(1) is not backbone.layer(1) and parts.copy_of(2) is not backbone.layer(2)
    assert not any(isinstance(m, Site) for m in parts.modules())


def test_full_trains_a_private_copy():
    """full fine-tuning works on a deep copy, so the shared model's tensors are not even referenced."""
    backbone = _backbone("bert", 1, 16)
    parts = build_parts(backbone, MethodConfig(method="full"), classes=2)
    shared = {p.data_ptr() for p in backbone.model.parameters()}
    assert not shared & {p.data_ptr() for p in parts.parameters()}
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_top_k_beyond_depth_is_refused():
    """Asking for more top layers than the backbone has is a configuration error."""
    with pytest.raises(InvalidConfig, match="exceeds the backbone's 1 layers"):
        build_parts(_backbone("bert", 1, 16), MethodConfig(method="top-k", top_k=2), classes=2)


def test_drop_lower_beyond_depth_and_on_top_k_is_refused():
    """drop-lower N > L is refused, and so is drop-lower on a method it does not apply to."""
    with pytest.raises(InvalidConfig, match="drop-lower 3 exceeds the backbone's 2 layers"):
        build_parts(_backbone("bert", 2, 16), MethodConfig(drop_layers=3), classes=2)
    with pytest.raises(InvalidConfig, match="drop-lower applies to adapter, layernorm, not to top-k"):
        MethodConfig(method="top-k", drop_layers=1)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "lora"}, "not one of adapter, full, top-k, layernorm"),
    ({"adapter_size": 0}, "adapter size 0"),
    ({"top_k": 0}, "top-k 0"),
    ({"sigma": 0.0}, "sigma 0.0"),
    ({"pooling": "max"}, "pooling 'max'"),
])
def test_method_config_rejects_bad_values(kwargs, message):
    """Out-of-range method settings raise InvalidConfig naming the setting."""
    with pytest.raises(InvalidConfig, match=message):
        MethodConfig(**kwargs)


def test_method_config_round_trips_and_rejects_unknown_keys():
    """to_dict/from_dict round-trips, and an unknown key is refused."""
    config = MethodConfig(method="top-k", top_k=3, pooling="cls")
    assert MethodConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidConfig, match="unknown method settings: rank"):
        MethodConfig.from_dict({"rank": 4})


def test_default_learning_rates_follow_the_paper_ranges():
    """Each method has its own default learning rate."""
    assert [default_lr(m) for m in ("adapter", "layernorm", "top-k", "full")] == [1e-3, 1e-3, 1e-4, 3e-5]


def test_cls_pooling_reads_the_first_token():
    """With cls pooling the head sees only the first token's state."""
    backbone = _backbone("bert", 1, 16)
    parts = build_parts(backbone, MethodConfig(method="layernorm", pooling="cls"), classes=2)
    ids = torch.randint(5, 50, (1, 6))
    model = TaskModel(backbone, parts).eval()
    with torch.no_grad(), routed(Route((parts,), None)):
        states = encoder.encode(backbone, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    with torch.no_grad():
        torch.testing.assert_close(model(ids, torch.ones_like(ids)), parts.head(states[:, 0]))
