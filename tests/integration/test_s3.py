"""The service on a real S3-compatible store (moto's server mode, a subprocess on loopback) with no
shared folder: real worker processes, the real CLI, Redis/PostgreSQL or the embedded mode.

Faults are real events: the store is SIGKILLed and started again on its port (moto keeps its
objects in memory, so the restarted store is empty but for the bucket the test creates again, as a
store that lost its data would be); credentials are checked by moto's IAM emulation.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from s3_server import moto_server  # noqa: F401  (fixture)

from integration.service_helpers import cli_json, ended, run_cli, task_files, wait_for

pytestmark = pytest.mark.integration


def _machine(env: dict[str, str], root: Path, name: str, store: dict[str, str]) -> dict[str, str]:
    """The environment of one machine: its own home and cache, the shared catalogue, broker and bucket."""
    return {**env, **store, "STREAMLEARN_HOME": str(root / name), "STREAMLEARN_CACHE_DIR": str(root / name / "cache")}


def _artifact_rows(env: dict[str, str]) -> list[tuple[str, str, str]]:
    from sqlalchemy import select

    from integration.service_helpers import catalogue_url
    from streamlearn.catalogue.models import Artifact
    from streamlearn.catalogue.session import session_scope

    with session_scope(catalogue_url(env), readonly=True) as s:
        return [tuple(r) for r in s.execute(select(Artifact.job_id, Artifact.uri, Artifact.sha256))]


def test_s3_submit_train_predict_gc_delete_with_no_shared_folder(scale_env, moto_server, workers, tmp_path):  # noqa: F811
    """Submit on one machine, train on another, predict on a third: the files live only in the bucket; gc removes only strays; delete empties it."""
    server = moto_server()
    worker = _machine(scale_env, tmp_path, "worker-machine", server.env())
    client = _machine(scale_env, tmp_path, "client-machine", server.env())
    reader = _machine(scale_env, tmp_path, "reader-machine", server.env())
    workers.start(worker)
    job = cli_json(client, "submit-task", *task_files(tmp_path / "data", "s3task", seed=1), "--epochs", "2",
                   "--lr", "1e-2")["job_id"]
    state = wait_for(client, job, ended, 180, workers, "an end")
    assert state["status"] == "succeeded", state["error"]
    keys = server.keys()
    datasets = [k for k in keys if k.startswith("store/datasets/")]
    assert len(datasets) == 3 and all(re.fullmatch(r"store/datasets/[0-9a-f]{64}\.jsonl", k) for k in datasets)
    assert [k for k in keys if k.startswith("store/tasks/")] == [f"store/tasks/s3task/{job}.json",
                                                                  f"store/tasks/s3task/{job}.safetensors"]
    [(row_job, uri, sha)] = _artifact_rows(client)
    assert (row_job, uri) == (job, f"tasks/s3task/{job}.safetensors")
    sidecar = json.loads(server.client().get_object(Bucket="streamlearn", Key=f"store/{uri[:-12]}.json")["Body"].read())
    assert sidecar["sha256"] == sha

    predicted = cli_json(reader, "predict", "s3task", "good great fun", "bad awful boring")
    assert len(predicted["predictions"]) == 2 and {p["label"] for p in predicted["predictions"]} <= {"pos", "neg"}
    assert (tmp_path / "reader-machine" / "cache" / f"{sha}.safetensors").is_file()
    for machine in ("worker-machine", "client-machine", "reader-machine"):
        assert not (tmp_path / machine / "artifacts").exists(), f"{machine} has a local artifacts folder"

    s3 = server.client()
    s3.put_object(Bucket="streamlearn", Key="store/tasks/ghost/stray.safetensors", Body=b"x" * 100)
    s3.put_object(Bucket="streamlearn", Key="store/datasets/" + "e" * 64 + ".jsonl", Body=b"y" * 50)
    dry = cli_json(client, "gc", "--grace", "0", "--dry-run")
    assert server.keys() == sorted(keys + ["store/datasets/" + "e" * 64 + ".jsonl", "store/tasks/ghost/stray.safetensors"])
    assert [r["key"] for r in dry["removed"]] == ["datasets/" + "e" * 64 + ".jsonl", "tasks/ghost/stray.safetensors"]
    done = cli_json(client, "gc", "--grace", "0")
    assert done["bytes_freed"] == 150 and done["kept"] == 5 and server.keys() == keys

    deleted = cli_json(client, "delete", "s3task")
    assert deleted["jobs"] == 1 and len(deleted["removed"]) == 5 and server.keys() == []
    assert cli_json(client, "tasks") == []


def test_s3_store_killed_mid_job_and_restarted_job_finishes_once(service_env, moto_server, workers, tmp_path):  # noqa: F811
    """The store dies while the job trains and comes back empty: the upload is retried with backoff.

    One object per key, no partial object, one success, no retraining.
    """
    server = moto_server()
    env = {**service_env, **server.env(), "STREAMLEARN_CACHE_DIR": str(tmp_path / "cache")}
    workers.start(env)
    job = cli_json(env, "submit-task", *task_files(tmp_path / "data", "outage", seed=2, train_rows=128),
                   "--epochs", "30", "--batch-size", "16")["job_id"]
    wait_for(env, job, lambda s: s["status"] == "running" and (s["progress"]["step"] or 0) >= 1, 120, workers,
             "running")
    server.stop()
    assert job_logs_within(workers, rf"job {job}: transient error, retry in", 240), workers.logs()
    staged = tmp_path / "cache" / "staging" / "tasks" / "outage" / f"{job}.safetensors"
    assert staged.is_file(), "the trained artifact was not kept for the retry"
    server.restart()
    state = wait_for(env, job, ended, 240, workers, "an end")
    assert state["status"] == "succeeded", state["error"]
    assert server.keys("store/tasks/") == [f"store/tasks/outage/{job}.json", f"store/tasks/outage/{job}.safetensors"]
    [(row_job, uri, sha)] = _artifact_rows(env)
    blob = server.client().get_object(Bucket="streamlearn", Key=f"store/{uri}")["Body"].read()
    import hashlib

    assert row_job == job and hashlib.sha256(blob).hexdigest() == sha
    logs = workers.logs()
    assert len(re.findall(rf"job {job}: started on ", logs)) == 1, "the job trained twice"
    assert re.search(r"uploaded from its staged copy: finalising without retraining", logs)
    assert not staged.exists()


def job_logs_within(workers, pattern: str, timeout: float) -> bool:
    """True once a worker log line matches `pattern` (polled for up to `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, workers.logs()):
            return True
        time.sleep(0.3)
    return False


def test_s3_wrong_credentials_or_missing_bucket_refused_at_submit_and_worker_start(service_env, moto_server, tmp_path):  # noqa: F811
    """Bad credentials and a missing bucket stop `submit-task` and `worker` with one line each.

    Nothing is recorded, queued or stored, and the secret is never printed.
    """
    server = moto_server(auth=True)
    files = task_files(tmp_path / "data", "refused", seed=3)
    cases = {
        "wrong secret": {**server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-123"},
        "unknown key": {**server.env(), "AWS_ACCESS_KEY_ID": "AKIANOBODY", "AWS_SECRET_ACCESS_KEY": "nobody-secret-456"},
        "missing bucket": {**server.env(), "STREAMLEARN_ARTIFACTS": "s3://no-such-bucket/store"},
    }
    for what, store in cases.items():
        env = {**service_env, **store}
        result = run_cli(env, "submit-task", *files)
        assert result.returncode == 2, (what, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: object store"), (what, result.stderr)
        assert ("does not exist" in lines[0]) == (what == "missing bucket"), lines[0]
        for secret in (server.secret_key, "not-the-secret-123", "nobody-secret-456"):
            assert secret not in result.stderr + result.stdout
        started = run_cli(env, "worker", timeout=60)
        assert started.returncode == 2 and started.stderr.strip().splitlines()[-1].startswith("error: object store"), started.stderr
    home = Path(service_env["STREAMLEARN_HOME"])
    assert cli_json(service_env, "tasks") == [] and cli_json(service_env, "jobs") == []
    queued = home / "queue" / "messages"
    assert not queued.exists() or not any(queued.iterdir())
    assert server.keys() == []
