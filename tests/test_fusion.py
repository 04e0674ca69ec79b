"""AdapterFusion on the stream: parameter count, frozen sources, lineage, serving paths and refusals (tiny BERT)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_rows, write_jsonl
from safetensors.torch import load_file
from sqlalchemy import select

import streamlearn
from streamlearn import pipeline, retention
from streamlearn.backbone import fingerprint, load_backbone
from streamlearn.catalogue.models import FusionSource
from streamlearn.catalogue.queries import storage_report, task_table
from streamlearn.catalogue.session import session_scope
from streamlearn.cli import main
from streamlearn.data import load_dataset
from streamlearn.engine.loading import SourceRef
from streamlearn.errors import ArtifactCorrupt, SourceInUse
from streamlearn.methods import MethodConfig, parameter_count, shape_of
from streamlearn.methods.fusion import fusion_params
from streamlearn.predictor import reevaluate
from streamlearn.settings import get_settings
from streamlearn.storage import fusion_term
from streamlearn.training import TrainConfig

ADAPTER = {"method": "adapter", "adapter_size": 8, "top_k": 1, "sigma": 1e-2, "pooling": "mean", "drop_layers": 0}
TRAIN = {"epochs": 2, "lr": 1e-2, "batch_size": 16, "max_length": 32, "seed": 0, "warmup": 0.1,
         "weight_decay": 0.0, "max_grad_norm": 1.0, "store_dtype": "float32"}
TEXTS = ["the movie was good", "bad plot", "very dull and boring film it was", "love it", "sad"]


@pytest.fixture()
def service(isolated_home, tiny_backbone_dir, monkeypatch):
    """An embedded service home on the tiny backbone."""
    monkeypatch.setenv("STREAMLEARN_BACKBONE", tiny_backbone_dir)
    get_settings.cache_clear()
    return isolated_home


def _files(root: Path, name: str, seed: int) -> dict[str, Path]:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    return {split: write_jsonl(folder / f"{split}.jsonl", tiny_rows(n, seed + i))
            for i, (split, n) in enumerate((("train", 48), ("validation", 16), ("test", 16)))}


def _run(files: dict, name: str, force: bool = False, seed: int = 0, **method) -> str:
    from streamlearn.submission import SubmitRequest, submit

    job = submit(SubmitRequest(files["train"], name=name, validation=files["validation"], test=files["test"],
                               method={**ADAPTER, **method}, train_config={**TRAIN, "seed": seed}, force=force)).job_id
    assert pipeline.run_task(job) == "succeeded"
    return job


def _stream(tmp_path: Path, **fusion) -> dict[str, str]:
    """Adapter tasks alpha and beta, then gamma fused over both (`--fuse-from all`)."""
    return {"alpha": _run(_files(tmp_path, "alpha", 10), "alpha"), "beta": _run(_files(tmp_path, "beta", 20), "beta"),
            "gamma": _run(_files(tmp_path, "gamma", 30), "gamma", method="fusion", **fusion)}


def _artifact(home: Path, task: str, job: str) -> Path:
    return home / "artifacts" / "tasks" / task / f"{job}.safetensors"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _probabilities(home: Path, task: str) -> list[tuple[str, float]]:
    with streamlearn.open(home) as sl:
        return [(p.label, p.score) for p in sl.predict(task, TEXTS)]


def test_fusion_parameter_count_equals_its_formula_for_full_and_low_rank(tiny_backbone, tiny_task_files, tmp_path):
    """The stored tensors of a full and a rank-4 fused task number exactly the registry's formula, fusion term apart."""
    dataset = load_dataset(tiny_task_files["train"], tiny_task_files["validation"], tiny_task_files["test"])
    cfg = TrainConfig(**{**TRAIN, "epochs": 1})
    source = pipeline.fit(dataset, MethodConfig(adapter_size=8), cfg, tiny_backbone)
    info = pipeline.save(source, tmp_path / "src-adapter.safetensors")
    refs = [SourceRef("src", info.sha256, info.path.name)]
    shape = shape_of(tiny_backbone, classes=2)
    L, d = tiny_backbone.info.layers, tiny_backbone.info.hidden
    for rank, per_site in ((0, 3 * d * d + 2 * d), (4, 6 * d * 4 + 2 * d)):
        config = MethodConfig(method="fusion", adapter_size=8, fusion_rank=rank)
        result = pipeline.fit(dataset, config, cfg, tiny_backbone, sources=refs, locate=tmp_path.joinpath, name="f")
        stored = load_file(pipeline.save(result, tmp_path / f"f{rank}-fusion.safetensors").path)
        fusion = sum(t.numel() for name, t in stored.items() if ".fusion." in name)
        assert sum(t.numel() for t in stored.values()) == parameter_count(config, shape) == result.stored_params
        assert fusion == fusion_params(config, shape) == 2 * L * per_site == fusion_term(L, d, rank)
        assert parameter_count(config, shape) - fusion == parameter_count(MethodConfig(adapter_size=8), shape)


