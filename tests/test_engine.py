"""The multi-task engine: mixed batches, Parallel, AdapterDrop, thread safety, half-size and format-1 artifacts."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from streamlearn.backbone import fingerprint, load_backbone
from streamlearn.engine import Engine, Item, load_task
from streamlearn.engine.loading import loaded_from_parts
from streamlearn.errors import InvalidConfig, UnknownTask
from streamlearn.methods import MethodConfig, build_parts
from streamlearn.sidecar import ArtifactMetadata

FIXTURE = Path(__file__).parent / "fixtures" / "format1"
MANIFEST = json.loads((FIXTURE / "MANIFEST.json").read_text())
TEXTS = ["the movie was good", "bad plot", "very dull and boring film it was", "love it", "a fine fun film", "sad"]


@pytest.fixture(scope="module")
def fixture_backbone():
    """The tiny BERT the format-1 fixture store was trained on."""
    return load_backbone(str(FIXTURE / "backbone"), device="cpu")


def _artifact(task: str) -> Path:
    return next((FIXTURE / "home" / "artifacts" / "tasks" / task).glob("*.safetensors"))


@pytest.fixture(scope="module")
def engine(fixture_backbone):
    """An engine with the fixture's four tasks (adapter, layernorm, top-k, full) resident."""
    eng = Engine(fixture_backbone)
    for task in MANIFEST["tasks"]:
        eng.attach(task, load_task(_artifact(task), fixture_backbone))
    return eng


def _random_task(backbone, name: str, seed: int, **method) -> object:
    """A task with random (not near-identity) parts, so that its outputs differ from the bare backbone's."""
    torch.manual_seed(seed)
    config = MethodConfig(**method)
    parts = build_parts(backbone, config, classes=3)
    with torch.no_grad():
        for p in parts.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    meta = ArtifactMetadata(method=config, labels=("a", "b", "c"), label_type="str", pair=False,
                            backbone={}, train={"max_length": 32}, stored_params=0, metrics={})
    return loaded_from_parts(name, parts, meta)


def test_format1_artifacts_give_the_logits_the_previous_release_computed(engine):
    """Each format-1 task of the fixture, loaded by this release, gives the logits release 0.1.0 recorded (1e-6)."""
    for task, logits in MANIFEST["logits"].items():
        now = torch.stack(engine.logits([Item(task, t) for t in MANIFEST["probe"]]))
        torch.testing.assert_close(now, torch.tensor(logits), atol=1e-6, rtol=0)


def test_mixed_batch_equals_single_task_runs_for_every_method(engine):
    """Rows of adapter, layernorm, top-k and full tasks mixed in one batch equal each task run alone (1e-5)."""
    tasks = list(MANIFEST["tasks"])
    alone = {t: engine.logits([Item(t, x) for x in TEXTS], batch_size=1) for t in tasks}
    items = [Item(tasks[(k + j) % len(tasks)], x) for k, x in enumerate(TEXTS) for j in range(2)]
    mixed = engine.logits(items, batch_size=5)
    assert len(mixed) == len(items)
    for item, row in zip(items, mixed):
        torch.testing.assert_close(row, alone[item.task][TEXTS.index(item.text)], atol=1e-5, rtol=0)


def test_parallel_equals_per_task_runs(engine):
    """classify() over every resident task equals each task's own logits (1e-5)."""
    out = engine.classify(TEXTS, None, list(MANIFEST["tasks"]))
    for task, logits in out.items():
        assert logits.shape == (len(TEXTS), 2)
        torch.testing.assert_close(logits, torch.stack(engine.logits([Item(task, t) for t in TEXTS])), atol=1e-5, rtol=0)


def test_drop_lower_layers_run_once_for_a_parallel_request(fixture_backbone):
    """With drop-lower 1 on a 2-layer backbone, layer 0 sees the B rows once and layer 1 K·B rows, outputs as per task."""
    eng = Engine(fixture_backbone)
    names = ["d1", "d2", "d3"]
    for seed, name in enumerate(names):
        eng.attach(name, _random_task(fixture_backbone, name, seed, adapter_size=4, drop_layers=1))
    eng.attach("ln1", _random_task(fixture_backbone, "ln1", 9, method="layernorm", drop_layers=1))
    seen: dict[int, list[int]] = {0: [], 1: []}
    hooks = [fixture_backbone.layer(i).register_forward_hook(lambda m, a, o, i=i: seen[i].append(a[0].shape[0]))
             for i in (0, 1)]
    try:
        out = eng.classify(TEXTS, None, names + ["ln1"])
    finally:
        for h in hooks:
            h.remove()
    assert seen == {0: [len(TEXTS)], 1: [4 * len(TEXTS)]}
    for name in names + ["ln1"]:
        torch.testing.assert_close(out[name], torch.stack(eng.logits([Item(name, t) for t in TEXTS])), atol=1e-5, rtol=0)
    again = eng.classify(TEXTS, None, ["d1"])
    torch.testing.assert_close(again["d1"], out["d1"], atol=1e-5, rtol=0)


