"""Artifacts: exact files, round trip to identical logits, refusal of tampering and foreign backbones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from streamlearn import pipeline, predictor
from streamlearn.artifacts import ArtifactStore, read_artifact, write_artifact
from streamlearn.backbone import load_backbone
from streamlearn.errors import ArtifactCorrupt, BackboneMismatch, InvalidConfig
from streamlearn.engine.loading import loaded_from_parts, parts_from_tensors
from streamlearn.methods import MethodConfig
from streamlearn.sidecar import ArtifactMetadata
from streamlearn.training import TrainConfig

FAST = TrainConfig(epochs=1, lr=1e-2, batch_size=16, max_length=32)
TEXTS = ["the movie was good", "bad plot", "very dull and boring film", "love it"]


@pytest.fixture()
def fitted(tiny_dataset, tiny_backbone):
    """An adapter fit on the tiny task."""
    return pipeline.fit(tiny_dataset, MethodConfig(adapter_size=8), FAST, tiny_backbone)


def _in_memory_predictor(result, backbone):
    meta = ArtifactMetadata.from_sidecar(result.metadata)
    parts = parts_from_tensors(backbone, meta, result.tensors, "in memory")
    return predictor.Predictor(loaded_from_parts("tiny", parts, meta), backbone)


@pytest.mark.parametrize("method", ["adapter", "layernorm", "top-k", "full"])
def test_round_trip_gives_identical_logits_and_metrics(tmp_path, tiny_dataset, tiny_backbone, method):
    """Saved then loaded tensors give bit-identical logits and reproduce the fit's test metrics."""
    result = pipeline.fit(tiny_dataset, MethodConfig(method=method, adapter_size=8), FAST, tiny_backbone)
    info = pipeline.save(result, tmp_path / "task.safetensors")
    loaded = predictor.load_predictor(info.path, tiny_backbone)
    assert torch.equal(loaded.logits(TEXTS), _in_memory_predictor(result, tiny_backbone).logits(TEXTS))
    assert loaded.evaluate(tiny_dataset.test) == result.test
    assert [label for label, _ in loaded.predict(TEXTS)] == [
        result.metadata["labels"][i] for i in loaded.logits(TEXTS).argmax(-1).tolist()
    ]


def test_artifact_is_exactly_two_files_with_a_complete_sidecar(tmp_path, fitted):
    """Saving writes one safetensors file holding only the stored tensors and one JSON sidecar, no temp files."""
    info = pipeline.save(fitted, tmp_path / "out" / "task.safetensors")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["task.json", "task.safetensors"]
    tensors, meta = read_artifact(info.path)
    assert set(tensors) == set(fitted.tensors)
    assert meta["sha256"] == info.sha256 and meta["bytes"] == info.path.stat().st_size == info.bytes
    method = meta["method"]
    assert (method["method"], method["adapter_size"], method["sigma"], method["pooling"]) == ("adapter", 8, 0.01, "mean")
    assert meta["labels"] == ["neg", "pos"]
    assert meta["backbone"]["fingerprint"] == fitted.metadata["backbone"]["fingerprint"]
    assert meta["trainable_params"] == meta["stored_params"] == fitted.trainable_params
    assert meta["format"] == 2 and meta["dtype"] == "float32" and meta["sources"] == []
    assert meta["train"]["epochs"] == 1 and "method_config" not in meta and "adapter_size" not in meta
    assert all(set(f) == {"sha256", "key"} and f["key"] == f"datasets/{f['sha256']}.jsonl" for f in meta["data"]["files"].values())
    assert str(tmp_path) not in info.sidecar.read_text()
    header_len = int.from_bytes(info.path.read_bytes()[:8], "little")
    assert json.loads(info.path.read_bytes()[8 : 8 + header_len])["__metadata__"]["format"] == "streamlearn"


