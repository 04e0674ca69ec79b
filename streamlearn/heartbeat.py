"""The heartbeat of a running job: progress and liveness written to its catalogue row.

Training calls `Heartbeat.progress` after every step (cheap: it only keeps the numbers); a daemon
thread writes the latest numbers and a heartbeat every `STREAMLEARN_PROGRESS_INTERVAL` seconds,
also while the job evaluates or saves, when no step reports. The reconcile step of every worker
treats a job without a fresh heartbeat as orphaned (see `streamlearn.recovery`).

The write is conditional on this worker still owning the job. If another worker took it over
(this one was presumed dead) or the job was cancelled, the next `progress` call raises
`JobSuperseded` and the job is dropped here without touching its row: a cancelled job stops at the
first training step after the next heartbeat (at most `STREAMLEARN_PROGRESS_INTERVAL` later). A job that runs past the time limit raises `JobTimedOut`.
"""

from __future__ import annotations

import logging
import threading
import time

from streamlearn.errors import StreamlearnError

log = logging.getLogger(__name__)


class JobSuperseded(RuntimeError):
    """Another worker owns this job now, or it was cancelled; stop working on it and leave its row alone.

    Deliberately not a StreamlearnError: it must not fail the job.
    """

    def __init__(self, message: str, cancelled: bool = False) -> None:
        super().__init__(message)
        self.cancelled = cancelled
        """True when the job was cancelled (`streamlearn cancel`) rather than taken over."""


class JobTimedOut(StreamlearnError):
    """The job ran past `STREAMLEARN_TASK_TIME_LIMIT`."""


class Heartbeat:
    """Context manager: a thread that writes a job's progress and heartbeat while the job runs.

    Args:
        job_id: The running job.
        host: This worker's host name, recorded when the job was claimed.
        pid: This worker's process id.
        interval: Seconds between two writes.
        time_limit: Seconds the job may run before `progress` raises JobTimedOut.
    """

    def __init__(self, job_id: str, host: str, pid: int, interval: float, time_limit: float) -> None:
        self.job_id, self.host, self.pid = job_id, host, pid
        self.interval = interval
        self.deadline = time.monotonic() + time_limit
        self.time_limit = time_limit
        self._latest: tuple[int, int, int, float | None] | None = None
        self._written: tuple[int, int, int, float | None] | None = None
        self._lost = threading.Event()
        self._cancelled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval))
        if not self._lost.is_set() and self._latest != self._written:
            self._write()  # the final step's numbers

    @property
    def superseded(self) -> bool:
        """True once a write found that this worker no longer owns the job."""
        return self._lost.is_set()

    def progress(self, epoch: int, step: int, total_steps: int, loss: float) -> None:
        """Training callback (`training.Progress`): remember the numbers, check ownership and time."""
        self._latest = (epoch, step, total_steps, loss)
        self.check()

    def check(self) -> None:
        """Raise JobSuperseded or JobTimedOut when the job must stop here."""
        if self._lost.is_set():
            if self._cancelled:
                raise JobSuperseded(f"job {self.job_id} was cancelled; stopped at this step", cancelled=True)
            raise JobSuperseded(f"job {self.job_id} was taken over by another worker")
        if time.monotonic() > self.deadline:
            raise JobTimedOut(f"the job ran past the time limit of {self.time_limit:.0f} s (STREAMLEARN_TASK_TIME_LIMIT)")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()
            if self._lost.is_set():
                return

    def _write(self) -> None:
        from streamlearn.catalogue import records
        from streamlearn.catalogue.session import session_scope

        latest = self._latest
        try:
            with session_scope() as s:
                if latest is None:
                    owned = records.heartbeat(s, self.job_id, host=self.host, pid=self.pid)
                else:
                    owned = records.record_progress(s, self.job_id, *latest, host=self.host, pid=self.pid)
        except Exception as exc:  # a missed heartbeat is not fatal; the next one may get through
            log.warning("job %s: heartbeat not written: %s", self.job_id, exc)
            return
        if owned:
            self._written = latest
        else:
            self._cancelled = self._status() == "cancelled"
            log.warning("job %s: %s; dropping it", self.job_id,
                        "cancelled" if self._cancelled else "no longer running on this worker")
            self._lost.set()

    def _status(self) -> str | None:
        from sqlalchemy import select

        from streamlearn.catalogue.models import Job
        from streamlearn.catalogue.session import session_scope

        try:
            with session_scope(readonly=True) as s:
                status = s.scalar(select(Job.status).where(Job.id == self.job_id))
        except Exception:  # the catalogue is briefly down: treat it as a takeover, which also stops the job
            return None
        return None if status is None else str(status)
