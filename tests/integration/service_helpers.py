"""Helpers of the integration tests: run the CLI as a user does, read the catalogue, wait for a job."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `streamlearn ARGS` in a subprocess with `env`."""
    return subprocess.run([sys.executable, "-m", "streamlearn", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def cli_json(env: dict[str, str], *args: str, timeout: float = 120):
    """Run `streamlearn ARGS --json` and parse its output (fails the test with stderr otherwise)."""
    result = run_cli(env, *args, "--json", timeout=timeout)
    assert result.returncode == 0, f"streamlearn {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)


def catalogue_url(env: dict[str, str]) -> str:
    """The catalogue URL a process with `env` uses."""
    return env.get("STREAMLEARN_DATABASE_URL") or f"sqlite:///{Path(env['STREAMLEARN_HOME']) / 'catalogue.db'}"


def job_state(env: dict[str, str], job_id: str) -> dict:
    """A job's `status --json` dict, read in-process (fast) from the catalogue of `env`."""
    from streamlearn.catalogue.queries import job_status
    from streamlearn.catalogue.session import session_scope

    with session_scope(catalogue_url(env), readonly=True) as s:
        return job_status(s, job_id)


def wait_for(env: dict[str, str], job_id: str, until: Callable[[dict], bool], timeout: float, workers,
             what: str = "the expected state") -> dict:
    """Poll a job until `until(state)` holds; fail with the workers' logs after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        state = job_state(env, job_id)
        if until(state):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} did not reach {what} in {timeout} s: {state}\n--- worker logs ---\n{workers.logs()}")
        time.sleep(0.2)


def ended(state: dict) -> bool:
    """The job succeeded or failed."""
    return state["status"] in ("succeeded", "failed")


def closed_port() -> int:
    """A local TCP port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_files(folder: Path, name: str, seed: int, train_rows: int = 64, validation_rows: int = 16) -> list[str]:
    """Write a tiny task's train/validation/test files; return the submit-task arguments for them."""
    from conftest import tiny_rows, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(folder / f"{name}.jsonl", tiny_rows(train_rows, seed=seed))
    validation = write_jsonl(folder / f"{name}.validation.jsonl", tiny_rows(validation_rows, seed=seed + 100))
    test = write_jsonl(folder / f"{name}.test.jsonl", tiny_rows(16, seed=seed + 200))
    return [str(train), "--validation", str(validation), "--test", str(test)]


def artifact_files(env: dict[str, str], task: str) -> list[str]:
    """Names of the files in a task's artifact folder (empty when it has none)."""
    root = Path(env.get("STREAMLEARN_ARTIFACTS") or Path(env["STREAMLEARN_HOME"]) / "artifacts") / "tasks" / task
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def deliver_again(env: dict[str, str], job_id: str) -> None:
    """Publish the job's message once more to the broker of `env`, exactly as `submit-task` sent it: a real duplicate."""
    code = "import sys; from streamlearn import dispatch; dispatch.enqueue(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", code, job_id], env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr


def deliveries(log_dir: Path, job_id: str) -> int:
    """How many messages of the job the workers handled to the end: each logs `job ID: <outcome>` once."""
    text = "\n".join(p.read_text(errors="replace") for p in log_dir.glob("worker-*.log"))
    return text.count(f"job {job_id}: succeeded") + text.count(f"job {job_id}: failed")


def wait_for_deliveries(log_dir: Path, job_id: str, count: int, workers, timeout: float = 60) -> None:
    """Wait until the workers have handled `count` messages of the job; fail with their logs otherwise."""
    deadline = time.monotonic() + timeout
    while deliveries(log_dir, job_id) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id}: {deliveries(log_dir, job_id)} of {count} messages handled in {timeout} s\n"
                        f"--- worker logs ---\n{workers.logs()}")
        time.sleep(0.2)