@pytest.mark.parametrize("rank", [0, 8])
def test_the_fusion_layer_computes_the_papers_formula_applying_key_and_value_to_every_source(rank):
    """The layer folds K and V through the sum (cheaper); the result must be the per-source formula."""
    from streamlearn.engine.fusion import FusionLayer

    torch.manual_seed(0)
    layer = FusionLayer(32, rank)
    for p in layer.parameters():  # away from the initial identity, so that K and V matter
        p.data.normal_(0, 0.1)
    hidden, ups = torch.randn(3, 5, 32), torch.randn(3, 5, 4, 32)
    with torch.no_grad():
        expected, attention = layer.forward_per_source(hidden, ups)
        out, got = layer(hidden, ups)
    assert torch.allclose(got, attention, atol=1e-5) and torch.allclose(out, expected, atol=1e-5)
    assert attention.std() > 0.02  # the sources are weighted unequally: the scores matter


def test_stage_one_is_the_adapter_method_and_stage_two_leaves_the_own_adapter_unchanged(tiny_backbone, tiny_task_files,
                                                                                        tmp_path):
    """A fused task's adapter, LayerNorm tensors and stage-1 metrics equal an adapter run's with the same seed, bit for bit."""
    dataset = load_dataset(tiny_task_files["train"], tiny_task_files["validation"], tiny_task_files["test"])
    cfg = TrainConfig(**TRAIN)
    plain = pipeline.fit(dataset, MethodConfig(adapter_size=8), cfg, tiny_backbone)
    info = pipeline.save(plain, tmp_path / "src-adapter.safetensors")
    fused = pipeline.fit(dataset, MethodConfig(method="fusion", adapter_size=8), cfg, tiny_backbone,
                         sources=[SourceRef("src", info.sha256, info.path.name)], locate=tmp_path.joinpath)
    for name, tensor in plain.tensors.items():
        if not name.startswith("head."):
            assert torch.equal(fused.tensors[name], tensor), name
    assert fused.metadata["fusion"]["stage1"]["val"] == plain.metadata["metrics"]["val"]
    assert fused.metadata["fusion"]["stage1"]["test"] == plain.metadata["metrics"]["test"]


