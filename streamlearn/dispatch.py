"""Dispatch: put a job id on the Celery queue, and nothing else (the catalogue is the source of truth).

This is the client side of the one Celery app. It sends by task *name*, so it never imports
`workers/` or torch, and `submit-task` stays fast. The broker options live here because the worker
(`workers/app.py`) must use exactly the same ones to find the messages this module sends.

Modes:
- embedded (default): kombu's `filesystem://` transport under `$STREAMLEARN_HOME/queue`, polled every
  0.1 s. Publishing is a file write, so it cannot be "down"; it does not redeliver a message whose
  worker died, which is why crash recovery lives in the catalogue (see `streamlearn.recovery`).
- Redis (`STREAMLEARN_BROKER_URL=redis://...`): a `visibility_timeout` above the task time limit,
  or a long job would be handed to a second worker while the first still runs it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from streamlearn.errors import BrokerUnavailable, InvalidConfig
from streamlearn.settings import Settings, get_settings, mask_url

if TYPE_CHECKING:
    from celery import Celery

TRAIN_TASK = "streamlearn.train"
"""Registered name of the worker's training task (`workers/tasks.py`)."""

POLLING_INTERVAL = 0.1
"""Seconds between two looks at the embedded queue folder: ~100 ms per message round trip."""

_SCHEMES = ("filesystem://", "redis://", "rediss://", "redis+socket://", "memory://")


def queue_folders(settings: Settings) -> dict[str, str]:
    """Folders of the embedded filesystem broker, created on demand.

    `messages` is both the in and the out folder (producer and consumer share it); a consumer
    claims a message by renaming it into `processed` on the same filesystem, which is atomic, so
    two workers never both take one message. `control` holds the exchange bindings.
    """
    root = settings.queue_dir
    folders = {"messages": root / "messages", "processed": root / "processed", "control": root / "control"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {name: str(path) for name, path in folders.items()}


def transport_options(settings: Settings, *, client: bool = False) -> dict[str, Any]:
    """kombu transport options for the configured broker, shared by the client and the worker.

    Args:
        settings: where the broker is and its timeouts.
        client: True for a short-lived publisher, which also bounds socket reads so a broker that
            vanishes without closing the connection cannot hang `submit-task`.
    """
    url = settings.broker_url
    if not url.startswith(_SCHEMES):
        raise InvalidConfig(
            f"STREAMLEARN_BROKER_URL={mask_url(url)!r}: use filesystem:// (embedded) or redis://host:port/db"
        )
    if settings.is_embedded_broker:
        folders = queue_folders(settings)
        return {
            "data_folder_in": folders["messages"],
            "data_folder_out": folders["messages"],
            "processed_folder": folders["processed"],
            # Keep claimed messages in `processed` (same filesystem, so the claim is a rename);
            # workers prune old ones during reconcile.
            "store_processed": True,
            "control_folder": folders["control"],
            "polling_interval": POLLING_INTERVAL,
        }
    if url.startswith("memory://"):
        return {}
    options: dict[str, Any] = {
        # Above the task time limit: Redis hands an unacknowledged message to another worker after it.
        "visibility_timeout": settings.redis_visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": settings.unacked_restore_throttle,
        "socket_connect_timeout": settings.broker_timeout,
    }
    if client:
        options["socket_timeout"] = settings.broker_timeout
    return options


def celery_config(settings: Settings, *, client: bool = False) -> dict[str, Any]:
    """The Celery configuration common to the client and the worker."""
    # The filesystem transport takes its folders from the options; naming a host keeps kombu from
    # warning "No hostname was supplied" at every connection.
    broker_url = "filesystem://localhost//" if settings.is_embedded_broker else settings.broker_url
    # kombu's filesystem transport lets a consumer read a message file while it is still being
    # written; streamlearn.queuefile writes it whole first (see there).
    transport = {"broker_transport": "streamlearn.queuefile:Transport"} if settings.is_embedded_broker else {}
    return {
        "broker_url": broker_url,
        **transport,
        "broker_transport_options": transport_options(settings, client=client),
        "broker_connection_timeout": settings.broker_timeout,
        # Results live in the catalogue; no result backend is configured or needed.
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": settings.queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
    }


@functools.lru_cache(maxsize=8)
def _client_app(settings: Settings) -> Celery:
    from celery import Celery

    app = Celery("streamlearn-client", set_as_current=False)
    app.conf.update(celery_config(settings, client=True))
    return app


_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.3, "interval_max": 0.5}
"""One publish retry: a broker that is down makes `submit-task` fail in a few seconds, not hang."""


def enqueue(job_id: str, settings: Settings | None = None) -> None:
    """Send `job_id` to the workers by task name.

    Args:
        job_id: the catalogue id of a queued job; the message carries nothing else.
        settings: defaults to the process settings.

    Raises:
        BrokerUnavailable: the broker did not accept the message (the message names its masked URL).
    """
    settings = settings or get_settings()
    app = _client_app(settings)
    try:
        app.send_task(
            TRAIN_TASK,
            args=[job_id],
            queue=settings.queue,
            ignore_result=True,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )
    except Exception as exc:  # kombu raises OperationalError, redis-py its own, OSError for folders
        raise BrokerUnavailable(
            f"broker {mask_url(settings.broker_url)} did not accept job {job_id}: {_reason(exc)}"
        ) from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return mask_url(text.splitlines()[0])
