"""Which tasks' parts are in memory, and which version of each.

The catalogue is the source of truth: a poller thread reads every task's current artifact
(uri, sha256) once per `poll_interval` (one `task_table` query, a constant number of SQL
statements however many tasks), so a task whose job just succeeded is servable within a second,
and a task trained again is switched to its new artifact on the next batch that uses it.

Parts are loaded lazily on first use, verified (sha256 against the catalogue and the sidecar,
backbone fingerprint) and kept in least-recently-used order; loading a task that would push the
resident bytes over `memory_budget` evicts the least recently used tasks that are neither pinned
nor needed by the batch being prepared. A task whose artifact fails verification answers with that
reason (retried after `retry_after` seconds or when the catalogue names another artifact) while
every other task keeps serving.

`ensure`, `evict` and the backend's `attach`/`detach` run only in the one inference thread; the
poller only replaces the snapshot dict, and readers of the resident set (metrics) take the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from streamlearn.errors import StreamlearnError, UnknownTask
from streamlearn.serve.backends import Loaded

log = logging.getLogger(__name__)


class NoRoom(StreamlearnError):
    """A task's parts do not fit in the memory budget next to the pinned tasks and the batch's others."""


class TaskUnavailable(StreamlearnError):
    """A task's artifact failed verification (corrupt, or trained on another backbone)."""


@dataclass(frozen=True)
class Current:
    """A task's current artifact in the catalogue."""

    task: str
    """Task name."""
    uri: str | None
    """Artifact location relative to the store (None while the task has no artifact)."""
    sha256: str | None
    """Artifact digest recorded in the catalogue."""
    status: str | None
    """Status of the task's latest job."""


def read_current(catalogue_url: str | None = None) -> dict[str, Current]:
    """Every task's current artifact, read in one query."""
    from streamlearn.catalogue.queries import task_table
    from streamlearn.catalogue.session import session_scope

    with session_scope(catalogue_url, readonly=True) as s:
        return {r["task"]: Current(r["task"], r["uri"], r["sha256"], r["status"]) for r in task_table(s)}


