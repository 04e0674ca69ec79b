"""Races between workers: a status change or a finalisation wins exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

from catalogue_fixtures import MINILM, artifact_fields, db_url, pg_database, pg_url, sqlite_url  # noqa: F401
from sqlalchemy import func, select

from streamlearn.catalogue import records
from streamlearn.catalogue.models import Artifact, Job, JobStatus, Task
from streamlearn.catalogue.session import session_scope

THREADS = 6


def _race(url: str, action: Callable[[object, int], object]) -> list[object]:
    """Run `action(session, i)` in THREADS threads released together, each in its own transaction."""
    barrier, results = threading.Barrier(THREADS), [None] * THREADS

    def worker(i: int) -> None:
        barrier.wait()
        try:
            with session_scope(url) as s:
                results[i] = action(s, i)
        except Exception as exc:  # collected and asserted on by the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _queued_job(url: str) -> str:
    with session_scope(url) as s:
        records.ensure_backbone(s, MINILM)
        return records.create_task_and_job(s, name="t", dataset_sha256="d" * 64, method="adapter",
                                           hyperparameters={})[1].id


def test_only_one_worker_can_start_a_job(db_url: str) -> None:
    """Of several workers taking the same queued job at once, one gets it and the rest get InvalidTransition."""
    job_id = _queued_job(db_url)
    results = _race(db_url, lambda s, i: records.mark_running(s, job_id, f"w{i}", i).worker_pid)
    winners = [r for r in results if isinstance(r, int)]
    assert len(winners) == 1
    assert all(isinstance(r, records.InvalidTransition) for r in results if not isinstance(r, int))
    with session_scope(db_url) as s:
        assert s.get(Job, job_id).worker_pid == winners[0]


def test_concurrent_finalisations_store_one_artifact(db_url: str) -> None:
    """Several finalisations of one running job all return the same artifact, and only one row exists."""
    job_id = _queued_job(db_url)
    with session_scope(db_url) as s:
        records.mark_running(s, job_id, "w", 1)
        backbone_id = records.ensure_backbone(s, MINILM).id
    results = _race(db_url, lambda s, i: records.mark_succeeded(
        s, job_id, artifact_fields(backbone_id, bytes_=1000 + i), {"test": {"accuracy": i / 10}}).bytes)
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 1
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Artifact)) == 1
        assert s.get(Job, job_id).status == JobStatus.SUCCEEDED


def test_concurrent_identical_submits_share_one_task_and_job(db_url: str) -> None:
    """Identical submissions racing to create a new task end with one task and one job, returned to all."""
    results = _race(db_url, lambda s, i: records.create_task_and_job(
        s, name="fresh", dataset_sha256="d" * 64, method="adapter", hyperparameters={"m": 64})[1].id)
    assert all(isinstance(r, str) for r in results), results
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Task)) == 1
        jobs = s.scalars(select(Job.id)).all()
    assert len(jobs) == 1 and set(results) == set(jobs)


def test_sqlite_readers_do_not_wait_for_a_writer(sqlite_url: str) -> None:
    """While a worker holds SQLite's write lock, a read-only session (the CLI) still answers at once."""
    from streamlearn.catalogue import queries

    job_id = _queued_job(sqlite_url)
    with session_scope(sqlite_url) as writer:
        records.mark_running(writer, job_id, "w", 1)  # BEGIN IMMEDIATE: the write lock is held from here
        with session_scope(sqlite_url, readonly=True) as reader:
            assert queries.job_status(reader, job_id)["status"] == "queued"  # the last committed state
    with session_scope(sqlite_url, readonly=True) as reader:
        assert queries.job_status(reader, job_id)["status"] == "running"


def test_concurrent_first_opens_create_the_schema_once(db_url: str) -> None:
    """Processes opening a fresh catalogue at the same moment all succeed, and the migration runs once."""
    from streamlearn.catalogue import session

    barrier, results = threading.Barrier(THREADS), []

    def opener() -> None:
        barrier.wait()
        try:
            results.append(session.upgrade(db_url))
        except Exception as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [session.HEAD_REVISION] * THREADS
