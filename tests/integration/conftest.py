"""Fixtures of the integration tests: real `streamlearn worker` processes, real Redis, real PostgreSQL.

Every worker is a subprocess started with `python -m streamlearn worker` and SIGKILLed in teardown.
Redis and PostgreSQL tests skip only when the service is unreachable *and* CI is not "true"; in CI
they fail instead, so a missing service can never turn into a silent skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cannot_run

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("STREAMLEARN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
"""Redis server used by the tests (a DB number is chosen per test)."""
PG_ADMIN_URL = os.environ.get("STREAMLEARN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
"""A PostgreSQL role allowed to create and drop databases."""

FAST_RECOVERY = {
    # Redis hands an unacknowledged message back after 5 s, checked every second (DESIGN.md, "Numbers").
    "STREAMLEARN_VISIBILITY_TIMEOUT": "5",
    "STREAMLEARN_UNACKED_RESTORE_INTERVAL": "1",
    "STREAMLEARN_UNACKED_RESTORE_THROTTLE": "1",
    "STREAMLEARN_PROGRESS_INTERVAL": "0.2",
    "STREAMLEARN_HEARTBEAT_TIMEOUT": "3",
    "STREAMLEARN_RECONCILE_INTERVAL": "1",
}


def _unavailable(what: str, reason: str) -> None:
    cannot_run(f"{what} unreachable ({reason}); CI starts it, see .ci/run")


@pytest.fixture()
def service_env(tmp_path: Path, tiny_backbone_dir: str) -> dict[str, str]:
    """Environment of an embedded-mode service in a fresh home, on the tiny backbone, with fast recovery."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    env.update(FAST_RECOVERY)
    env.update(
        STREAMLEARN_HOME=str(tmp_path / "home"),
        STREAMLEARN_BACKBONE=tiny_backbone_dir,
        STREAMLEARN_DEVICE="cpu",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    return env


@pytest.fixture()
def redis_db() -> Iterator[str]:
    """A Redis URL on a database number of its own, emptied after the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", f"{REDIS_URL}: {exc}")
    # DBs 8-15 are left to the tests; pick one nobody is using right now.
    for db in sorted(range(8, 16), key=lambda _: uuid.uuid4().int):
        probe = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        if probe.dbsize() == 0 and probe.set("streamlearn-test-lock", "1", nx=True, ex=600):
            break
    else:
        cannot_run("every Redis test database 8-15 is busy")
    yield f"{REDIS_URL}/{db}"
    probe.flushdb()


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL), dropped after the test."""
    import psycopg

    name = f"streamlearn_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unavailable("PostgreSQL", f"{PG_ADMIN_URL}: {str(exc).strip()}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    from streamlearn.catalogue.session import reset_engines

    reset_engines()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def scale_env(service_env: dict[str, str], redis_db: str, postgres_url: str) -> dict[str, str]:
    """Environment of the scale mode: Redis broker, PostgreSQL catalogue, a queue name of its own."""
    return {**service_env, "STREAMLEARN_BROKER_URL": redis_db, "STREAMLEARN_DATABASE_URL": postgres_url,
            "STREAMLEARN_QUEUE": f"test-{uuid.uuid4().hex[:8]}"}


class Workers:
    """Starts `streamlearn worker` subprocesses and guarantees they are killed afterwards."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen:
        """Start one worker with `env`; its output goes to a log file named after its index."""
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", "--loglevel", "INFO", *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a worker (no warm shutdown: the job dies with it) and reap it."""
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def logs(self) -> str:
        """Every worker's log, for assertion messages."""
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def close(self) -> None:
        for proc in self.procs:
            self.kill(proc)


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Factory of worker subprocesses, all SIGKILLed at teardown."""
    pool = Workers(tmp_path)
    yield pool
    pool.close()


class RedisServer:
    """A `redis-server` of one test (no persistence), which the test may restart on the same port.

    Args:
        folder: Its working folder.
        password: Require this password (`--requirepass`), or None.
    """

    def __init__(self, folder: Path, password: str | None = None) -> None:
        import shutil
        import socket

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            _unavailable("redis-server", "the binary is not installed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.password = folder, password
        self.url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start the server and wait until it answers."""
        import time

        import redis

        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server: with no persistence, every key (queued messages included) is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill and start again on the same port, empty, as a restarted machine's Redis would be."""
        self.stop()
        self.start()


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator:
    """Factory of private Redis servers (`redis_server(password=None)`), killed at teardown."""
    servers: list[RedisServer] = []

    def make(password: str | None = None) -> RedisServer:
        folder = tmp_path / f"redis-{len(servers)}"
        folder.mkdir()
        servers.append(RedisServer(folder, password))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()