def test_artifact_from_another_backbone_is_refused(tmp_path, fitted, tiny_backbone_dir):
    """Loading on a backbone with a different fingerprint raises BackboneMismatch naming both."""
    from transformers import BertModel

    other_dir = tmp_path / "other"
    shutil.copytree(tiny_backbone_dir, other_dir)
    model = BertModel.from_pretrained(other_dir)
    with torch.no_grad():
        model.embeddings.LayerNorm.weight.add_(0.5)
    model.save_pretrained(other_dir)
    info = pipeline.save(fitted, tmp_path / "task.safetensors")
    with pytest.raises(BackboneMismatch, match="was trained on backbone"):
        predictor.load_predictor(info.path, load_backbone(str(other_dir), device="cpu"))


def test_tampered_tensor_file_is_refused(tmp_path, fitted, tiny_backbone):
    """Changing one byte of the safetensors file makes loading fail its sha256 check."""
    info = pipeline.save(fitted, tmp_path / "task.safetensors")
    blob = bytearray(info.path.read_bytes())
    blob[-3] ^= 0xFF
    info.path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactCorrupt, match="does not match the sidecar"):
        predictor.load_predictor(info.path, tiny_backbone)


def test_tampered_sidecar_is_refused(tmp_path, fitted, tiny_backbone):
    """Editing the sidecar (here, swapping the label names) is detected."""
    info = pipeline.save(fitted, tmp_path / "task.safetensors")
    meta = json.loads(info.sidecar.read_text())
    meta["labels"] = ["pos", "neg"]
    info.sidecar.write_text(json.dumps(meta))
    with pytest.raises(ArtifactCorrupt, match="sidecar content was modified"):
        predictor.load_predictor(info.path, tiny_backbone)


def test_missing_sidecar_and_unexpected_digest_are_refused(tmp_path, fitted):
    """A caller-supplied digest that differs, or a missing sidecar, raises ArtifactCorrupt."""
    info = pipeline.save(fitted, tmp_path / "task.safetensors")
    with pytest.raises(ArtifactCorrupt, match="does not match the catalogue"):
        read_artifact(info.path, expected_sha256="0" * 64)
    info.sidecar.unlink()
    with pytest.raises(ArtifactCorrupt, match="sidecar missing"):
        read_artifact(info.path)


def test_write_replaces_atomically(tmp_path):
    """Writing over an existing artifact replaces both files and leaves no temporary files."""
    path = tmp_path / "a.safetensors"
    write_artifact(path, {"x": torch.zeros(2)}, {"labels": ["a", "b"]})
    info = write_artifact(path, {"x": torch.ones(3)}, {"labels": ["a", "b"]})
    tensors, _ = read_artifact(path, expected_sha256=info.sha256)
    assert torch.equal(tensors["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors"]


def test_store_keeps_datasets_by_content_and_validates_names(tmp_path, tiny_task_files):
    """Datasets are stored once under their sha256, and task names that could escape the store are refused."""
    store = ArtifactStore(tmp_path / "store")
    sha, path = store.put_dataset(tiny_task_files["train"])
    assert path == tmp_path / "store" / "datasets" / f"{sha}.jsonl" and path.read_bytes() == tiny_task_files["train"].read_bytes()
    assert store.put_dataset(tiny_task_files["train"]) == (sha, path)
    assert store.dataset_path(sha) == path
    artifact = store.task_artifact_path("sst2", "17")
    assert artifact == tmp_path / "store" / "tasks" / "sst2" / "17.safetensors"
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(InvalidConfig):
            store.task_artifact_path(bad, "1")


def test_delete_removes_artifact_and_sidecar(tmp_path):
    """Deleting a task artifact removes both of its files."""
    store = ArtifactStore(tmp_path)
    path = store.task_artifact_path("t", "1")
    write_artifact(path, {"x": torch.zeros(1)}, {})
    store.delete_task_artifact(path)
    assert not path.exists() and not path.with_suffix(".json").exists()
