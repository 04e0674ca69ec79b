"""The server's frozen settings, and the rule that decides whether it may start on an address."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from streamlearn.errors import InvalidConfig

TOKEN_ENV = "STREAMLEARN_API_TOKEN"
"""Environment variable holding the API token (never a flag: flags show up in `ps`)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidConfig(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class ServeConfig:
    """How `streamlearn serve` listens, batches, keeps tasks resident and limits requests."""

    host: str = "127.0.0.1"
    """Address to bind; anything but a loopback address requires STREAMLEARN_API_TOKEN."""
    port: int = 8000
    """TCP port (0: any free port)."""
    max_batch_size: int = 32
    """Most rows one batch carries through the backbone."""
    max_wait_ms: float = 5.0
    """Longest a row waits for others to fill its batch, in milliseconds."""
    memory_budget: int | None = None
    """Most bytes of per-task parts kept resident (None: no limit); least recently used go first."""
    pin: tuple[str, ...] = ()
    """Tasks loaded at start and never evicted."""
    workers: int = 1
    """Server processes, each with its own backbone and resident set."""
    backend: str = "engine"
    """`engine`: rows of different tasks share one forward; `switch`: one task at a time per batch (baseline)."""
    poll_interval: float = 1.0
    """Seconds between two reads of the catalogue's current artifacts."""
    max_body_bytes: int = field(default_factory=lambda: _env_int("STREAMLEARN_SERVE_MAX_BODY_BYTES", 1_048_576))
    """Largest JSON request body in bytes (`STREAMLEARN_SERVE_MAX_BODY_BYTES`); above it: 413."""
    max_items: int = field(default_factory=lambda: _env_int("STREAMLEARN_SERVE_MAX_ITEMS", 1024))
    """Most items (or texts) in one request (`STREAMLEARN_SERVE_MAX_ITEMS`); above it: 413."""
    max_upload_bytes: int = field(default_factory=lambda: _env_int("STREAMLEARN_SERVE_MAX_UPLOAD_BYTES", 268_435_456))
    """Largest multipart dataset upload in bytes (`STREAMLEARN_SERVE_MAX_UPLOAD_BYTES`); above it: 413."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed by CORS (`STREAMLEARN_SERVE_CORS_ORIGINS`, comma-separated); none by default."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidConfig(f"--port {self.port} is not a TCP port")
        if self.max_batch_size < 1 or self.max_wait_ms < 0 or self.workers < 1:
            raise InvalidConfig("--max-batch-size and --workers must be at least 1, --max-wait-ms at least 0")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise InvalidConfig("--memory-budget must be a positive number of bytes")
        if min(self.max_body_bytes, self.max_items, self.max_upload_bytes) < 1:
            raise InvalidConfig("STREAMLEARN_SERVE_MAX_BODY_BYTES, _MAX_ITEMS and _MAX_UPLOAD_BYTES must be positive")
        if self.backend not in ("engine", "switch"):
            raise InvalidConfig(f"backend {self.backend!r} is not one of engine, switch")


def cors_from_env() -> tuple[str, ...]:
    """The CORS origins of `STREAMLEARN_SERVE_CORS_ORIGINS` (empty: no CORS headers at all)."""
    raw = os.environ.get("STREAMLEARN_SERVE_CORS_ORIGINS", "")
    return tuple(o.strip() for o in raw.split(",") if o.strip())


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_token(host: str) -> str | None:
    """The token requests must carry, or None when none is required.

    A token set in STREAMLEARN_API_TOKEN is always enforced; binding beyond loopback without one
    is refused, because anyone who can reach the port could then read and train tasks.

    Raises:
        InvalidConfig: `host` is not a loopback address and no token is set.
    """
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise InvalidConfig(
            f"refusing to bind {host}: a non-loopback address needs an API token; set {TOKEN_ENV} "
            "(clients send 'Authorization: Bearer <token>') or bind 127.0.0.1"
        )
    return token
