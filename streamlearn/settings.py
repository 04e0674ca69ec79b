"""One frozen settings object, read once from environment variables."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from streamlearn.errors import InvalidConfig


@dataclass(frozen=True)
class Settings:
    """Where streamlearn keeps its state and which services it talks to."""

    home: Path
    """Root of the embedded mode (`STREAMLEARN_HOME`, default `~/.streamlearn`)."""
    database_url: str
    """SQLAlchemy URL of the catalogue (`STREAMLEARN_DATABASE_URL`, default SQLite under home)."""
    broker_url: str
    """Celery broker (`STREAMLEARN_BROKER_URL`, default kombu `filesystem://` under home/queue)."""
    artifacts: Path
    """Artifact store root (`STREAMLEARN_ARTIFACTS`, default home/artifacts)."""
    backbone: str | None
    """Backbone directory (`STREAMLEARN_BACKBONE`); None means the packaged all-MiniLM-L6-v2."""
    device: str
    """`auto`, `cpu`, `cuda` or `cuda:N` (`STREAMLEARN_DEVICE`)."""
    task_time_limit: int
    """Hard time limit of one job in seconds (`STREAMLEARN_TASK_TIME_LIMIT`)."""
    heartbeat_timeout: float
    """Seconds without a heartbeat after which a running job counts as orphaned (`STREAMLEARN_HEARTBEAT_TIMEOUT`)."""
    queued_timeout: float
    """Seconds a job may stay queued unpicked before a worker re-enqueues it (`STREAMLEARN_QUEUED_TIMEOUT`)."""

    def __post_init__(self) -> None:
        if self.task_time_limit <= 0:
            raise InvalidConfig("STREAMLEARN_TASK_TIME_LIMIT must be a positive number of seconds")
        if self.heartbeat_timeout <= 0 or self.queued_timeout <= 0:
            raise InvalidConfig("STREAMLEARN_HEARTBEAT_TIMEOUT and _QUEUED_TIMEOUT must be positive")

    @property
    def queue_dir(self) -> Path:
        """Folder of the embedded filesystem broker."""
        return self.home / "queue"

    @property
    def is_embedded_broker(self) -> bool:
        """True when the broker is kombu's filesystem transport."""
        return self.broker_url.startswith("filesystem://")


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidConfig(f"{name}={raw!r} is not a number") from None


def load_settings() -> Settings:
    """Read the settings from the environment now (no caching)."""
    home = Path(os.environ.get("STREAMLEARN_HOME") or Path.home() / ".streamlearn").expanduser()
    artifacts = Path(os.environ.get("STREAMLEARN_ARTIFACTS") or home / "artifacts").expanduser()
    database_url = os.environ.get("STREAMLEARN_DATABASE_URL") or f"sqlite:///{home / 'catalogue.db'}"
    broker_url = os.environ.get("STREAMLEARN_BROKER_URL") or "filesystem://"
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=broker_url,
        artifacts=artifacts,
        backbone=os.environ.get("STREAMLEARN_BACKBONE") or None,
        device=os.environ.get("STREAMLEARN_DEVICE") or "auto",
        task_time_limit=int(_number("STREAMLEARN_TASK_TIME_LIMIT", 6 * 3600)),
        heartbeat_timeout=_number("STREAMLEARN_HEARTBEAT_TIMEOUT", 60.0),
        queued_timeout=_number("STREAMLEARN_QUEUED_TIMEOUT", 300.0),
    )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()


_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")


def mask_url(url: str) -> str:
    """Hide the password of a URL (`redis://u:secret@h` -> `redis://u:***@h`) for logs and output."""
    return _PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