class ResidentSet:
    """The tasks resident in a backend, loaded lazily, switched to new artifacts, evicted by bytes.

    Args:
        backend: A `SwitchBackend` or `EngineBackend`.
        memory_budget: Most bytes of resident parts (None: unlimited).
        pin: Tasks never evicted (loaded by `load_pinned`).
        catalogue_url: Catalogue to read (default: the settings').
        poll_interval: Seconds between catalogue reads.
        retry_after: Seconds before a task whose artifact failed verification is tried again.
    """

    def __init__(self, backend, memory_budget: int | None = None, pin: tuple[str, ...] = (),
                 catalogue_url: str | None = None, poll_interval: float = 1.0, retry_after: float = 5.0) -> None:
        self.backend = backend
        self.memory_budget = memory_budget
        self.pin = frozenset(pin)
        self.catalogue_url = catalogue_url
        self.poll_interval = poll_interval
        self.retry_after = retry_after
        self._current: dict[str, Current] = {}
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._failed: dict[str, tuple[str | None, float, str]] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.loads = 0
        """Artifacts loaded so far (first loads, switches and reloads after eviction)."""
        self.evictions = 0
        """Tasks evicted so far to stay within the memory budget."""

    # -- the catalogue snapshot (any thread) --------------------------------------------------

    def refresh(self) -> dict[str, Current]:
        """Read the catalogue now and replace the snapshot."""
        current = read_current(self.catalogue_url)
        with self._lock:
            self._current = current
        return current

    def start(self) -> None:
        """Read the catalogue once, then keep polling it in a daemon thread."""
        self.refresh()
        self._poller = threading.Thread(target=self._poll, name="streamlearn-catalogue-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop the poller."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except StreamlearnError as exc:  # a database blip: keep the last snapshot, say why once per poll
                log.warning("catalogue poll failed: %s", exc)

    def tasks(self) -> dict[str, Current]:
        """The last snapshot: task -> its current artifact."""
        with self._lock:
            return dict(self._current)

    def current(self, task: str) -> Current:
        """The task's current artifact; reads the catalogue again when the snapshot has no artifact for it.

        Raises:
            UnknownTask: no such task, or it has no trained artifact yet.
        """
        with self._lock:
            found = self._current.get(task)
        if found is None or found.sha256 is None:
            found = self.refresh().get(task)
        if found is None:
            raise UnknownTask(f"no task named {task!r}")
        if found.sha256 is None or found.uri is None:
            raise UnknownTask(f"task {task!r} has no trained artifact yet (status: {found.status})")
        return found

    # -- residency (the inference thread only) -------------------------------------------------

    def resident(self) -> dict[str, int]:
        """Resident task -> bytes of its parts, least recently used first (safe from any thread)."""
        with self._lock:
            return {t: loaded.nbytes for t, loaded in self._loaded.items()}

    def resident_bytes(self) -> int:
        """Total bytes of resident parts (safe from any thread)."""
        return sum(self.resident().values())

    def ensure(self, task: str, keep: frozenset[str] | set[str] = frozenset()) -> Loaded:
        """Make the task's current artifact resident and return it (most recently used now).

        Args:
            task: Task name.
            keep: Tasks the batch being prepared already uses; never evicted to make room.

        Raises:
            UnknownTask: no such task or no artifact yet.
            TaskUnavailable: its artifact failed verification (the message names the reason).
            NoRoom: it does not fit in the budget next to the pinned tasks and `keep`.
        """
        want = self.current(task)
        loaded = self._loaded.get(task)
        if loaded is not None and loaded.sha256 == want.sha256:
            with self._lock:
                self._loaded.move_to_end(task)
            return loaded
        failed = self._failed.get(task)
        if failed is not None and failed[0] == want.sha256 and time.monotonic() - failed[1] < self.retry_after:
            raise TaskUnavailable(failed[2])
        from streamlearn.jobs import artifact_path

        try:
            fresh = self.backend.load(task, artifact_path(want.uri), want.sha256)
        except StreamlearnError as exc:
            reason = f"task {task!r} cannot be served: {_without_paths(str(exc))}"
            self._failed[task] = (want.sha256, time.monotonic(), reason)
            log.error("%s", reason)
            raise TaskUnavailable(reason) from None
        self._failed.pop(task, None)
        self._make_room(task, fresh.nbytes, keep)
        self.backend.attach(fresh)
        with self._lock:
            self._loaded[task] = fresh
            self._loaded.move_to_end(task)
        self.loads += 1
        log.info("task %s resident (artifact %s, %d bytes%s)", task, fresh.sha256[:12], fresh.nbytes,
                 ", replacing " + loaded.sha256[:12] if loaded is not None else "")
        return fresh

    def _make_room(self, task: str, nbytes: int, keep: set[str]) -> None:
        if self.memory_budget is None:
            return
        old = self._loaded.get(task)
        used = self.resident_bytes() - (old.nbytes if old is not None else 0)
        victims = [t for t in self._loaded if t != task and t not in self.pin and t not in keep]
        while used + nbytes > self.memory_budget and victims:
            victim = victims.pop(0)
            used -= self._loaded[victim].nbytes
            self.evict(victim)
        if used + nbytes > self.memory_budget:
            raise NoRoom(f"task {task!r} needs {nbytes:,} bytes; {used:,} of the {self.memory_budget:,}-byte "
                         "memory budget are held by pinned tasks or by this batch")

    def evict(self, task: str) -> None:
        """Drop a task's parts (it is loaded again on its next request)."""
        with self._lock:
            gone = self._loaded.pop(task, None)
        if gone is not None:
            self.backend.detach(task)
            self.evictions += 1
            log.info("task %s evicted (memory budget %s bytes)", task, self.memory_budget)

    def load_pinned(self) -> None:
        """Load every pinned task now (at start), so a bad pin fails before the server listens."""
        for task in sorted(self.pin):
            self.ensure(task)


def _without_paths(message: str) -> str:
    """Keep the store's location out of messages sent to clients: a request never learns a path."""
    from streamlearn.settings import get_settings

    root = str(get_settings().artifacts)
    return message.replace(root + "/", "").replace(root, "<store>")
