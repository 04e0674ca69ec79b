"""The Celery app of the workers, built from `streamlearn.settings`.

Settings chosen for long, GPU-bound jobs (see DESIGN.md, "Modes"):
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only when its job
  ended, so a worker that dies mid-job leaves the message to be redelivered (Redis) instead of lost.
  A job can therefore run twice, which `pipeline.run_task` tolerates (it is idempotent).
- `worker_prefetch_multiplier=1`: a busy worker holds no queued job that an idle one could run.
- Time limits: the soft limit is the configured `task_time_limit`, the hard one a minute later;
  the Redis `visibility_timeout` is above both (set in `streamlearn.dispatch`). Celery enforces
  them only in the prefork pool, so `run_task` also checks its own deadline at every step.
- No result backend: the catalogue holds every result.
"""

from __future__ import annotations

import os
import socket

from celery import Celery

from streamlearn.dispatch import celery_config
from streamlearn.settings import Settings, get_settings


def node_name() -> str:
    """A Celery node name unique per process, so several workers on one host do not clash."""
    return f"streamlearn.{os.getpid()}@{socket.gethostname()}"


def create_app(settings: Settings | None = None) -> Celery:
    """Build the worker's Celery app from `settings` (default: the process settings)."""
    settings = settings or get_settings()
    app = Celery("streamlearn", set_as_current=True)
    conf = celery_config(settings)
    conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_time_limit,
        task_time_limit=settings.task_time_limit + 60,
        # The embedded filesystem transport would poll a second folder for broadcast commands;
        # remote control (and Flower's events) only make sense with a real broker.
        worker_enable_remote_control=not settings.is_embedded_broker,
        worker_send_task_events=not settings.is_embedded_broker,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        include=["workers.tasks", "workers.boot"],
    )
    app.conf.update(conf)
    return app


app = create_app()
"""The app `streamlearn worker` runs (also `celery -A workers.app worker` for Celery's own CLI)."""
