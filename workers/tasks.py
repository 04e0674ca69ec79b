"""The one Celery task: train a job by id. Thin by design: all the work is `pipeline.run_task`.

Error policy:
- a `StreamlearnError` (bad data, unknown job, backbone mismatch, ...) is the user's to fix:
  `run_task` has already marked the job failed with the message; it is not retried;
- a `TransientError` or a database `OperationalError` (the catalogue or the artifact store briefly
  unavailable) is retried with exponential backoff, and the job is failed after the last try;
- Celery's soft time limit (prefork pool) fails the job with the limit in the message;
- `BackboneChanged` (the resident backbone no longer matches its fingerprint) fails the job and
  stops the worker, which refuses every later job (see `stop_worker`);
- `UnknownJob` (the message names a job this worker's catalogue does not hold: the catalogue was
  replaced, or this worker points at another one) and `CatalogueUnusable` (the catalogue file is
  damaged or not a database) never drop the message: it is retried like a
  transient error (each try reopens a replaced SQLite file), and after the last try the message
  goes back to the queue and the worker stops, loudly, with exit code EX_CONFIG.
"""

from __future__ import annotations

import logging

from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from streamlearn.dispatch import TRAIN_TASK
from streamlearn.errors import BackboneChanged, CatalogueUnusable, StreamlearnError, TransientError, UnknownJob
from workers.app import app

log = logging.getLogger(__name__)

EX_SOFTWARE = 70
"""Exit code of a worker stopped because its resident backbone changed (sysexits' internal error)."""

EX_CONFIG = 78
"""Exit code of a worker whose catalogue does not hold the jobs it is sent (sysexits' configuration error)."""

MAX_RETRIES = 6
"""Transient failures retried this often (backoff 2, 4, ... 64 s: about two minutes in all)."""


def backoff(retries: int) -> float:
    """Seconds to wait before retry number `retries + 1`."""
    return float(min(2 ** (retries + 1), 64))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _stopping(flag: object) -> bool:
    # Celery's own test (state.maybe_shutdown): the flag holds an exit code, and 0 means "stop".
    return flag is not None and flag is not False


@app.task(name=TRAIN_TASK, bind=True, max_retries=MAX_RETRIES, ignore_result=True)
def train(self, job_id: str) -> None:
    """Run job `job_id` to its end (see `streamlearn.pipeline.run_task`)."""
    from celery.worker import state

    from streamlearn import pipeline

    if _stopping(state.should_stop) or _stopping(state.should_terminate):
        # A warm shutdown (SIGTERM) is under way, yet Celery's blocking loop (filesystem broker)
        # still hands over one more message after the current job: give it back untouched.
        log.info("job %s: worker shutting down; message returned to the queue", job_id)
        raise Reject("worker shutting down", requeue=True)
    try:
        status = pipeline.run_task(job_id)
        log.info("job %s: %s", job_id, status)
    except SoftTimeLimitExceeded:
        pipeline.fail_task(job_id, "the job ran past STREAMLEARN_TASK_TIME_LIMIT and was stopped")
    except (UnknownJob, CatalogueUnusable) as exc:
        if self.request.retries >= self.max_retries:
            log.critical("job %s: not readable in this worker's catalogue after %d tries (%s); the message goes "
                         "back to the queue and this worker stops (exit code %d): check STREAMLEARN_DATABASE_URL / "
                         "STREAMLEARN_HOME", job_id, self.request.retries, exc, EX_CONFIG)
            state.should_stop = EX_CONFIG
            raise Reject(str(exc), requeue=True) from exc
        delay = backoff(self.request.retries)
        log.error("job %s: not readable in this worker's catalogue (%s); retry in %.0f s", job_id, exc, delay)
        raise self.retry(exc=exc, countdown=delay) from exc
    except Exception as exc:
        if _transient(exc):
            if self.request.retries >= self.max_retries:
                log.error("job %s: giving up after %d retries: %s", job_id, self.request.retries, exc)
                pipeline.fail_task(job_id, f"gave up after {self.request.retries} retries: {exc}")
                return
            delay = backoff(self.request.retries)
            log.warning("job %s: transient error, retry in %.0f s: %s", job_id, delay, exc)
            raise self.retry(exc=exc, countdown=delay) from exc
        if isinstance(exc, BackboneChanged):
            stop_worker(job_id, exc)
            return
        if isinstance(exc, StreamlearnError):
            log.error("job %s failed: %s", job_id, exc)
            return
        raise


def stop_worker(job_id: str, reason: BaseException) -> None:
    """Warm-stop this worker once the current task returns, with exit code EX_SOFTWARE.

    The resident backbone changed in memory: `pipeline.run_task` already failed the job that saw it
    and refuses every later one (they stay queued for healthy workers), so the worker leaves, and a
    supervisor that restarts it gets a backbone loaded afresh from disk. In the solo pool (one job at
    a time, the default) the worker itself stops; a prefork child keeps refusing jobs instead.
    """
    from celery.worker import state

    log.critical("job %s: %s; stopping this worker (exit code %d)", job_id, reason, EX_SOFTWARE)
    state.should_stop = EX_SOFTWARE