def test_mixed_adapters_of_different_widths_and_depths_match_single_runs(fixture_backbone):
    """Adapters with different m and drop-lower depths mixed in one batch equal their single runs (1e-5)."""
    eng = Engine(fixture_backbone)
    specs = {"m4": {"adapter_size": 4}, "m8": {"adapter_size": 8}, "m4d1": {"adapter_size": 4, "drop_layers": 1},
             "ln": {"method": "layernorm"}, "top": {"method": "top-k", "top_k": 1}}
    for seed, (name, spec) in enumerate(specs.items()):
        eng.attach(name, _random_task(fixture_backbone, name, seed, **spec))
    items = [Item(name, t) for t in TEXTS for name in specs]
    mixed = eng.logits(items, batch_size=64)
    for item, row in zip(items, mixed):
        torch.testing.assert_close(row, eng.logits([item])[0], atol=1e-5, rtol=0)


def test_unknown_task_and_wrong_input_kind_are_errors_naming_them(engine):
    """An unknown task raises UnknownTask naming it; a text pair on a single-text task is refused."""
    with pytest.raises(UnknownTask, match="'nope'"):
        engine.logits([Item("tiny-adapter", "good"), Item("nope", "bad")])
    with pytest.raises(UnknownTask, match="'nope'"):
        engine.classify(["good"], None, ["nope"])
    with pytest.raises(InvalidConfig, match="takes a single text"):
        engine.logits([Item("tiny-adapter", "good", "bad")])


def test_backbone_is_unchanged_by_attach_mix_detach_and_concurrent_replacement(fixture_backbone):
    """Threads predicting while a task is replaced see old or new logits, never a mix; the fingerprint never moves."""
    eng = Engine(fixture_backbone)
    old, new = (_random_task(fixture_backbone, "t", s, adapter_size=4) for s in (1, 2))
    eng.attach("t", old)
    eng.attach("other", _random_task(fixture_backbone, "other", 3, method="layernorm"))
    expected = {}
    for version in (new, old):
        eng.attach("t", version)
        expected[id(version)] = torch.stack(eng.logits([Item("t", x) for x in TEXTS]))
    errors, results = [], []

    def reader() -> None:
        try:
            for _ in range(6):
                results.append(torch.stack(eng.logits([Item("t", x) for x in TEXTS] + [Item("other", "good")])[:-1]))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    for k in range(6):
        eng.attach("t", new if k % 2 == 0 else old)
    for th in threads:
        th.join()
    assert not errors and len(results) == 18
    for r in results:
        assert any(torch.allclose(r, e, atol=1e-6, rtol=0) for e in expected.values())
    eng.detach("t")
    assert set(eng.resident()) == {"other"} and eng.resident()["other"] > 0
    with pytest.raises(UnknownTask):
        eng.loaded("t")
    assert fingerprint(fixture_backbone.model) == fixture_backbone.info.fingerprint
    fixture_backbone.verify()


def _payload(path: Path) -> int:
    """Bytes of a safetensors file's tensor data (the file less its JSON header)."""
    blob = path.read_bytes()
    return len(blob) - 8 - int.from_bytes(blob[:8], "little")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_size_artifacts_are_half_the_bytes_and_evaluate_with_zero_drift(tmp_path, tiny_dataset, tiny_backbone, dtype):
    """A float16/bfloat16 artifact's tensors take half the bytes, and reloading it reproduces the recorded metrics."""
    from streamlearn import pipeline, predictor
    from streamlearn.training import TrainConfig

    results = {}
    for store in ("float32", dtype):
        cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=16, max_length=32, store_dtype=store)
        results[store] = pipeline.fit(tiny_dataset, MethodConfig(adapter_size=8), cfg, tiny_backbone)
    half = results[dtype]
    assert {str(t.dtype) for t in half.tensors.values()} == {f"torch.{dtype}"}
    nbytes = {k: sum(t.numel() * t.element_size() for t in r.tensors.values()) for k, r in results.items()}
    assert nbytes[dtype] * 2 == nbytes["float32"]
    info = pipeline.save(half, tmp_path / "half.safetensors")
    payload = {k: _payload(pipeline.save(r, tmp_path / f"{k}.safetensors").path) for k, r in results.items()}
    assert payload[dtype] * 2 == payload["float32"] == nbytes["float32"]
    loaded = predictor.load_predictor(info.path, tiny_backbone)
    assert loaded.loaded.metadata.dtype == dtype
    assert loaded.evaluate(tiny_dataset.test) == half.test
    assert fingerprint(tiny_backbone.model) == tiny_backbone.info.fingerprint


