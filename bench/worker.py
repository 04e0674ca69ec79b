"""A real `streamlearn worker` subprocess on a home of its own, for the service benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.tasks import REPO

SERVICE_VARS = ("STREAMLEARN_HOME", "STREAMLEARN_BACKBONE", "STREAMLEARN_DEVICE", "STREAMLEARN_BROKER_URL",
                "STREAMLEARN_QUEUE", "STREAMLEARN_DATABASE_URL", "STREAMLEARN_ARTIFACTS")


class Worker:
    """`python -m streamlearn worker` in its own process group, logging to `log_path`; `stop()` sends SIGTERM."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", "--loglevel", "INFO"], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> float:
        """Block until the worker logged Celery's `ready.`; return seconds since its start."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode}: {self.tail()}")
            if "ready." in self.log_path.read_text(errors="replace"):
                return time.perf_counter() - self.started
            time.sleep(0.05)
        raise RuntimeError(f"the worker was not ready after {timeout} s: {self.tail()}")

    def tail(self, chars: int = 2000) -> str:
        """The end of the worker's log."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM the worker's process group (SIGKILL after 30 s) and close the log."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def env_for(home: Path, backbone_dir: str | None = None, device: str | None = None, broker: str | None = None,
            queue: str | None = None) -> dict[str, str]:
    """This process's environment with the service pointed at `home` (and the given broker/queue)."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["STREAMLEARN_HOME"] = str(home)
    for key, value in (("STREAMLEARN_BACKBONE", backbone_dir), ("STREAMLEARN_DEVICE", device),
                       ("STREAMLEARN_BROKER_URL", broker), ("STREAMLEARN_QUEUE", queue)):
        if value:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@contextlib.contextmanager
def in_this_process(env: dict[str, str]):
    """Use `env`'s service settings in this process too (catalogue, broker); restore them on exit."""
    from streamlearn.catalogue.session import reset_engines
    from streamlearn.settings import get_settings

    saved = {k: os.environ.get(k) for k in SERVICE_VARS}
    for k in SERVICE_VARS:
        if k in env:
            os.environ[k] = env[k]
        else:
            os.environ.pop(k, None)
    get_settings.cache_clear()
    reset_engines()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        reset_engines()
