"""Evaluation history: the rows `streamlearn evaluate` records, and the accuracy matrix built from them.

Every evaluate run (CLI, demo, HTTP) records one row per task it re-scored. From those rows:

- **The stream** is every task with a current artifact, ordered by when that artifact was recorded
  (`learned_at`; ties by arrival). With one worker this is the arrival order.
- **R[t, j]** (0-based here) is the accuracy of the latest evaluation of task j's *current* artifact
  whose run read the stream at or after task t was learned and before task t+1 was learned (after
  the last task: any time later). A cell no run filled is None. R[t, j] for j > t is always None:
  no run can score an artifact before it is recorded.
- **BWT** = mean over j < T-1 of (R[T-1, j] - R[j, j]), over the j whose two cells are known
  (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory", Sec. 2).
- **Forgetting** = mean over j < T-1 of (max over t in [j, T-1) of R[t, j]) - R[T-1, j], over the
  j whose last cell and at least one earlier cell are known (Chaudhry et al. 2018, "Riemannian
  Walk", Sec. 4).
  Both are None when no task qualifies (fewer than two tasks, or the last row is still empty).
- A task's run is **collapsed** when its latest evaluation predicted a single label, or scored
  exactly the accuracy of always answering the split's most frequent label.

Each function here is a constant number of SQL statements whatever the number of tasks.
"""

from __future__ import annotations

import bisect
import math
import statistics
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from streamlearn.catalogue.models import Artifact, Evaluation, Job, Task, utcnow
from streamlearn.catalogue.queries import task_table
from streamlearn.errors import UnknownTask

SOURCES = ("cli", "demo", "http")
"""Who may record an evaluation run."""


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def record_run(s: Session, rows: Iterable[dict[str, Any]], *, source: str, evaluated_at: datetime | None = None,
               run_id: str | None = None) -> str:
    """Record one evaluate run: one `evaluations` row per task re-scored, in the caller's transaction.

    Args:
        s: Session (one transaction: the run's rows are all written or none).
        rows: `predictor.reevaluate` results: `task, job_id, sha256, split, examples, accuracy,
            macro_f1, catalogue_accuracy, drift, majority_accuracy, predicted_classes`.
        source: `cli`, `demo` or `http`.
        evaluated_at: When the run read the stored artifacts (default: now).
        run_id: The run's id (default: a new uuid4).

    Returns:
        The run id.

    Raises:
        UnknownTask: a row names a task the catalogue does not have.
        ValueError: `source` is not one of `SOURCES`.
    """
    if source not in SOURCES:
        raise ValueError(f"evaluation source {source!r} is not one of {SOURCES}")
    rows = list(rows)
    run_id = run_id or str(uuid.uuid4())
    at = evaluated_at or utcnow()
    names = {r["task"] for r in rows}
    ids = dict(s.execute(select(Task.name, Task.id).where(Task.name.in_(names))).all()) if names else {}
    if missing := sorted(names - ids.keys()):
        raise UnknownTask(f"no task named {missing[0]!r}")
    s.add_all(
        Evaluation(
            run_id=run_id, task_id=ids[r["task"]], job_id=r["job_id"], artifact_sha256=r["sha256"], source=source,
            split=r["split"], examples=int(r["examples"]), accuracy=float(r["accuracy"]),
            macro_f1=float(r["macro_f1"]), catalogue_accuracy=_finite(r.get("catalogue_accuracy")),
            drift=_finite(r.get("drift")), majority_accuracy=float(r["majority_accuracy"]),
            predicted_classes=int(r["predicted_classes"]), evaluated_at=at,
        )
        for r in rows
    )
    s.flush()
    return run_id


def _row(task: str, e: Evaluation) -> dict[str, Any]:
    return {
        "task": task, "run_id": e.run_id, "job_id": e.job_id, "sha256": e.artifact_sha256, "source": e.source,
        "split": e.split, "examples": e.examples, "accuracy": e.accuracy, "macro_f1": e.macro_f1,
        "catalogue_accuracy": e.catalogue_accuracy, "drift": e.drift, "majority_accuracy": e.majority_accuracy,
        "predicted_classes": e.predicted_classes,
        "collapsed": is_collapsed(e.accuracy, e.majority_accuracy, e.predicted_classes, e.examples),
        "evaluated_at": e.evaluated_at.isoformat(),
    }


