"""What a worker does around its jobs: load the backbone once, and reconcile the catalogue.

Pool choice (see `streamlearn worker`): with one job at a time (the default, and what one GPU or a
small CPU wants) the worker uses Celery's `solo` pool, so the worker *is* the process that trains:
one backbone in memory, and a SIGKILL stops the job with the worker instead of leaving an orphaned
child training on. With `--concurrency N > 1` it uses `prefork`; each child loads its own backbone
in `worker_process_init`, *after* the fork, because CUDA cannot be used in a forked child once the
parent has touched it. The parent never loads the backbone.

Crash recovery lives in the catalogue (DESIGN.md): at start and then every
`STREAMLEARN_RECONCILE_INTERVAL` seconds a daemon thread in the main process re-enqueues running
jobs whose worker stopped heartbeating and queued jobs that nobody picked up. The embedded
filesystem transport never redelivers a message whose worker died, so this is what finishes them.
"""

from __future__ import annotations

import logging
import threading

from celery import signals

log = logging.getLogger(__name__)

_reconciler: threading.Thread | None = None
_stop = threading.Event()


def preload_backbone() -> None:
    """Load (and cache for this process) the configured backbone, logging what was loaded."""
    from streamlearn.backbone import resident_backbone

    try:
        info = resident_backbone().info
        log.info("backbone %s loaded (fingerprint %s, %d parameters)", info.name, info.fingerprint[:12], info.params)
    except Exception:  # a job would fail with the same error, recorded on its row
        log.exception("could not load the backbone; jobs will fail until it is fixed")


def _reconcile_forever(interval: float) -> None:
    from streamlearn import recovery

    while True:
        try:
            requeued = recovery.reconcile()
            if requeued:
                log.warning("reconcile: re-enqueued %s", ", ".join(requeued))
        except Exception as exc:  # the catalogue or broker briefly down: try again next round
            log.warning("reconcile failed, retrying in %.0f s: %s", interval, exc)
        if _stop.wait(interval):
            return


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_: object) -> None:
    """Start the reconcile thread in the worker's main process."""
    global _reconciler
    from streamlearn.settings import get_settings

    if _reconciler is None:
        _stop.clear()
        interval = get_settings().reconcile_interval
        _reconciler = threading.Thread(target=_reconcile_forever, args=(interval,), name="reconcile", daemon=True)
        _reconciler.start()


@signals.worker_process_init.connect
def _on_child_start(**_: object) -> None:
    """Load this process's backbone: each prefork child after its fork, or the solo worker itself."""
    from streamlearn.catalogue.session import reset_engines

    # A forked child inherits the parent's pooled database sockets; it must open its own.
    reset_engines(close=False)
    preload_backbone()


@signals.worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    _stop.set()
