"""Sweeps end to end: two real worker processes share one sweep's trials, and only the winner is kept."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from integration.service_helpers import (
    artifact_files,
    catalogue_url,
    cli_json,
    ended,
    job_state,
    run_cli,
    task_files,
    wait_for,
)

pytestmark = pytest.mark.integration


def _start_workers(workers, env: dict[str, str], n: int = 2, timeout: float = 90) -> list:
    """Start `n` workers and wait until each one consumes the queue, so both can take the first trials."""
    procs = [workers.start(env) for _ in range(n)]
    deadline = time.monotonic() + timeout
    while workers.logs().count(" ready.") < n:
        if time.monotonic() > deadline:
            pytest.fail(f"workers not ready in {timeout} s:\n{workers.logs()}")
        time.sleep(0.2)
    return procs


def _catalogue_counts(env: dict[str, str]) -> tuple[int, int]:
    """(artifact rows, chosen trials) in the catalogue of `env`."""
    from streamlearn.catalogue.models import Artifact, Job
    from streamlearn.catalogue.session import session_scope

    with session_scope(catalogue_url(env), readonly=True) as s:
        return (s.scalar(select(func.count()).select_from(Artifact)),
                s.scalar(select(func.count()).select_from(Job).where(Job.chosen.is_(True))))


def _m(trial: dict) -> int:
    return trial["hyperparameters"]["method"]["adapter_size"]


@pytest.mark.parametrize("mode", ["embedded", "redis+postgres"])
def test_sweep_trials_run_on_both_workers_and_only_the_winner_remains(mode, service_env, request, workers, tmp_path):
    """Four trials spread over two workers; the best on validation is chosen, and only its artifact is left."""
    env = service_env if mode == "embedded" else request.getfixturevalue("scale_env")
    procs = _start_workers(workers, env)
    submitted = cli_json(env, "submit-task", *task_files(tmp_path / "data", "tiny", seed=1, validation_rows=32, train_rows=128),
                         "--grid", "m=4,16;lr=1e-3,1e-2", "--epochs", "4")
    assert submitted["status"] == "queued" and len(submitted["trials"]) == 4
    state = wait_for(env, submitted["job_id"], ended, 240, workers, "an end")
    assert state["status"] == "succeeded", state["error"]

    trials = cli_json(env, "status", submitted["job_id"])["trials"]
    assert {"job_id", "status", "hyperparameters", "val_accuracy", "worker", "chosen"} <= trials[0].keys()
    assert [t["status"] for t in trials] == ["succeeded"] * 4
    assert {int(t["worker"].rpartition(":")[2]) for t in trials} == {p.pid for p in procs}, workers.logs()
    [winner] = [t for t in trials if t["chosen"]]
    top = max(t["val_accuracy"] for t in trials)
    assert winner["val_accuracy"] == top
    assert _m(winner) == min(_m(t) for t in trials if t["val_accuracy"] == top)  # a tie goes to fewer bytes

    assert artifact_files(env, "tiny") == [f"{winner['job_id']}.json", f"{winner['job_id']}.safetensors"]
    assert _catalogue_counts(env) == (1, 1)
    [row] = cli_json(env, "tasks")
    assert row["artifact_job_id"] == winner["job_id"] and row["job_id"] == submitted["job_id"]
    assert cli_json(env, "storage")["total_bytes"] == row["bytes"] > 0
    table = run_cli(env, "tasks").stdout
    assert f"m={_m(winner)} lr=" in table and "ep=4" in table
    shown = run_cli(env, "status", submitted["job_id"][:8]).stdout
    assert "4/4 trials ended" in shown and "winner: trial " + winner["job_id"][:8] in shown


def test_prefer_smaller_keeps_the_smallest_adapter_end_to_end(service_env, workers, tmp_path):
    """With --prefer-smaller 0.99 every trial is within reach of the best, so the smallest m is kept."""
    _start_workers(workers, service_env)
    submitted = cli_json(service_env, "submit-task", *task_files(tmp_path / "data", "small", seed=2, validation_rows=32),
                         "--grid", "m=2,48", "--epochs", "3", "--prefer-smaller", "0.99")
    state = wait_for(service_env, submitted["job_id"], ended, 180, workers, "an end")
    assert state["status"] == "succeeded", state["error"]
    [winner] = [t for t in state["trials"] if t["chosen"]]
    assert _m(winner) == 2
    assert state["hyperparameters"]["sweep"]["prefer_smaller"] == 0.99
    [row] = cli_json(service_env, "tasks")
    assert (row["adapter_size"], row["artifact_job_id"]) == (2, winner["job_id"])
    assert artifact_files(service_env, "small") == [f"{winner['job_id']}.json", f"{winner['job_id']}.safetensors"]


def test_sigkilled_trial_is_recovered_and_the_sweep_completes(service_env, workers, tmp_path):
    """SIGKILL the worker of a running trial: the other worker re-runs it, and the sweep ends with one winner."""
    first, second = _start_workers(workers, service_env)
    submitted = cli_json(service_env, "submit-task", *task_files(tmp_path / "data", "crash", seed=3, validation_rows=32),
                         "--grid", "m=4,8", "--epochs", "150")
    running = wait_for(
        service_env, submitted["job_id"],
        lambda s: any(t["status"] == "running" and (t["progress"]["step"] or 0) > 4 for t in s["trials"]),
        120, workers, "a trial running with progress")
    victim = next(t for t in running["trials"] if t["status"] == "running" and (t["progress"]["step"] or 0) > 4)
    killed = first if victim["worker"].endswith(f":{first.pid}") else second
    survivor = second if killed is first else first
    workers.kill(killed)

    state = wait_for(service_env, submitted["job_id"], ended, 300, workers, "an end")
    assert state["status"] == "succeeded", state["error"]
    trials = {t["job_id"]: t for t in state["trials"]}
    assert [t["status"] for t in trials.values()] == ["succeeded", "succeeded"]
    assert trials[victim["job_id"]]["worker"].endswith(f":{survivor.pid}")
    assert job_state(service_env, victim["job_id"])["attempts"] >= 1
    [winner] = [t for t in trials.values() if t["chosen"]]
    assert artifact_files(service_env, "crash") == [f"{winner['job_id']}.json", f"{winner['job_id']}.safetensors"]
    assert _catalogue_counts(service_env) == (1, 1)