def test_a_fusion_job_leaves_the_sources_tensors_and_the_backbone_bit_identical(service, tmp_path, tiny_backbone_dir):
    """After the fused job the source artifacts hold the same bytes and tensors, the backbone its fingerprint, and drift is 0."""
    alpha = _run(_files(tmp_path, "alpha", 10), "alpha")
    beta = _run(_files(tmp_path, "beta", 20), "beta")
    paths = {t: _artifact(service, t, j) for t, j in (("alpha", alpha), ("beta", beta))}
    before = {t: (_sha(p), load_file(p)) for t, p in paths.items()}
    backbone = load_backbone(tiny_backbone_dir, device="cpu")
    tensors = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    gamma = _run(_files(tmp_path, "gamma", 30), "gamma", method="fusion")
    for task, path in paths.items():
        assert _sha(path) == before[task][0]
        after = load_file(path)
        assert after.keys() == before[task][1].keys()
        assert all(torch.equal(after[k], before[task][1][k]) for k in after)
    assert fingerprint(backbone.model) == backbone.info.fingerprint
    assert all(torch.equal(v, tensors[k]) for k, v in backbone.model.state_dict().items())
    sidecar = json.loads(_artifact(service, "gamma", gamma).with_suffix(".json").read_text())
    assert [(s["task"], s["sha256"]) for s in sidecar["sources"]] == [(t, before[t][0]) for t in ("alpha", "beta")]
    assert {r["task"]: r["drift"] for r in reevaluate()} == {"alpha": 0.0, "beta": 0.0, "gamma": 0.0}


def test_a_fused_task_predicts_identically_through_predict_the_python_api_and_a_mixed_batch(service, tmp_path):
    """`predict`, `streamlearn.open().predict` and a batch mixing the fused task's rows with its sources' agree."""
    _stream(tmp_path)
    api = _probabilities(service, "gamma")
    result = CliRunner().invoke(main, ["predict", "gamma", *TEXTS, "--json"])
    assert result.exit_code == 0, result.output
    cli = [(r["label"], r["probability"]) for r in json.loads(result.output)["predictions"]]
    assert cli == [(label, round(p, 6)) for label, p in api]
    with streamlearn.open(service) as sl:
        mixed = sl.predict_items([(task, text) for text in TEXTS for task in ("alpha", "gamma", "beta")])
    fused = [p for p in mixed if p.task == "gamma"]
    assert [p.label for p in fused] == [label for label, _ in api]
    assert all(abs(p.score - score) < 1e-6 for p, (_, score) in zip(fused, api))


