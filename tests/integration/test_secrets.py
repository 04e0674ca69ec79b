"""Passwords in the broker and database URLs never reach a log line or the CLI's output.

The broker is a private `redis-server` started by the test with `--requirepass`, so the worker must
really authenticate with the password; the catalogue is the test's PostgreSQL database reached with
a password in its URL (the CI server trusts local connections, so it is sent but not checked).
"""

from __future__ import annotations

import pytest
from conftest import tiny_rows, write_jsonl

from integration.service_helpers import closed_port, ended, run_cli, wait_for

pytestmark = pytest.mark.integration

SECRET = "Pw-s3cr3t-9f2c"


def test_passwords_never_appear_in_worker_logs_or_cli_output(service_env, redis_server, postgres_url, workers,
                                                             tmp_path):
    """A worker on a password-protected Redis and a PostgreSQL URL with a password runs a job; no log line or command output contains either password."""
    db = postgres_url.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://postgres:{SECRET}@", 1)
    assert SECRET in db
    broker = redis_server(password=SECRET).url
    assert SECRET in broker
    env = {**service_env, "STREAMLEARN_BROKER_URL": broker, "STREAMLEARN_DATABASE_URL": db}
    workers.start(env)
    train = write_jsonl(tmp_path / "secret.jsonl", tiny_rows(32, seed=1))
    submitted = run_cli(env, "submit-task", str(train), "--epochs", "1", "--json")
    assert submitted.returncode == 0, submitted.stderr
    import json

    job_id = json.loads(submitted.stdout)["job_id"]
    assert wait_for(env, job_id, ended, 120, workers, "an end")["status"] == "succeeded"
    outputs = [submitted] + [run_cli(env, *args) for args in (["status", job_id], ["jobs"], ["tasks"], ["storage"],
                                                              ["db", "upgrade"])]
    assert [p.returncode for p in outputs] == [0] * len(outputs), [p.stderr for p in outputs]
    # the same commands failing (Redis gone) must not print it either
    down = {**env, "STREAMLEARN_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:{closed_port()}/0",
            "STREAMLEARN_BROKER_TIMEOUT": "0.5"}
    outputs.append(run_cli(down, "submit-task", str(train), "--name", "other", "--epochs", "1"))
    assert outputs[-1].returncode == 2
    workers.close()
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    assert "streamlearn worker: broker redis://:***@127.0.0.1" in logs
    assert "postgresql+psycopg://postgres:***@127.0.0.1" in logs
    for text in [logs] + [p.stdout + p.stderr for p in outputs]:
        assert SECRET not in text
