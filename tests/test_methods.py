"""Methods: trainable counts match the formula, each method stores exactly what it trains."""

from __future__ import annotations

import pytest
import torch

from streamlearn.backbone import Backbone, BackboneInfo, fingerprint
from streamlearn.errors import InvalidConfig
from streamlearn.methods import MethodConfig, TaskModules, attached, default_lr, expected_trainable


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


def test_formula_for_minilm_is_605954():
    """The issue's worked example: L=6, d=384, m=64, C=2 gives 605,954 trainable parameters."""
    assert expected_trainable(6, 384, 64, 2) == 595_200 + 9_984 + 770 == 605_954


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("layers,hidden,m,classes", [(1, 16, 4, 2), (2, 32, 8, 5), (3, 24, 64, 3)])
def test_adapter_trainable_count_matches_formula(kind, layers, hidden, m, classes):
    """For each architecture and several (L, d, m, C) the adapter method trains exactly 2L(2md+m+d)+(4L+2)d+(d+1)C."""
    backbone = _backbone(kind, layers, hidden)
    task = TaskModules(backbone, MethodConfig(adapter_size=m), classes)
    assert task.trainable_params == expected_trainable(layers, hidden, m, classes)
    ids = torch.randint(5, 50, (2, 7))
    with attached(backbone, task) as model:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert trainable == task.trainable_params
    assert logits.shape == (2, classes)
    assert fingerprint(backbone.model) == backbone.info.fingerprint


def test_each_method_stores_exactly_its_trained_tensors():
    """adapter, layernorm, top-k and full report counts from their own formulas and store those tensors only."""
    backbone = _backbone("bert", 3, 16)
    layer_params = sum(p.numel() for p in backbone.layer(0).parameters())
    head = 17 * 4
    expected = {
        MethodConfig(method="adapter", adapter_size=8): expected_trainable(3, 16, 8, 4),
        MethodConfig(method="layernorm"): (4 * 3 + 2) * 16 + head,
        MethodConfig(method="top-k", top_k=2): 2 * layer_params + head,
        MethodConfig(method="full"): backbone.info.params + head,
    }
    for config, count in expected.items():
        task = TaskModules(backbone, config, classes=4)
        stored = task.stored_tensors()
        assert task.trainable_params == count == sum(t.numel() for t in stored.values()), config.method
        assert set(stored) == {n for n, p in task.named_parameters() if p.requires_grad}


def test_top_k_replaces_only_the_top_layers():
    """top-k swaps in per-task copies of the last k layers and leaves the lower ones shared."""
    backbone = _backbone("bert", 3, 16)
    shared = [backbone.layer(i) for i in range(3)]
    task = TaskModules(backbone, MethodConfig(method="top-k", top_k=2), classes=2)
    with attached(backbone, task):
        assert backbone.layer(0) is shared[0]
        assert backbone.layer(1) is task.layers[0] and backbone.layer(2) is task.layers[1]
    assert [backbone.layer(i) for i in range(3)] == shared


def test_full_trains_a_private_copy():
    """full fine-tuning works on a deep copy, so the shared model is not even referenced."""
    backbone = _backbone("bert", 1, 16)
    task = TaskModules(backbone, MethodConfig(method="full"), classes=2)
    with attached(backbone, task) as model:
        assert model.encoder is task.encoder and model.encoder is not backbone.model
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_top_k_beyond_depth_is_refused():
    """Asking for more top layers than the backbone has is a configuration error."""
    with pytest.raises(InvalidConfig, match="exceeds the backbone's 1 layers"):
        TaskModules(_backbone("bert", 1, 16), MethodConfig(method="top-k", top_k=2), classes=2)


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
    task = TaskModules(backbone, MethodConfig(method="layernorm", pooling="cls"), classes=2)
    ids = torch.randint(5, 50, (1, 6))
    with attached(backbone, task) as model, torch.no_grad():
        states = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        torch.testing.assert_close(model(ids, torch.ones_like(ids)), task.head(states[:, 0]))