def is_collapsed(accuracy: float, majority_accuracy: float, predicted_classes: int, examples: int) -> bool:
    """True when a run predicted one label, or scored exactly the majority-class accuracy."""
    # Compare counts of examples, not floats: both accuracies are (count / examples).
    return predicted_classes <= 1 or round(accuracy * examples) == round(majority_accuracy * examples)


def history(s: Session, task: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Recorded evaluations, newest first, optionally of one task.

    Returns:
        Dicts with `task, run_id, job_id, sha256, source, split, examples, accuracy, macro_f1,
        catalogue_accuracy, drift, majority_accuracy, predicted_classes, collapsed, evaluated_at`.
    """
    stmt = select(Task.name, Evaluation).join(Task, Task.id == Evaluation.task_id)
    if task is not None:
        stmt = stmt.where(Task.name == task)
    stmt = stmt.order_by(Evaluation.evaluated_at.desc(), Evaluation.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_row(name, e) for name, e in s.execute(stmt)]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def transfer(matrix: list[list[float | None]]) -> dict[str, float | None]:
    """BWT, forgetting and the final row's average accuracy of an accuracy matrix (None cells skipped).

    See the module docstring for the definitions.
    """
    T = len(matrix)  # noqa: N806 (the papers' name)
    if T == 0:
        return {"bwt": None, "forgetting": None, "average_accuracy": None}
    last = matrix[-1]
    bwt = [last[j] - matrix[j][j] for j in range(T - 1) if last[j] is not None and matrix[j][j] is not None]
    forgetting = []
    for j in range(T - 1):
        earlier = [matrix[t][j] for t in range(j, T - 1) if matrix[t][j] is not None]
        if last[j] is not None and earlier:
            forgetting.append(max(earlier) - last[j])
    return {"bwt": _mean(bwt), "forgetting": _mean(forgetting),
            "average_accuracy": _mean([v for v in last if v is not None])}


def accuracy_matrix(s: Session) -> dict[str, Any]:
    """The accuracy matrix R[t, j] of the stream, with BWT, forgetting and collapsed runs.

    Returns:
        `tasks` (names in stream order), `learned_at` (ISO times, same order), `matrix` (T rows of
        T accuracies or None), `bwt`, `forgetting`, `average_accuracy` (mean of the last row's
        known cells), `latest` (per task, its latest evaluation of the current artifact as in
        `history`, or None) and `collapsed` (names of tasks whose latest evaluation collapsed).
    """
    current = {r["task"]: (r["artifact_job_id"], r["sha256"]) for r in task_table(s) if r["artifact_job_id"]}
    order = {name: i for i, name in enumerate(current)}
    learned = {
        name: at for name, job_id, at in s.execute(
            select(Task.name, Artifact.job_id, Artifact.created_at)
            .join(Job, Job.id == Artifact.job_id).join(Task, Task.id == Job.task_id)
        )
        if current.get(name, (None,))[0] == job_id
    }
    tasks = sorted(current, key=lambda name: (learned[name], order[name]))
    index = {name: j for j, name in enumerate(tasks)}
    bounds = [learned[name] for name in tasks]
    matrix: list[list[float | None]] = [[None] * len(tasks) for _ in tasks]
    latest: list[dict[str, Any] | None] = [None] * len(tasks)
    stmt = (select(Task.name, Evaluation).join(Task, Task.id == Evaluation.task_id)
            .order_by(Evaluation.evaluated_at, Evaluation.id))
    for name, e in s.execute(stmt):
        if name not in index or (e.job_id, e.artifact_sha256) != current[name]:
            continue  # an earlier artifact of the task, or a task without one now
        row = bisect.bisect_right(bounds, e.evaluated_at) - 1
        if row < 0:
            continue
        # Rows come oldest first, so the latest evaluation inside a window overwrites the others.
        matrix[row][index[name]] = e.accuracy
        latest[index[name]] = _row(name, e)
    return {
        "tasks": tasks, "learned_at": [b.isoformat() for b in bounds], "matrix": matrix, **transfer(matrix),
        "latest": latest, "collapsed": [r["task"] for r in latest if r is not None and r["collapsed"]],
    }
