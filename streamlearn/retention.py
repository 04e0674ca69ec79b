"""Retention: `delete TASK` and `gc`, which remove stored files that no catalogue row references.

Nothing referenced is ever removed, even while submissions and jobs run, by one lock and one rule:

- gc (and the file half of `delete`) decides and deletes *under an exclusive catalogue lock*,
  re-reading the references inside that transaction (PostgreSQL: `pg_advisory_xact_lock`;
  SQLite: the `BEGIN IMMEDIATE` write lock every write transaction takes);
- a submission records its task *under the shared lock*, after checking that each of its dataset
  objects is still stored and putting back any that gc removed since it was uploaded; a worker
  records an artifact under the shared lock only after checking that the object is still there
  (if not, the job is retried and trains again).

So either gc's transaction comes first (and the submission puts the file back before its rows
commit), or the submission's rows commit first (and gc sees them). A grace period (`gc --grace`,
default one hour) also leaves alone every object younger than it, and an upload of an existing
dataset refreshes its modification time, so gc does not even consider files in active use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from streamlearn.artifacts import ArtifactStore, sidecar_path
from streamlearn.catalogue import lineage
from streamlearn.catalogue.models import Artifact, Job, JobStatus, Task, utcnow
from streamlearn.catalogue.session import session_scope
from streamlearn.errors import InvalidConfig, SourceInUse, TransientError
from streamlearn.objectstore import StoredObject
from streamlearn.settings import get_settings

log = logging.getLogger(__name__)

LOCK_KEY = 0x5354524D
"""PostgreSQL advisory lock id of retention (any constant; shared by submissions, exclusive by gc)."""

DEFAULT_GRACE = 3600.0
"""Seconds an unreferenced object is left alone after its last write (`gc --grace`)."""


def _lock(s: Session, exclusive: bool) -> None:
    if s.get_bind().dialect.name == "postgresql":
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        s.execute(text(f"SELECT {fn}(:key)"), {"key": LOCK_KEY})
    else:
        s.connection()  # SQLite: starts the BEGIN IMMEDIATE transaction, i.e. takes the write lock


def hold(s: Session, files: dict[str, tuple[str, Path]]) -> None:
    """Inside a submission's transaction: take the shared lock and make sure every dataset it
    references is stored, putting back (from the local file) any that gc removed meanwhile.

    Args:
        s: The submission's session (its rows are added after this, in the same transaction).
        files: Split -> (sha256, the submitted local file).
    """
    _lock(s, exclusive=False)
    store = ArtifactStore(get_settings().artifacts)
    for sha, local in files.values():
        key = store.dataset_key(sha, gz=Path(local).suffix == ".gz")
        if not store.objects.exists(key):
            log.warning("dataset %s was removed by gc before its task was recorded: storing it again", key)
            store.objects.put_file(local, key)


def hold_artifact(s: Session, path: Path | str) -> None:
    """Inside the transaction that records an artifact: take the shared lock and check it is stored.

    Raises:
        TransientError: gc removed the files before they were recorded; the retry trains again.
    """
    _lock(s, exclusive=False)
    store = ArtifactStore(get_settings().artifacts)
    if not (store.exists(path) and store.exists(sidecar_path(path))):
        raise TransientError(f"artifact {path} was removed before it was recorded; the job will train again")


@dataclass
class Collected:
    """What a retention pass found and removed."""

    scanned: int = 0
    """Objects considered (for gc: every object older than the grace period)."""
    removed: list[dict] = field(default_factory=list)
    """`{key, bytes}` of every object removed (with `dry_run`: that would be removed)."""
    kept: int = 0
    """Objects considered that a catalogue row references."""

    @property
    def bytes_freed(self) -> int:
        """Sum of the removed objects' sizes."""
        return sum(item["bytes"] for item in self.removed)


def _referenced(s: Session, keys: set[str], store: ArtifactStore) -> set[str]:
    """The keys among `keys` that some catalogue row references (artifact tensors + sidecars, datasets)."""
    tensors = {k for k in keys if k.endswith(".safetensors")} | {
        k.removesuffix(".json") + ".safetensors" for k in keys if k.startswith("tasks/") and k.endswith(".json")}
    used: set[str] = set()
    chunk = sorted(tensors)
    for i in range(0, len(chunk), 500):
        used.update(s.scalars(select(Artifact.uri).where(Artifact.uri.in_(chunk[i:i + 500]))))
    for i in range(0, len(chunk), 500):  # a source artifact a fused task uses (e.g. after a --force retrain)
        used.update(lineage.referenced_uris(s, chunk[i:i + 500]))
    refs = {k for k in keys if (k.removesuffix(".json") + ".safetensors" if k.endswith(".json") else k) in used}
    dataset_keys = {k for k in keys if k.startswith("datasets/")}
    if dataset_keys:
        # Task.files is JSON (split -> sha256); one pass over it, only when datasets are candidates.
        shas = {sha for files in s.scalars(select(Task.files)) for sha in (files or {}).values()}
        refs |= {k for k in dataset_keys if k.removeprefix("datasets/").split(".", 1)[0] in shas}
    return refs


