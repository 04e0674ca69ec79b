"""Training from the cache of the frozen lower layers (AdapterDrop N): same tensors, budget, fp16, sharing."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from streamlearn import layercache, pipeline
from streamlearn.backbone import fingerprint
from streamlearn.errors import InvalidConfig
from streamlearn.layercache import CacheConfig
from streamlearn.methods import MethodConfig, build_parts
from streamlearn.training import TrainConfig

EPOCHS = 2


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Every test starts without a cache held by an earlier test of this process."""
    layercache.release()
    yield
    layercache.release()


@contextlib.contextmanager
def layer0_rows(backbone):
    """Count the rows the backbone's shared layer 0 computes inside the block."""
    seen: list[int] = []
    hook = backbone.layer(0).register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        yield seen
    finally:
        hook.remove()


def _fit(dataset, backbone, cache: CacheConfig, method: str = "adapter", lr: float = 1e-2):
    method_cfg = (MethodConfig(method="top-k", top_k=1) if method == "top-k"
                  else MethodConfig(method=method, adapter_size=8, drop_layers=1))
    cfg = TrainConfig(epochs=EPOCHS, lr=lr, batch_size=16, max_length=32)
    with layer0_rows(backbone) as seen:
        result = pipeline.fit(dataset, method_cfg, cfg, backbone, cache=cache)
    return result, sum(seen)


def _examples(dataset) -> dict[str, int]:
    return {"train": len(dataset.train), "val": len(dataset.validation), "test": len(dataset.test)}


@pytest.mark.parametrize("method", ["adapter", "layernorm", "top-k"])
def test_training_from_the_cache_gives_the_same_tensors_as_recomputing(tiny_dataset, tiny_backbone, method):
    """With the lowest layer cached, the trained tensors and metrics equal those of recomputing it every step."""
    n = _examples(tiny_dataset)
    cached, cached_rows = _fit(tiny_dataset, tiny_backbone, CacheConfig(), method)
    plain, plain_rows = _fit(tiny_dataset, tiny_backbone, CacheConfig(budget_bytes=0), method)
    assert (cached.cached_layers, plain.cached_layers) == (1, 0)
    # layer 0 ran once per train/val example for the cache (+ the uncached test pass), not every epoch
    assert cached_rows == n["train"] + n["val"] + n["test"]
    assert plain_rows == EPOCHS * (n["train"] + n["val"]) + n["test"]
    assert cached.tensors.keys() == plain.tensors.keys()
    initial = dict(zip(plain.tensors, _initial(tiny_backbone, method)))
    for name, tensor in plain.tensors.items():
        if name.endswith("attention.self.key.bias"):
            # Its gradient is zero up to rounding (the softmax over keys ignores adding q·b to every
            # score), and Adam scales that rounding noise up to steps of ~lr: compare that both stayed
            # at noise level (the learned tensors move by ~4e-2 here), not the noise itself.
            for tensors in (cached.tensors, plain.tensors):
                assert (tensors[name] - initial[name]).abs().max() < 1e-3, name
            continue
        torch.testing.assert_close(cached.tensors[name], tensor, atol=1e-5, rtol=1e-5, msg=name)
    assert any(not torch.equal(t, b) for t, b in zip(plain.tensors.values(), _initial(tiny_backbone, method)))
    assert (cached.val, cached.test, cached.best_epoch) == (plain.val, plain.test, plain.best_epoch)
    assert fingerprint(tiny_backbone.model) == tiny_backbone.info.fingerprint


def _initial(backbone, method):
    torch.manual_seed(0)
    config = (MethodConfig(method="top-k", top_k=1) if method == "top-k"
              else MethodConfig(method=method, adapter_size=8, drop_layers=1))
    return list(build_parts(backbone, config, 2).stored_tensors().values())


def test_a_cache_over_the_budget_falls_back_to_recomputing_and_logs_it_once(tiny_dataset, tiny_backbone, caplog):
    """A budget below the cache's size trains without a cache (layer 0 runs every step), says so once, same tensors."""
    budget = layercache.needed_bytes([_batches(tiny_dataset, tiny_backbone)[0]], tiny_backbone.info.hidden, "float32")
    n = _examples(tiny_dataset)
    with caplog.at_level(logging.INFO, logger="streamlearn.layercache"):
        small, rows = _fit(tiny_dataset, tiny_backbone, CacheConfig(budget_bytes=budget))  # train fits, +val not
    warnings = [r for r in caplog.records if "exceeds the budget" in r.getMessage()]
    assert len(warnings) == 1 and f"of {budget} bytes" in warnings[0].getMessage()
    assert small.cached_layers == 0
    assert rows == EPOCHS * (n["train"] + n["val"]) + n["test"]
    reference, _ = _fit(tiny_dataset, tiny_backbone, CacheConfig())
    for name, tensor in reference.tensors.items():
        torch.testing.assert_close(small.tensors[name], tensor, atol=1e-5, rtol=1e-5, msg=name)


