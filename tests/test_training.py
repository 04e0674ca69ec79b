"""Training and fit: schedule, metrics, reproducibility, model selection, backbone untouched."""

from __future__ import annotations

import pytest
import torch

from streamlearn import pipeline
from streamlearn.backbone import fingerprint
from streamlearn.errors import InvalidConfig
from streamlearn.methods import MethodConfig
from streamlearn.storage import task_params
from streamlearn.training import TrainConfig, _schedule, scores

FAST = TrainConfig(epochs=2, lr=1e-2, batch_size=16, max_length=32)


def test_scores_compute_accuracy_and_macro_f1():
    """Accuracy and macro-F1 match hand-computed values on a small example."""
    metrics = scores([0, 0, 1, 1], [0, 1, 1, 1])
    assert metrics.accuracy == 0.75
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics.examples == 4


def test_schedule_warms_up_linearly_then_decays_to_zero():
    """The learning-rate factor rises over the first 10% of steps, peaks at 1, then falls to 0."""
    factor = _schedule(total=100, warmup=0.1)
    assert [factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert factor(10) == 1.0 and factor(55) == 0.5 and factor(100) == 0.0


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}, {"max_length": 1}, {"warmup": 1.0}, {"seed": -1}])
def test_train_config_rejects_bad_values(kwargs):
    """Out-of-range training settings raise InvalidConfig."""
    with pytest.raises(InvalidConfig):
        TrainConfig(**kwargs)


def test_max_length_beyond_backbone_limit_is_refused(tiny_dataset, tiny_backbone):
    """A max length above the backbone's position embeddings is refused before training."""
    with pytest.raises(InvalidConfig, match="exceeds the backbone's limit of 128"):
        pipeline.fit(tiny_dataset, MethodConfig(), TrainConfig(max_length=512), tiny_backbone)


def test_same_seed_gives_same_metrics_and_tensors(tiny_dataset, tiny_backbone):
    """Two fits with the same seed give identical metrics and tensors; another seed gives other tensors."""
    method = MethodConfig(adapter_size=8)
    first = pipeline.fit(tiny_dataset, method, FAST, tiny_backbone)
    again = pipeline.fit(tiny_dataset, method, FAST, tiny_backbone)
    other = pipeline.fit(tiny_dataset, method, TrainConfig(epochs=2, lr=1e-2, batch_size=16, max_length=32, seed=1), tiny_backbone)
    assert (first.val, first.test) == (again.val, again.test)
    assert first.metadata["metrics"]["history"] == again.metadata["metrics"]["history"]
    assert all(torch.equal(first.tensors[k], again.tensors[k]) for k in first.tensors)
    assert not all(torch.equal(first.tensors[k], other.tensors[k]) for k in first.tensors)


@pytest.mark.parametrize("method", ["adapter", "layernorm", "top-k", "full"])
def test_shared_backbone_is_bit_identical_after_each_method(tiny_dataset, tiny_backbone, method):
    """Fitting any method leaves the shared backbone's fingerprint, modules and flags unchanged."""
    before = fingerprint(tiny_backbone.model)
    modules = dict(tiny_backbone.model.named_modules())
    result = pipeline.fit(tiny_dataset, MethodConfig(method=method, adapter_size=8), FAST, tiny_backbone)
    assert fingerprint(tiny_backbone.model) == before == tiny_backbone.info.fingerprint
    assert dict(tiny_backbone.model.named_modules()) == modules
    assert not tiny_backbone.model.training
    assert result.trainable_params == result.stored_params == sum(t.numel() for t in result.tensors.values())
    if method == "full":
        shared = tiny_backbone.model.state_dict()
        assert any(not torch.equal(t, shared[k.removeprefix("encoder.")]) for k, t in result.tensors.items() if k.startswith("encoder."))


def test_fit_reports_formula_count_and_best_epoch(tiny_dataset, tiny_backbone):
    """The adapter fit trains the formula's count, and keeps the epoch with the best validation accuracy."""
    result = pipeline.fit(tiny_dataset, MethodConfig(adapter_size=8), TrainConfig(epochs=3, lr=1e-2, batch_size=16), tiny_backbone)
    assert result.trainable_params == task_params(2, 32, 8, 2)
    history = result.metadata["metrics"]["history"]
    best = max(history, key=lambda h: (h["val_accuracy"], h["val_macro_f1"]))
    assert result.best_epoch == best["epoch"] and result.val.accuracy == best["val_accuracy"]
    assert result.test is not None and result.test.examples == 16
    assert result.metadata["train"]["lr"] == 1e-2


def test_progress_is_reported_after_every_step(tiny_dataset, tiny_backbone):
    """The callback sees every step once, with epoch, running step, total steps and a finite loss."""
    calls = []
    pipeline.fit(tiny_dataset, MethodConfig(method="layernorm"), FAST, tiny_backbone, lambda *a: calls.append(a))
    assert [c[1] for c in calls] == list(range(1, 9))
    assert {c[2] for c in calls} == {8}
    assert [c[0] for c in calls] == [1] * 4 + [2] * 4
    assert all(torch.isfinite(torch.tensor(c[3])) for c in calls)


def test_adapter_training_lowers_the_loss(tiny_dataset, tiny_backbone):
    """Training adapters on the tiny sentiment task lowers the mean training loss across epochs."""
    result = pipeline.fit(tiny_dataset, MethodConfig(adapter_size=8), TrainConfig(epochs=4, lr=1e-2, batch_size=16), tiny_backbone)
    losses = [h["train_loss"] for h in result.metadata["metrics"]["history"]]
    assert losses[-1] < losses[0]


def test_default_learning_rate_is_resolved_per_method(tiny_dataset, tiny_backbone):
    """Without --lr the method's default learning rate is used and recorded."""
    result = pipeline.fit(tiny_dataset, MethodConfig(method="layernorm"), TrainConfig(epochs=1), tiny_backbone)
    assert result.metadata["train"]["lr"] == 1e-3