def collect(candidates: Iterable[StoredObject], dry_run: bool, between: Callable[[], None] | None = None) -> Collected:
    """Remove the candidates no catalogue row references, deciding under the exclusive lock.

    Args:
        candidates: Objects that may be unreferenced.
        dry_run: Report, remove nothing.
        between: Called after the listing and before the locked re-check (a test hook that makes
            the race with a submission deterministic).
    """
    store = ArtifactStore(get_settings().artifacts)
    objects = {o.key: o for o in candidates}
    result = Collected(scanned=len(objects))
    if between is not None:
        between()
    with session_scope() as s:
        _lock(s, exclusive=True)
        refs = _referenced(s, set(objects), store)
        result.kept = len(refs)
        for key in sorted(set(objects) - refs):
            if not dry_run:
                store.objects.delete(key)
            result.removed.append({"key": key, "bytes": objects[key].size})
    if result.removed and not dry_run:
        log.info("retention: removed %d objects, %d bytes", len(result.removed), result.bytes_freed)
    return result


def gc(dry_run: bool = False, grace: float = DEFAULT_GRACE, between: Callable[[], None] | None = None) -> dict:
    """Remove every stored dataset and artifact that no catalogue row references.

    Args:
        dry_run: Only report what would be removed.
        grace: Leave objects written less than this many seconds ago alone.
        between: Test hook, see `collect`.

    Returns:
        `{dry_run, grace_seconds, store, scanned, kept, removed: [{key, bytes}], bytes_freed}`.
    """
    if grace < 0:
        raise InvalidConfig("--grace must be 0 or more seconds")
    store = ArtifactStore(get_settings().artifacts)
    cutoff = utcnow() - timedelta(seconds=grace)
    old = [o for prefix in ("datasets/", "tasks/") for o in store.objects.list(prefix) if o.modified <= cutoff]
    result = collect(old, dry_run, between)
    return {"dry_run": dry_run, "grace_seconds": grace, "store": store.objects.url, "scanned": result.scanned,
            "kept": result.kept, "removed": result.removed, "bytes_freed": result.bytes_freed}


def delete_task(name: str) -> dict:
    """Delete a task: its rows (task, jobs, artifacts, metrics) in one transaction, then its files
    that no other row references (an artifact or dataset another task uses stays).

    Returns:
        `{task, jobs, removed: [{key, bytes}], bytes_freed}`.

    Raises:
        UnknownTask: no such task.
        InvalidConfig: a job of the task is queued or running (wait for it, then delete).
        SourceInUse: another task's artifact fuses this task's adapter (the message names them).
    """
    from streamlearn.catalogue import records

    store = ArtifactStore(get_settings().artifacts)
    with session_scope() as s:
        task = records.find_task(s, name)
        users = lineage.dependants(s, task.id)
        if users:
            raise SourceInUse(f"task {name!r} is a fusion source of {', '.join(users)}; delete "
                              f"{'that task' if len(users) == 1 else 'those tasks'} first")
        busy = s.scalar(select(Job.id).where(Job.task_id == task.id,
                                            Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))).limit(1))
        if busy is not None:
            raise InvalidConfig(f"task {name!r} has job {busy} queued or running; wait until it ends, then delete")
        uris = list(s.scalars(select(Artifact.uri).join(Job, Job.id == Artifact.job_id).where(Job.task_id == task.id)))
        jobs = s.scalar(select(func.count()).select_from(Job).where(Job.task_id == task.id))
        shas = sorted(set((task.files or {}).values()))
        s.execute(delete(Task).where(Task.id == task.id))  # ON DELETE CASCADE: jobs, artifacts, metrics
    # After the commit: a crash here leaves unreferenced files for gc, never a row without its file.
    keys = {k for uri in uris for k in (uri, Path(uri).with_suffix(".json").as_posix())}
    candidates = [o for key in sorted(keys) for o in store.objects.list(key) if o.key == key]
    candidates += [o for sha in shas for o in store.objects.list(f"datasets/{sha}.")]
    removed = collect(candidates, dry_run=False).removed
    return {"task": name, "jobs": int(jobs or 0), "removed": removed, "bytes_freed": sum(r["bytes"] for r in removed)}
