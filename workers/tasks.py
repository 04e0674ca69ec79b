"""The one Celery task: train a job by id. Thin by design: all the work is `pipeline.run_task`.

Error policy:
- a `StreamlearnError` (bad data, unknown job, backbone mismatch, ...) is the user's to fix:
  `run_task` has already marked the job failed with the message; it is not retried;
- a `TransientError` or a database `OperationalError` (the catalogue or the artifact store briefly
  unavailable) is retried with exponential backoff, and the job is failed after the last try;
- Celery's soft time limit (prefork pool) fails the job with the limit in the message.
"""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from streamlearn.dispatch import TRAIN_TASK
from streamlearn.errors import StreamlearnError, TransientError
from workers.app import app

log = logging.getLogger("streamlearn.worker")

MAX_RETRIES = 6
"""Transient failures retried this often (backoff 2, 4, ... 64 s: about two minutes in all)."""


def backoff(retries: int) -> float:
    """Seconds to wait before retry number `retries + 1`."""
    return float(min(2 ** (retries + 1), 64))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@app.task(name=TRAIN_TASK, bind=True, max_retries=MAX_RETRIES, ignore_result=True)
def train(self, job_id: str) -> None:
    """Run job `job_id` to its end (see `streamlearn.pipeline.run_task`)."""
    from streamlearn import pipeline

    try:
        status = pipeline.run_task(job_id)
        log.info("job %s: %s", job_id, status)
    except SoftTimeLimitExceeded:
        pipeline.fail_task(job_id, "the job ran past STREAMLEARN_TASK_TIME_LIMIT and was stopped")
    except Exception as exc:
        if _transient(exc):
            if self.request.retries >= self.max_retries:
                log.error("job %s: giving up after %d retries: %s", job_id, self.request.retries, exc)
                pipeline.fail_task(job_id, f"gave up after {self.request.retries} retries: {exc}")
                return
            delay = backoff(self.request.retries)
            log.warning("job %s: transient error, retry in %.0f s: %s", job_id, delay, exc)
            raise self.retry(exc=exc, countdown=delay) from exc
        if isinstance(exc, StreamlearnError):
            log.error("job %s failed: %s", job_id, exc)
            return
        raise
