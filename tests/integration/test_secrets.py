"""Passwords in the broker and database URLs never reach a log line or the CLI's output.

The broker is a private `redis-server` started by the test with `--requirepass`, so the worker must
really authenticate with the password; the catalogue is the test's PostgreSQL database reached with
a password in its URL (the CI server trusts local connections, so it is sent but not checked).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import tiny_rows, write_jsonl
from integration.service_helpers import closed_port, ended, run_cli, wait_for

pytestmark = pytest.mark.integration

SECRET = "Pw-s3cr3t-9f2c"


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test only, requiring SECRET; its URL with the password."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")  # CI installs it (see .ci/run)
    port = closed_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", SECRET,
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_passwords_never_appear_in_worker_logs_or_cli_output(service_env, private_redis, postgres_url, workers,
                                                             tmp_path):
    """A worker on a password-protected Redis and a PostgreSQL URL with a password runs a job; no log line or command output contains either password."""
    db = postgres_url.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://postgres:{SECRET}@", 1)
    assert SECRET in db
    env = {**service_env, "STREAMLEARN_BROKER_URL": private_redis, "STREAMLEARN_DATABASE_URL": db}
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
