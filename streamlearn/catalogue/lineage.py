"""Fusion lineage in the catalogue: which earlier tasks a fused task's artifact attends over.

- `resolve`: a fusion job's `--fuse-from` (`all` or names) -> the source artifacts it will use,
  each the source task's current adapter artifact on the same backbone, in arrival order;
- `record`: the fused artifact's sources as `fusion_sources` rows, in the finalising transaction;
- `dependants`: who fuses a task (`delete` refuses it); what a fused task fuses is `queries.sources_of`.
torch-free, like the rest of the catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from streamlearn import names as task_names
from streamlearn.catalogue.models import Artifact, Backbone, FusionSource, Job, JobStatus, Task
from streamlearn.catalogue.queries import task_table
from streamlearn.errors import InvalidConfig, UnknownTask


def resolve(s: Session, task: str, fuse_from: Sequence[str] | None, fingerprint: str) -> list[dict]:
    """The sources of a fusion job of `task`: `{task, sha256, key}` of each source's current artifact.

    Args:
        s: Session.
        task: The fused task.
        fuse_from: Named sources, or None for every earlier adapter task on this backbone.
        fingerprint: The backbone the job runs on; every source must have been trained on it.

    Raises:
        InvalidConfig: a named source is the task itself, has no adapter artifact, or another backbone;
            or `all` finds no earlier adapter task.
        UnknownTask: a named source does not exist.
    """
    rows = task_table(s)
    order = [r["task"] for r in rows]
    if task not in order:
        raise UnknownTask(f"no task {task!r} in the catalogue")
    usable = {r["task"]: r for r in rows if r["method"] == "adapter" and r["uri"] is not None}
    prints = dict(s.execute(select(Artifact.sha256, Backbone.fingerprint).join(Backbone, Backbone.id == Artifact.backbone_id)
                            .where(Artifact.sha256.in_([r["sha256"] for r in usable.values()]))).all())
    if fuse_from is None:
        names = [n for n in order[:order.index(task)] if n in usable and prints.get(usable[n]["sha256"]) == fingerprint]
        if not names:
            raise InvalidConfig(f"task {task!r}: no earlier task with an adapter on this backbone to fuse (--fuse-from)")
    else:
        # names are one without regard to case (`SST2` is `sst2`): use the catalogue's spelling
        canonical = {task_names.task_key(n): n for n in order}
        names = list(dict.fromkeys(canonical.get(task_names.task_key(n), n) for n in fuse_from))
        for name in names:
            if name == task:
                raise _fuses_itself(task)
            if name not in order:
                raise UnknownTask(f"fusion source {name!r} of task {task!r} is not in the catalogue")
            if name not in usable:
                raise InvalidConfig(f"fusion source {name!r} of task {task!r} has no trained adapter artifact "
                                    "(only --method adapter tasks can be sources)")
            if prints.get(usable[name]["sha256"]) != fingerprint:
                raise InvalidConfig(f"fusion source {name!r} of task {task!r} was trained on another backbone")
    return [{"task": n, "sha256": usable[n]["sha256"], "key": usable[n]["uri"]} for n in names]


def check_named(s: Session, task: str, fuse_from: Sequence[str]) -> None:
    """Refuse, at submit, a named source that can never be one, before anything is stored or queued.

    `resolve` decides when the job starts; this only refuses what no later event can make valid: the
    task itself, a name not in the catalogue, or a task with neither an adapter artifact nor a queued
    or running `--method adapter` job. A source still training passes (the worker checks it again).

    Raises:
        InvalidConfig: the task itself, or a task that is no adapter task.
        UnknownTask: a named source does not exist.
    """
    from streamlearn.catalogue.intake import _by_name

    for name in fuse_from:
        if task_names.task_key(name) == task_names.task_key(task):
            raise _fuses_itself(task)
        source = s.scalar(_by_name(name))
        if source is None:
            raise UnknownTask(f"fusion source {name!r} of task {task!r} is not in the catalogue (see `streamlearn tasks`)")
        trained = s.scalar(select(Artifact.id).join(Job, Job.id == Artifact.job_id)
                           .where(Artifact.task_id == source.id, Job.method == "adapter").limit(1))
        latest = s.get(Job, source.latest_job_id) if source.latest_job_id else None
        pending = latest is not None and latest.method == "adapter" and latest.status in (JobStatus.QUEUED,
                                                                                          JobStatus.RUNNING)
        if trained is None and not pending:
            raise InvalidConfig(f"fusion source {name!r} of task {task!r} is no adapter task (only --method adapter "
                                "tasks can be sources)")


def _fuses_itself(task: str) -> InvalidConfig:
    return InvalidConfig(f"task {task!r} cannot fuse itself: its own adapter is always part of its fusion")


def record(s: Session, artifact: Artifact, sources: Iterable[dict]) -> None:
    """Add the fused artifact's `fusion_sources` rows (in the caller's transaction, the one that records it)."""
    from streamlearn.catalogue import records

    for position, src in enumerate(sources):
        source = records.find_task(s, src["task"])
        s.add(FusionSource(artifact_id=artifact.id, position=position, source_task_id=source.id,
                           source_sha256=src["sha256"], source_uri=src["key"]))


def dependants(s: Session, task_id: int) -> list[str]:
    """Names of the tasks with an artifact that fuses task `task_id`, in arrival order."""
    stmt = (select(Task.id, Task.name).distinct().join(Job, Job.task_id == Task.id).join(Artifact, Artifact.job_id == Job.id)
            .join(FusionSource, FusionSource.artifact_id == Artifact.id).where(FusionSource.source_task_id == task_id)
            .order_by(Task.id))
    return [name for _, name in s.execute(stmt)]


def referenced_uris(s: Session, uris: Sequence[str]) -> set[str]:
    """The keys among `uris` that a fused task's artifact uses as a source."""
    return set(s.scalars(select(FusionSource.source_uri).where(FusionSource.source_uri.in_(list(uris)))))


def fusion_report(s: Session, task: str, locate) -> dict:
    """A fused task's sources, rank, pruned sources, stage-1 and fused metrics and mean attention.

    Read from the catalogue and the artifact's sidecar (no tensors); `locate` maps a catalogue key
    to the artifact's path or address. What `streamlearn fusion TASK --json` and
    `GET /v1/tasks/{task}/fusion` answer.

    Raises:
        UnknownTask: no such task, or no artifact yet.
        InvalidConfig: the task is not a fused one.
    """
    from streamlearn.artifacts import read_metadata

    rows = task_table(s, name=task)
    if not rows:
        raise UnknownTask(f"no task {task!r} in the catalogue")
    row = rows[0]
    if row["uri"] is None:
        raise UnknownTask(f"task {task!r} has no trained artifact yet (status: {row['status']})")
    if row["method"] != "fusion":
        raise InvalidConfig(f"task {task!r} was trained with --method {row['method']}, not --method fusion")
    meta = read_metadata(locate(row["uri"]))
    fusion = meta.get("fusion", {})
    return {"task": task, "sources": meta.get("sources", []), "rank": fusion.get("rank", 0),
            "pruned": fusion.get("pruned", []), "stage1": fusion.get("stage1"),
            "val": meta["metrics"]["val"], "test": meta["metrics"]["test"], "attention": fusion.get("attention")}