def _batches(dataset, backbone):
    from streamlearn.batches import Batches

    index = {name: i for i, name in enumerate(dataset.labels)}
    return (Batches(dataset.train, backbone.tokenizer, index, 16, 32, shuffle=True),
            Batches(dataset.validation, backbone.tokenizer, index, 16, 32, by_length=True))


def test_the_held_cache_never_exceeds_its_budget_and_float16_halves_it(tiny_dataset, tiny_backbone):
    """The cache held for a job is at most the budget; a float16 cache is exactly half the float32 one."""
    train, val = _batches(tiny_dataset, tiny_backbone)
    torch.manual_seed(0)
    parts = build_parts(tiny_backbone, MethodConfig(adapter_size=8, drop_layers=1), 2)
    sizes = {}
    for dtype in ("float32", "float16"):
        need = layercache.needed_bytes([train, val], tiny_backbone.info.hidden, dtype)
        _, cached_train, cached_val, info = layercache.cached_training(
            tiny_backbone, parts, train, val, CacheConfig(budget_bytes=need, dtype=dtype))
        held = cached_train.cache.nbytes + cached_val.cache.nbytes
        assert info["layers"] == 1 and held == info["bytes"] == need
        sizes[dtype] = held
        _, _, _, over = layercache.cached_training(tiny_backbone, parts, train, val,
                                                   CacheConfig(budget_bytes=need - 1, dtype=dtype))
        assert over["layers"] == 0
    assert sizes["float16"] * 2 == sizes["float32"]


def test_a_float16_cache_trains_within_tolerance_of_float32(tiny_dataset, tiny_backbone):
    """States stored as float16 give tensors within 1e-2 and the same validation accuracy as the exact cache."""
    exact, _ = _fit(tiny_dataset, tiny_backbone, CacheConfig())
    half, _ = _fit(tiny_dataset, tiny_backbone, CacheConfig(dtype="float16"))
    assert half.cached_layers == 1
    for name, tensor in exact.tensors.items():
        torch.testing.assert_close(half.tensors[name], tensor, atol=1e-2, rtol=1e-2, msg=name)
    assert abs(half.val.accuracy - exact.val.accuracy) <= 1 / len(tiny_dataset.validation)


def test_trials_on_the_same_data_in_one_process_share_the_cache(tiny_dataset, tiny_backbone):
    """A second fit on the same data (another learning rate, as a sweep's trial) reuses the first's cache."""
    n = _examples(tiny_dataset)
    _fit(tiny_dataset, tiny_backbone, CacheConfig(), lr=1e-2)
    second, rows = _fit(tiny_dataset, tiny_backbone, CacheConfig(), lr=3e-3)
    assert second.cached_layers == 1
    assert rows == n["test"]  # only the uncached test pass ran layer 0


def test_cache_settings_are_validated_from_the_environment(monkeypatch):
    """Bad STREAMLEARN_LAYER_CACHE_* values are one-line errors naming the variable; defaults are 1 GiB, float32."""
    monkeypatch.delenv("STREAMLEARN_LAYER_CACHE_BYTES", raising=False)
    monkeypatch.delenv("STREAMLEARN_LAYER_CACHE_DTYPE", raising=False)
    assert CacheConfig.from_env() == CacheConfig(budget_bytes=1 << 30, dtype="float32")
    monkeypatch.setenv("STREAMLEARN_LAYER_CACHE_BYTES", "lots")
    with pytest.raises(InvalidConfig, match="STREAMLEARN_LAYER_CACHE_BYTES='lots'"):
        CacheConfig.from_env()
    monkeypatch.setenv("STREAMLEARN_LAYER_CACHE_BYTES", "1000")
    monkeypatch.setenv("STREAMLEARN_LAYER_CACHE_DTYPE", "int8")
    with pytest.raises(InvalidConfig, match="int8"):
        CacheConfig.from_env()


def test_train_cli_uses_the_cache_and_its_budget_flag_turns_it_off(isolated_home, tiny_task_files, tiny_backbone_dir, tmp_path):
    """`train --drop-lower 1 --json` reports one cached layer; `--layer-cache-bytes 0` reports none, same accuracy."""
    import json

    from click.testing import CliRunner

    from streamlearn.cli import main

    summaries = []
    for extra in ([], ["--layer-cache-bytes", "0"]):
        args = ["train", str(tiny_task_files["train"]), "--validation", str(tiny_task_files["validation"]),
                "--test", str(tiny_task_files["test"]), "--epochs", "1", "--lr", "1e-2", "--adapter-size", "8",
                "--max-length", "32", "--drop-lower", "1", "--backbone", tiny_backbone_dir,
                "--output", str(tmp_path / f"out{len(extra)}"), "--json", *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(result.stdout))
    assert [s["cached_layers"] for s in summaries] == [1, 0]
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
