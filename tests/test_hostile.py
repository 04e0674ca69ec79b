"""Hostile names, paths and files: task names cannot leave the store, tampered artifacts are refused,
nothing is unpickled, and no password reaches the output.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamlearn.artifacts import ArtifactStore, sidecar_path
from streamlearn.cli import main
from streamlearn.errors import InvalidConfig
from streamlearn.settings import get_settings, mask_url

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "bad_data"
SECRET = "S3cr3t-pw"

HOSTILE_NAMES = ["../../etc", "..", ".", "/etc/passwd", "a/b", "a\\b", ".hidden", "-rf", "evil\nname", "", "nul\x00",
                 "t" * 129, "tâche", "a b"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n)[:20] for n in HOSTILE_NAMES])
def test_hostile_task_name_is_refused_by_submit_store_and_catalogue(tmp_path, name):
    """A name with a path separator, a leading dot or dash, '..', a control character or over the limit is refused by each layer on its own."""
    from streamlearn import jobs
    from streamlearn.catalogue import records
    from streamlearn.catalogue.session import session_scope

    with pytest.raises(InvalidConfig, match="is not allowed"):
        jobs.task_name(name, "train.jsonl")
    with pytest.raises(InvalidConfig):
        ArtifactStore(tmp_path / "store").task_artifact_path(name, "job-1")
    with pytest.raises(InvalidConfig):
        ArtifactStore(tmp_path / "store").task_artifact_path("ok", name)
    with session_scope(f"sqlite:///{tmp_path / 'c.db'}") as s, pytest.raises(InvalidConfig, match="not allowed"):
        records.create_task_and_job(s, name=name, dataset_sha256="0" * 64, method="adapter", hyperparameters={})
    assert not (tmp_path / "store").exists()


def test_task_names_over_64_characters_are_refused_at_submission():
    """Submission caps task names at 64 characters of [A-Za-z0-9._-]; 64 is accepted."""
    from streamlearn import jobs

    assert jobs.task_name("a" * 64, "x.jsonl") == "a" * 64
    with pytest.raises(InvalidConfig, match="1-64"):
        jobs.task_name("a" * 65, "x.jsonl")
    assert jobs.task_name(None, "/data/sst2.v2.jsonl.gz") == "sst2.v2"


def test_artifact_paths_are_derived_by_the_store_inside_its_root(tmp_path):
    """The store builds tasks/<task>/<job>.safetensors under its root from validated parts only."""
    store = ArtifactStore(tmp_path / "store")
    path = store.task_artifact_path("sst2", "5f0c1d9e-0000-4000-8000-000000000000")
    assert path == tmp_path / "store" / "tasks" / "sst2" / "5f0c1d9e-0000-4000-8000-000000000000.safetensors"
    assert path.resolve().is_relative_to((tmp_path / "store").resolve())
    with pytest.raises(InvalidConfig):
        store.dataset_path("../../etc/passwd")


def test_only_the_store_builds_artifact_paths():
    """No module but artifacts.py joins the store's 'tasks'/'datasets' folders, so no path comes from elsewhere."""
    offenders = []
    for path in (REPO / "streamlearn").rglob("*.py"):
        if path.name == "artifacts.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"""/\s*["'](tasks|datasets)["']""", line):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_no_pickle_anywhere_and_torch_load_is_weights_only():
    """The package, the workers and the benchmarks never import pickle, and every torch.load passes weights_only=True."""
    problems = []
    for folder in ("streamlearn", "workers", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for lineno, line in enumerate(text.splitlines(), 1):
                code = line.split("#", 1)[0]
                if re.search(r"\b(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b|\bpickle\.", code):
                    problems.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
            for call in re.finditer(r"torch\.load\(", text):
                args = text[call.end(): text.find(")", call.end()) + 1]
                if "weights_only=True" not in args:
                    problems.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
    assert problems == []


def test_messages_are_json_only():
    """Celery on both sides serialises and accepts JSON only, so a message can never carry a pickle."""
    from streamlearn.dispatch import celery_config
    from streamlearn.settings import load_settings

    conf = celery_config(load_settings())
    assert conf["task_serializer"] == "json"
    assert conf["accept_content"] == ["json"]


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}@127.0.0.1:6379/0",
    f"redis://default:{SECRET}@redis.internal:6379/2",
    f"rediss://user:{SECRET}@cache:6380/0?ssl_cert_reqs=none",
    f"postgresql+psycopg://streamlearn:{SECRET}@db:5432/streamlearn",
    f"postgresql+psycopg://streamlearn:{SECRET}@with@at@db:5432/streamlearn",
    f"postgresql+psycopg://db:5432/streamlearn?sslmode=require&password={SECRET}",
    f"could not connect to redis://u:{SECRET}@h:1/0: refused; retrying postgresql://v:{SECRET}@k/db",
])
def test_mask_url_hides_every_password(url):
    """mask_url removes the password from userinfo (even with an unescaped '@') and from a password= query."""
    masked = mask_url(url)
    assert SECRET not in masked
    assert "***" in masked


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamlearn", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_errors_never_show_a_database_or_broker_password(tmp_path, monkeypatch):
    """With password-bearing URLs of unreachable services, every command fails in one line that names the masked URL."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    base["STREAMLEARN_HOME"] = str(tmp_path / "home")
    db_env = {**base, "STREAMLEARN_DATABASE_URL": f"postgresql+psycopg://streamlearn:{SECRET}@127.0.0.1:1/streamlearn"}
    runs = [_cli(args, db_env) for args in (["jobs"], ["tasks"], ["status", "1234abcd"], ["storage"], ["db", "upgrade"])]
    broker_env = {**base, "STREAMLEARN_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:1/0", "STREAMLEARN_BROKER_TIMEOUT": "0.5"}
    runs.append(_cli(["submit-task", str(CORPUS / "good_train.jsonl")], broker_env))
    for proc in runs:
        assert proc.returncode == 2, proc.args
        assert SECRET not in proc.stdout + proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert ":***@127.0.0.1:1" in proc.stderr


@pytest.fixture()
def trained_artifact(tmp_path, tiny_backbone_dir) -> Path:
    """A real artifact of a tiny task, trained for one epoch by `streamlearn train`."""
    result = CliRunner().invoke(main, [
        "train", str(CORPUS / "good_train.jsonl"), "--validation", str(CORPUS / "good_validation.jsonl"),
        "--backbone", tiny_backbone_dir, "--epochs", "1", "--batch-size", "8", "--output", str(tmp_path / "out"),
        "--json",
    ])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["artifact"])


def _predict(artifact: Path, backbone: str):
    return CliRunner().invoke(main, ["predict", "--artifact", str(artifact), "--backbone", backbone, "a good film"])


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_artifact_file_is_refused_by_predict(trained_artifact, tiny_backbone_dir):
    """One flipped bit in the tensors makes `predict` fail with a sha256 mismatch, exit 2, one line."""
    assert _predict(trained_artifact, tiny_backbone_dir).exit_code == 0
    _flip_byte(trained_artifact, trained_artifact.stat().st_size - 3)
    result = _predict(trained_artifact, tiny_backbone_dir)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {trained_artifact}: sha256 {_sha(trained_artifact)[:12]} does not match the sidecar's "
        f"{json.loads(sidecar_path(trained_artifact).read_text())['sha256'][:12]}"
    ]


def test_tampered_sidecar_is_refused_by_predict(trained_artifact, tiny_backbone_dir):
    """Swapping the label names in the JSON sidecar is detected (the file records the sidecar's digest) and refused."""
    sidecar = sidecar_path(trained_artifact)
    meta = json.loads(sidecar.read_text())
    meta["labels"] = list(reversed(meta["labels"]))
    sidecar.write_text(json.dumps(meta))
    result = _predict(trained_artifact, tiny_backbone_dir)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {sidecar}: sidecar content was modified after the artifact was written"]


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_re_signed_tampered_artifact_is_refused_by_evaluate_against_the_catalogue(isolated_home, tiny_backbone_dir,
                                                                                  monkeypatch):
    """Editing the tensors and rewriting the sidecar's sha256 to match still fails `evaluate` and `predict TASK`: the catalogue's sha256 differs."""
    from streamlearn import pipeline

    monkeypatch.setenv("STREAMLEARN_BACKBONE", tiny_backbone_dir)
    get_settings.cache_clear()
    submitted = CliRunner().invoke(main, [
        "submit-task", str(CORPUS / "good_train.jsonl"), "--validation", str(CORPUS / "good_validation.jsonl"),
        "--test", str(CORPUS / "good_validation.jsonl"), "--name", "tamper", "--epochs", "1", "--batch-size", "8",
        "--json",
    ])
    assert submitted.exit_code == 0, submitted.output
    assert pipeline.run_task(json.loads(submitted.stdout)["job_id"]) == "succeeded"
    assert CliRunner().invoke(main, ["evaluate", "tamper", "--json"]).exit_code == 0

    (artifact,) = (isolated_home / "artifacts" / "tasks" / "tamper").glob("*.safetensors")
    _flip_byte(artifact, artifact.stat().st_size - 3)
    sidecar = sidecar_path(artifact)
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = _sha(artifact)
    sidecar.write_text(json.dumps(meta))
    mismatch = rf"error: {re.escape(str(artifact))}: sha256 [0-9a-f]{{12}} does not match the catalogue's [0-9a-f]{{12}}"
    for args in (["evaluate", "tamper"], ["predict", "tamper", "a good film"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, args
        (line,) = result.stderr.splitlines()
        assert re.fullmatch(mismatch, line), line
