"""A catalogue replaced under a live worker: the worker reopens the new file, and a job queued in it
runs to its end instead of being dropped as "no job"."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.service_helpers import cli_json, ended, task_files, wait_for

pytestmark = pytest.mark.integration


def test_job_in_a_replaced_catalogue_completes_on_the_running_worker(service_env, workers, tmp_path):
    """Delete and recreate catalogue.db while the worker runs: the next job, queued in the new file, succeeds there."""
    env = service_env
    workers.start(env)
    first = cli_json(env, "submit-task", *task_files(tmp_path / "data", "one", seed=1), "--epochs", "1")
    assert wait_for(env, first["job_id"], ended, 120, workers, "an end")["status"] == "succeeded"

    home = Path(env["STREAMLEARN_HOME"])
    for suffix in ("", "-wal", "-shm"):
        (home / f"catalogue.db{suffix}").unlink(missing_ok=True)
    second = cli_json(env, "submit-task", *task_files(tmp_path / "data", "two", seed=2), "--epochs", "1")
    state = wait_for(env, second["job_id"], ended, 120, workers, "an end in the new catalogue")
    assert state["status"] == "succeeded", state["error"]
    [row] = cli_json(env, "tasks")
    assert row["task"] == "two" and row["artifact_job_id"] == second["job_id"]
    assert "replaced or removed since it was opened; reconnecting" in workers.logs()