def test_tasks_json_and_the_fusion_command_show_the_sources_and_the_attention(service, tmp_path):
    """`tasks --json` lists a fused task's sources, and `fusion TASK --plot` draws its attention as a PNG."""
    _stream(tmp_path)
    runner = CliRunner()
    rows = json.loads(runner.invoke(main, ["tasks", "--json"]).output)
    assert {r["task"]: r["sources"] for r in rows} == {"alpha": [], "beta": [], "gamma": ["alpha", "beta"]}
    plot = tmp_path / "gamma.png"
    result = runner.invoke(main, ["fusion", "gamma", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["attention"]["sources"] == ["self", "alpha", "beta"]
    assert len(report["attention"]["sites"]) == 4
    assert all(abs(sum(row) - 1) < 1e-5 for row in report["attention"]["mean"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fusion_top_keeps_the_sources_with_the_largest_attention_and_stores_only_those(service, tmp_path):
    """With --fusion-top 1 the artifact, the catalogue rows and the attention name one source, the other pruned."""
    jobs = _stream(tmp_path, fusion_top=1)
    sidecar = json.loads(_artifact(service, "gamma", jobs["gamma"]).with_suffix(".json").read_text())
    before = sidecar["fusion"]["attention_all"]
    means = {s: sum(row[j] for row in before["mean"]) for j, s in enumerate(before["sources"]) if s != "self"}
    best = max(means, key=means.get)
    assert [s["task"] for s in sidecar["sources"]] == [best]
    assert sidecar["fusion"]["pruned"] == [t for t in ("alpha", "beta") if t != best]
    assert sidecar["fusion"]["attention"]["sources"] == ["self", best]
    with session_scope(readonly=True) as s:
        assert len(s.scalars(select(FusionSource)).all()) == 1
    assert {r["task"]: r["drift"] for r in reevaluate("gamma")} == {"gamma": 0.0}


def test_a_forced_retrain_of_a_source_keeps_the_fused_task_predictions_unchanged(service, tmp_path):
    """Retraining alpha with --force gives alpha a new artifact; gamma keeps the old one, predicts the same, and gc keeps it."""
    jobs = _stream(tmp_path)
    before = _probabilities(service, "gamma")
    old = _artifact(service, "alpha", jobs["alpha"])
    new = _run(_files(tmp_path, "alpha", 10), "alpha", force=True, seed=1)
    assert _sha(_artifact(service, "alpha", new)) != _sha(old)
    assert _probabilities(service, "gamma") == before
    assert retention.gc(grace=0)["removed"] == []
    assert old.exists() and _probabilities(service, "gamma") == before
    with session_scope(readonly=True) as s:
        report = storage_report(s)
        rows = {r["task"]: r for r in task_table(s)}
    alpha = next(t for t in report["tasks"] if t["task"] == "alpha")
    assert alpha["artifacts"] == 2 and alpha["bytes"] == old.stat().st_size + _artifact(service, "alpha", new).stat().st_size
    assert report["total_bytes"] == sum(t["bytes"] for t in report["tasks"])  # the old source counted once, by alpha
    assert rows["alpha"]["sha256"] == _sha(_artifact(service, "alpha", new))


def test_deleting_a_source_that_a_fused_task_uses_is_refused_naming_it(service, tmp_path):
    """`delete alpha` fails with a message naming gamma and removes nothing; deleting gamma first then frees alpha."""
    jobs = _stream(tmp_path)
    result = CliRunner().invoke(main, ["delete", "alpha"])
    assert result.exit_code == 2 and "fusion source of gamma" in result.output
    with pytest.raises(SourceInUse, match="gamma"):
        retention.delete_task("beta")
    assert _artifact(service, "alpha", jobs["alpha"]).exists()
    assert retention.delete_task("gamma")["task"] == "gamma"
    assert retention.delete_task("alpha")["task"] == "alpha"
    with session_scope(readonly=True) as s:
        assert s.scalars(select(FusionSource)).all() == []


def test_a_tampered_source_fails_the_fused_task_load_clearly_while_other_tasks_keep_working(service, tmp_path):
    """Changing alpha's artifact bytes makes loading gamma fail naming alpha and the sha256, while beta still predicts."""
    jobs = _stream(tmp_path)
    path = _artifact(service, "alpha", jobs["alpha"])
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with streamlearn.open(service) as sl:
        with pytest.raises(ArtifactCorrupt, match=r"fused task 'gamma' cannot load its source 'alpha'.*sha256"):
            sl.predict("gamma", TEXTS)
        assert len(sl.predict("beta", TEXTS)) == len(TEXTS)
    result = CliRunner().invoke(main, ["predict", "gamma", "good"])
    assert result.exit_code == 2 and "source 'alpha'" in result.output


def test_the_server_answers_a_fused_task_as_the_python_api_does(service, tmp_path):
    """`POST /v1/predict` with the fused task's and its sources' rows in one request gives the API's labels and scores."""
    pytest.importorskip("fastapi", reason="`streamlearn serve` needs fastapi")
    from fastapi.testclient import TestClient

    from streamlearn.serve.app import create_app
    from streamlearn.serve.config import ServeConfig

    _stream(tmp_path)
    api = _probabilities(service, "gamma")
    items = [{"task": task, "text": text} for text in TEXTS for task in ("gamma", "alpha")]
    with TestClient(create_app(ServeConfig(), None)) as client:
        answer = client.post("/v1/predict", json={"items": items})
        assert answer.status_code == 200, answer.text
        rows = client.get("/v1/tasks").json()
    fused = [r for r in answer.json()["results"] if r["task"] == "gamma"]
    assert [r["label"] for r in fused] == [label for label, _ in api]
    assert all(abs(r["score"] - score) < 1e-6 for r, (_, score) in zip(fused, api))
    assert next(r for r in rows if r["task"] == "gamma")["sources"] == ["alpha", "beta"]


def test_the_server_reports_a_fused_tasks_attention_as_the_fusion_command_does(service, tmp_path):
    """`GET /v1/tasks/{task}/fusion` answers `fusion TASK --json`'s object; a non-fused task is a 422, an unknown one a 404."""
    from fastapi.testclient import TestClient

    from streamlearn.serve.app import create_app
    from streamlearn.serve.config import ServeConfig

    _stream(tmp_path)
    with TestClient(create_app(ServeConfig(), None)) as client:
        fused, plain, unknown = (client.get(f"/v1/tasks/{t}/fusion") for t in ("gamma", "alpha", "nope"))
    cli = json.loads(CliRunner().invoke(main, ["fusion", "gamma", "--json"]).output)
    assert fused.status_code == 200 and fused.json() == cli and cli["attention"]["sources"] == ["self", "alpha", "beta"]
    assert plain.status_code == 422 and plain.json() == {"error": "task 'alpha' was trained with --method adapter, not --method fusion"}
    assert unknown.status_code == 404 and unknown.json() == {"error": "no task 'nope' in the catalogue"}


def test_the_server_refuses_a_fused_task_with_a_tampered_source_and_serves_the_others(service, tmp_path):
    """With beta's artifact changed, a fresh server answers 503 naming beta for gamma and still answers alpha."""
    pytest.importorskip("fastapi", reason="`streamlearn serve` needs fastapi")
    from fastapi.testclient import TestClient

    from streamlearn.serve.app import create_app
    from streamlearn.serve.config import ServeConfig

    jobs = _stream(tmp_path)
    path = _artifact(service, "beta", jobs["beta"])
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    with TestClient(create_app(ServeConfig(), None)) as client:
        refused = client.post("/v1/predict", json={"items": [{"task": "gamma", "text": "good"}]})
        served = client.post("/v1/predict", json={"items": [{"task": "alpha", "text": "good"}]})
    assert refused.status_code == 503 and "source 'beta'" in refused.json()["error"]
    assert served.status_code == 200 and served.json()["results"][0]["task"] == "alpha"


def test_train_fuses_the_adapter_artifacts_of_its_output_folder(tiny_backbone_dir, tmp_path):
    """`train --method fusion` (no catalogue) fuses every NAME-adapter.safetensors of --output, recording them by sha256."""
    out = tmp_path / "artifacts"
    common = ["--backbone", tiny_backbone_dir, "--output", str(out), "--epochs", "1", "--lr", "1e-2",
              "--adapter-size", "4", "--max-length", "32", "--json"]
    runner = CliRunner()
    for name, seed in (("alpha", 10), ("beta", 20)):
        files = _files(tmp_path, name, seed)
        assert runner.invoke(main, ["train", str(files["train"]), *common]).exit_code == 0
    files = _files(tmp_path, "gamma", 30)
    result = runner.invoke(main, ["train", str(files["train"]), "--method", "fusion", "--fusion-rank", "2", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sources"] == ["alpha", "beta"]
    sidecar = json.loads((out / "gamma-fusion.json").read_text())
    assert [(s["task"], s["sha256"]) for s in sidecar["sources"]] == [
        (n, _sha(out / f"{n}-adapter.safetensors")) for n in ("alpha", "beta")]
    predicted = runner.invoke(main, ["predict", "--artifact", str(out / "gamma-fusion.safetensors"), "--backbone",
                                     tiny_backbone_dir, "good", "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.output)["predictions"]) == 1


def test_status_shows_both_stages_of_a_fusion_job(service, tmp_path):
    """A finished fusion job's progress counts both stages' steps and says it ended in stage 2 of 2."""
    jobs = _stream(tmp_path)
    result = CliRunner().invoke(main, ["status", jobs["gamma"], "--json"])
    progress = json.loads(result.output)["progress"]
    assert progress["stage"] == 2 and progress["stages"] == 2 and progress["epoch"] == 2 * TRAIN["epochs"]
    assert progress["step"] == progress["total_steps"] == 2 * TRAIN["epochs"] * 3  # 48 examples, batches of 16
    assert "stage 2/2 (fusion)" in CliRunner().invoke(main, ["status", jobs["gamma"]]).output


def test_storage_counts_the_fusion_layers_as_their_own_term(service, tmp_path):
    """`storage --json` gives the fused task the law's adapter bytes plus its fusion term, which equals its measured tensors."""
    jobs = _stream(tmp_path, fusion_rank=4)
    report = json.loads(CliRunner().invoke(main, ["storage", "--json"]).output)
    rows = {t["task"]: t for t in report["tasks"]}
    stored = load_file(_artifact(service, "gamma", jobs["gamma"]))
    fusion_bytes = 4 * sum(t.numel() for name, t in stored.items() if ".fusion." in name)
    assert rows["gamma"]["fusion_task_bytes"] == fusion_bytes == 4 * fusion_term(2, 32, 4)
    assert rows["gamma"]["theoretical_task_bytes"] == 4 * sum(t.numel() for t in stored.values())
    assert rows["alpha"]["fusion_task_bytes"] == 0 and report["fusion_total_bytes"] == fusion_bytes
    assert "fusion layers" in CliRunner().invoke(main, ["storage"]).output


def test_submit_refuses_a_named_source_that_can_never_be_one_and_records_nothing(service, tmp_path):
    """`--fuse-from` naming an unknown task, a layernorm task, a fused task or the task itself exits 2 at submit with
    one line, storing and recording nothing; a source still queued passes, and a name in another case is that task."""
    from streamlearn.submission import SubmitRequest, submit

    _run(_files(tmp_path, "alpha", 10), "alpha")
    _run(_files(tmp_path, "norms", 40), "norms", method="layernorm")
    _run(_files(tmp_path, "gamma", 30), "gamma", method="fusion")
    before = sorted(p for p in (service / "artifacts").rglob("*") if p.is_file())
    delta = _files(tmp_path, "delta", 50)
    submit_delta = ["submit-task", str(delta["train"]), "--name", "delta", "--validation", str(delta["validation"]),
                    "--method", "fusion", "--adapter-size", "8", "--fuse-from"]
    for fuse_from, says in (("nosuch", "error: fusion source 'nosuch' of task 'delta' is not in the catalogue"),
                            ("alpha,norms", "error: fusion source 'norms' of task 'delta' is no adapter task"),
                            ("gamma", "error: fusion source 'gamma' of task 'delta' is no adapter task"),
                            ("alpha,Delta", "error: task 'delta' cannot fuse itself")):
        result = CliRunner().invoke(main, submit_delta + [fuse_from])
        assert result.exit_code == 2 and says in result.output and result.output.count("\n") == 1, result.output
    with session_scope(readonly=True) as s:
        assert [r["task"] for r in task_table(s)] == ["alpha", "norms", "gamma"]
    assert sorted(p for p in (service / "artifacts").rglob("*") if p.is_file()) == before

    beta = _files(tmp_path, "beta", 20)
    queued = submit(SubmitRequest(beta["train"], name="beta", validation=beta["validation"], method=ADAPTER,
                                  train_config=TRAIN)).job_id
    fused = submit(SubmitRequest(delta["train"], name="delta", validation=delta["validation"], train_config=TRAIN,
                                 method={**ADAPTER, "method": "fusion", "fuse_from": "ALPHA,Beta,alpha"})).job_id
    assert pipeline.run_task(queued) == "succeeded" and pipeline.run_task(fused) == "succeeded"
    rows = json.loads(CliRunner().invoke(main, ["tasks", "--json"]).output)
    assert {r["task"]: r["sources"] for r in rows}["delta"] == ["alpha", "beta"]
