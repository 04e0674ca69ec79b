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
    artifacts: Path | str
    """Artifact store (`STREAMLEARN_ARTIFACTS`, default home/artifacts): a folder (a Path), or an
    `s3://bucket/prefix` URL (a str) with endpoint and credentials from the standard AWS settings."""
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
    reconcile_interval: float = 30.0
    """Seconds between a worker's crash-recovery sweeps of the catalogue (`STREAMLEARN_RECONCILE_INTERVAL`)."""
    progress_interval: float = 2.0
    """Least seconds between two progress/heartbeat writes of a running job (`STREAMLEARN_PROGRESS_INTERVAL`)."""
    visibility_timeout: float | None = None
    """Redis redelivery delay of an unacknowledged message (`STREAMLEARN_VISIBILITY_TIMEOUT`); None means
    `task_time_limit` + 10 min, so a long job is never handed to a second worker while it runs."""
    unacked_restore_interval: float = 10.0
    """Seconds between Redis scans for expired unacknowledged messages (`STREAMLEARN_UNACKED_RESTORE_INTERVAL`)."""
    unacked_restore_throttle: int = 10
    """Run the Redis scan only every Nth interval (`STREAMLEARN_UNACKED_RESTORE_THROTTLE`)."""
    broker_timeout: float = 2.5
    """Seconds a client waits for the broker before `submit-task` fails (`STREAMLEARN_BROKER_TIMEOUT`)."""
    queue: str = "streamlearn"
    """Name of the Celery queue jobs are sent to and workers consume by default (`STREAMLEARN_QUEUE`)."""
    max_dataset_bytes: int = 1 << 30
    """Most (decompressed) bytes a dataset file may hold (`STREAMLEARN_MAX_DATASET_BYTES`; `--max-bytes`)."""
    cache_dir: Path | None = None
    """Local read-through cache of a remote store's objects (`STREAMLEARN_CACHE_DIR`); None means home/cache."""
    cache_bytes: int = 10 * 1024**3
    """Bytes the cache may hold before its least recently used entries go (`STREAMLEARN_CACHE_BYTES`, default 10 GiB)."""

    def __post_init__(self) -> None:
        if self.task_time_limit <= 0:
            raise InvalidConfig("STREAMLEARN_TASK_TIME_LIMIT must be a positive number of seconds")
        if self.heartbeat_timeout <= 0 or self.queued_timeout <= 0:
            raise InvalidConfig("STREAMLEARN_HEARTBEAT_TIMEOUT and _QUEUED_TIMEOUT must be positive")
        if min(self.reconcile_interval, self.progress_interval, self.broker_timeout) <= 0:
            raise InvalidConfig("STREAMLEARN_RECONCILE_INTERVAL, _PROGRESS_INTERVAL and _BROKER_TIMEOUT must be positive")
        if self.visibility_timeout is not None and self.visibility_timeout <= 0:
            raise InvalidConfig("STREAMLEARN_VISIBILITY_TIMEOUT must be positive")
        if self.max_dataset_bytes < 16:
            raise InvalidConfig("STREAMLEARN_MAX_DATASET_BYTES must be at least 16")
        if self.cache_bytes <= 0:
            raise InvalidConfig("STREAMLEARN_CACHE_BYTES must be a positive number of bytes")
        if self.cache_dir is None:
            object.__setattr__(self, "cache_dir", self.home / "cache")

    @property
    def redis_visibility_timeout(self) -> float:
        """The Redis visibility timeout in force: above the task time limit unless set explicitly."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return self.task_time_limit + 600.0

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
    raw_artifacts = os.environ.get("STREAMLEARN_ARTIFACTS") or str(home / "artifacts")
    # An object-store URL stays a string; a folder (or file://folder) becomes a Path as before.
    artifacts = raw_artifacts if "://" in raw_artifacts and not raw_artifacts.startswith("file://") else \
        Path(raw_artifacts.removeprefix("file://")).expanduser()
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
        reconcile_interval=_number("STREAMLEARN_RECONCILE_INTERVAL", 30.0),
        progress_interval=_number("STREAMLEARN_PROGRESS_INTERVAL", 2.0),
        visibility_timeout=_number("STREAMLEARN_VISIBILITY_TIMEOUT", 0.0) or None,
        unacked_restore_interval=_number("STREAMLEARN_UNACKED_RESTORE_INTERVAL", 10.0),
        unacked_restore_throttle=int(_number("STREAMLEARN_UNACKED_RESTORE_THROTTLE", 10)),
        broker_timeout=_number("STREAMLEARN_BROKER_TIMEOUT", 2.5),
        queue=os.environ.get("STREAMLEARN_QUEUE") or "streamlearn",
        max_dataset_bytes=int(_number("STREAMLEARN_MAX_DATASET_BYTES", 1 << 30)),
        cache_dir=Path(os.environ["STREAMLEARN_CACHE_DIR"]).expanduser() if os.environ.get("STREAMLEARN_CACHE_DIR") else None,
        cache_bytes=int(_number("STREAMLEARN_CACHE_BYTES", 10 * 1024**3)),
    )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()


# The password runs to the *last* '@' before the path, so an unescaped '@' in it is hidden too.
_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^/\s]+)@")
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:password|passwd|pwd)=)[^&\s#]+", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Hide the passwords of URLs in a text, for logs and output.

    `redis://u:secret@h` -> `redis://u:***@h`, and `postgresql://h/db?password=secret` ->
    `postgresql://h/db?password=***` (libpq and redis-py both read a password from the query).
    """
    url = _PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['key']}***", url)