@pytest.fixture()
def old_home(tmp_path, monkeypatch):
    """A copy of the format-1 fixture store, as STREAMLEARN_HOME with its backbone."""
    from streamlearn.settings import get_settings

    root = tmp_path / "store"
    shutil.copytree(FIXTURE, root)
    monkeypatch.setenv("STREAMLEARN_HOME", str(root / "home"))
    monkeypatch.setenv("STREAMLEARN_BACKBONE", str(root / "backbone"))
    monkeypatch.setenv("STREAMLEARN_DEVICE", "cpu")
    for name in ("STREAMLEARN_DATABASE_URL", "STREAMLEARN_BROKER_URL", "STREAMLEARN_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def test_format1_store_evaluates_with_zero_drift_and_the_recorded_accuracies(old_home):
    """`evaluate --all` on a store written by release 0.1.0 gives its recorded test accuracies, drift 0."""
    from click.testing import CliRunner

    from streamlearn.cli import main

    result = CliRunner().invoke(main, ["evaluate", "--all", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["task"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(MANIFEST["tasks"])
    for task, accuracy in MANIFEST["test_accuracy"].items():
        assert rows[task]["drift"] == 0.0 and rows[task]["accuracy"] == accuracy == rows[task]["catalogue_accuracy"]


def test_python_api_predicts_mixes_and_classifies_on_a_store(old_home):
    """streamlearn.open(): predict, predict_items (mixed) and classify("all") agree with the recorded logits."""
    import streamlearn

    probe, logits = MANIFEST["probe"], MANIFEST["logits"]
    with streamlearn.open(home=old_home / "home") as sl:
        assert sl.tasks() == list(MANIFEST["tasks"])
        single = sl.predict("tiny-topk", probe[:3])
        expected = torch.softmax(torch.tensor(logits["tiny-topk"][:3]), -1)
        assert [p.task for p in single] == ["tiny-topk"] * 3
        for p, row in zip(single, expected):
            assert p.probabilities == pytest.approx({"neg": row[0].item(), "pos": row[1].item()}, abs=1e-6)
            assert p.label == max(p.probabilities, key=p.probabilities.get) and p.score == max(p.probabilities.values())
        mixed = sl.predict_items([("tiny-full", probe[0]), ("tiny-adapter", probe[1]), ("tiny-layernorm", probe[2])])
        for p, k in zip(mixed, range(3)):
            assert p.score == pytest.approx(torch.softmax(torch.tensor(logits[p.task][k]), -1).max().item(), abs=1e-6)
        table = sl.classify(probe[:2], tasks="all")
        assert len(table) == 2 and set(table[0]) == set(MANIFEST["tasks"])
        assert table[1]["tiny-full"].probabilities == pytest.approx(
            dict(zip(("neg", "pos"), torch.softmax(torch.tensor(logits["tiny-full"][1]), -1).tolist())), abs=1e-6)
        with pytest.raises(UnknownTask, match="'ghost'"):
            sl.predict("ghost", ["good"])
        with pytest.raises(InvalidConfig, match="takes a single text"):
            sl.predict("tiny-full", ["good"], pairs=["bad"])
        assert fingerprint(sl.backbone.model) == sl.backbone.info.fingerprint


def test_predict_cli_takes_several_tasks_all_and_a_mixed_input_file(old_home, tmp_path):
    """`predict A,B`, `predict all` and `--input` lines with a task field answer per task; an unknown task exits 2."""
    from click.testing import CliRunner

    from streamlearn.cli import main

    runner = CliRunner()
    two = runner.invoke(main, ["predict", "tiny-adapter,tiny-topk", "good film", "bad plot", "--json"])
    assert two.exit_code == 0, two.output
    rows = json.loads(two.stdout)["predictions"]
    assert [(r["task"], r["text"]) for r in rows] == [("tiny-adapter", "good film"), ("tiny-topk", "good film"),
                                                      ("tiny-adapter", "bad plot"), ("tiny-topk", "bad plot")]
    every = json.loads(runner.invoke(main, ["predict", "all", "good film", "--json"]).stdout)["predictions"]
    assert [r["task"] for r in every] == list(MANIFEST["tasks"])
    lines = tmp_path / "mixed.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "good fine film", "task": "tiny-full", "label": "pos"},
        {"text": "awful sad plot", "task": "tiny-layernorm"},
        {"text": "love it", "task": "tiny-full", "label": "pos"},
    ]))
    mixed = runner.invoke(main, ["predict", "--input", str(lines), "--json"])
    assert mixed.exit_code == 0, mixed.output
    out = json.loads(mixed.stdout)
    assert [r["task"] for r in out["predictions"]] == ["tiny-full", "tiny-layernorm", "tiny-full"]
    assert set(out["accuracy"]) == {"tiny-full"}
    unknown = runner.invoke(main, ["predict", "tiny-adapter,ghost", "good"])
    assert unknown.exit_code == 2 and "'ghost'" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
