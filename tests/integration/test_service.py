"""End-to-end behaviour of the service: real worker processes, the CLI as a user runs it, tiny BERT."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from integration.service_helpers import (
    artifact_files,
    catalogue_url,
    cli_json,
    closed_port,
    deliver_again,
    deliveries,
    ended,
    job_state,
    run_cli,
    task_files,
    wait_for,
    wait_for_deliveries,
)

pytestmark = pytest.mark.integration


def _submit_and_use(env, workers, tmp_path):
    """Submit one task to a running worker, wait for success, and check tasks/storage/predict/status."""
    workers.start(env)
    submitted = cli_json(env, "submit-task", *task_files(tmp_path / "data", "tiny", seed=1), "--epochs", "3")
    assert submitted["task"] == "tiny" and submitted["status"] == "queued"
    state = wait_for(env, submitted["job_id"], ended, 90, workers, "an end")
    assert state["status"] == "succeeded", state["error"]
    assert state["worker"] and state["progress"]["step"] == state["progress"]["total_steps"] > 0

    status = cli_json(env, "status", submitted["job_id"][:8])
    assert {"job_id", "task", "status", "progress", "error", "attempts", "worker"} <= status.keys()
    assert status["status"] == "succeeded" and status["error"] is None
    assert set(status["progress"]) == {"epoch", "step", "total_steps", "loss"}

    [row] = cli_json(env, "tasks")
    assert row["task"] == "tiny" and row["status"] == "succeeded" and row["artifact_job_id"] == submitted["job_id"]
    files = artifact_files(env, "tiny")
    assert files == [f"{submitted['job_id']}.json", f"{submitted['job_id']}.safetensors"]

    storage = cli_json(env, "storage")
    assert [t["task"] for t in storage["tasks"]] == ["tiny"]
    assert storage["total_bytes"] == row["bytes"] > 0

    predicted = cli_json(env, "predict", "tiny", "good great fun", "bad awful dull")
    assert [p["label"] in ("pos", "neg") for p in predicted["predictions"]] == [True, True]

    [jobs] = cli_json(env, "jobs", "--status", "succeeded")
    assert jobs["job_id"] == submitted["job_id"] and jobs["attempts"] == 0
    return submitted


def test_embedded_submit_runs_to_success_and_read_commands_work(service_env, workers, tmp_path):
    """Embedded mode: a submitted task is trained by the worker; tasks, storage, predict and status show it."""
    _submit_and_use(service_env, workers, tmp_path)


def test_redis_postgres_submit_runs_to_success_and_read_commands_work(scale_env, workers, tmp_path):
    """Redis broker + PostgreSQL catalogue: the same path works end to end."""
    _submit_and_use(scale_env, workers, tmp_path)
    assert not (Path(scale_env["STREAMLEARN_HOME"]) / "catalogue.db").exists()


@pytest.mark.parametrize("mode", ["embedded", "redis+postgres"])
def test_worker_killed_mid_training_job_succeeds_once_on_next_worker(mode, service_env, request, workers, tmp_path):
    """SIGKILL the worker mid-training, start another: one succeeded row, one artifact, the attempt counted."""
    env = service_env if mode == "embedded" else request.getfixturevalue("scale_env")
    first = workers.start(env)
    submitted = cli_json(env, "submit-task", *task_files(tmp_path / "data", "slow", seed=5), "--epochs", "400")
    running = wait_for(env, submitted["job_id"], lambda s: s["status"] == "running" and (s["progress"]["step"] or 0) > 4,
                       90, workers, "running with progress")
    assert running["worker"].endswith(f":{first.pid}")
    workers.kill(first)
    assert job_state(env, submitted["job_id"])["status"] == "running"  # nobody noticed yet

    second = workers.start(env)
    state = wait_for(env, submitted["job_id"], ended, 180, workers, "an end")
    assert state["status"] == "succeeded", state["error"]
    assert state["worker"].endswith(f":{second.pid}")
    assert state["attempts"] >= 1
    assert artifact_files(env, "slow") == [f"{submitted['job_id']}.json", f"{submitted['job_id']}.safetensors"]

    from sqlalchemy import func, select

    from streamlearn.catalogue.models import Artifact, Job
    from streamlearn.catalogue.session import session_scope

    with session_scope(catalogue_url(env), readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "succeeded")) == 1
        assert s.scalar(select(func.count()).select_from(Artifact)) == 1
    # A late duplicate, delivered for real: the same message published again reaches the live worker,
    # which finds the job ended and changes nothing.
    handled = deliveries(tmp_path, submitted["job_id"])
    deliver_again(env, submitted["job_id"])
    wait_for_deliveries(tmp_path, submitted["job_id"], handled + 1, workers)
    after = job_state(env, submitted["job_id"])
    assert (after["status"], after["finished_at"], after["attempts"]) == ("succeeded", state["finished_at"], state["attempts"])
    assert artifact_files(env, "slow") == [f"{submitted['job_id']}.json", f"{submitted['job_id']}.safetensors"]
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    assert logs.count(f"job {submitted['job_id']}: started on {socket.gethostname()}:{second.pid} ") == 1


def test_broker_down_submit_fails_fast_and_leaves_no_queued_job(service_env, tmp_path):
    """With the broker unreachable, submit-task exits 2 within 5 s naming the URL; the job is failed, not queued."""
    url = f"redis://127.0.0.1:{closed_port()}/0"
    env = {**service_env, "STREAMLEARN_BROKER_URL": url}
    started = time.monotonic()
    result = run_cli(env, "submit-task", *task_files(tmp_path / "data", "tiny", seed=1))
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert result.stderr.startswith("error: broker ") and url in result.stderr
    jobs = cli_json(env, "jobs")
    assert [j["status"] for j in jobs] == ["failed"]
    assert "not enqueued" in jobs[0]["error"]


def test_identical_resubmit_returns_the_same_job(service_env, tmp_path):
    """Submitting the same files, name and flags again returns the first job; --force makes a new one."""
    args = ["submit-task", *task_files(tmp_path / "data", "tiny", seed=1), "--epochs", "2"]
    first = cli_json(service_env, *args)
    again = cli_json(service_env, *args)
    assert again == first
    other = cli_json(service_env, *args, "--lr", "0.01")
    forced = cli_json(service_env, *args, "--force")
    assert len({first["job_id"], other["job_id"], forced["job_id"]}) == 3
    assert len(cli_json(service_env, "jobs")) == 3


def test_evaluate_all_after_three_tasks_reports_zero_drift(service_env, workers, tmp_path):
    """After three tasks, re-evaluating every stored artifact on its test set matches the catalogue exactly."""
    workers.start(service_env)
    ids = [cli_json(service_env, "submit-task", *task_files(tmp_path / "data", f"task{i}", seed=10 * i),
                    "--epochs", "2")["job_id"] for i in range(3)]
    for job_id in ids:
        assert wait_for(service_env, job_id, ended, 120, workers, "an end")["status"] == "succeeded"
    rows = cli_json(service_env, "evaluate", "--all")
    assert [r["task"] for r in rows] == ["task0", "task1", "task2"]
    assert all(r["split"] == "test" and r["examples"] == 16 for r in rows)
    assert [r["drift"] for r in rows] == [0.0, 0.0, 0.0]
    assert [r["accuracy"] for r in rows] == [r["catalogue_accuracy"] for r in rows]
