"""Catalogue fixtures: a fresh, empty database per test, on SQLite and on the real PostgreSQL.

Import the fixtures you use into the test module (`from catalogue_fixtures import db_url`).
PostgreSQL: one database per test session on 127.0.0.1:5432 (trust auth, user postgres or root,
admin database `test`), one schema per test, everything dropped afterwards. When the server does
not answer, PostgreSQL tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cannot_run
from sqlalchemy import create_engine, text

from streamlearn.catalogue import records
from streamlearn.catalogue.session import reset_engines

PG_HOST = os.environ.get("STREAMLEARN_TEST_PG_HOST", "127.0.0.1:5432")
PG_USERS = ("postgres", "root")
PG_ADMIN_DB = "test"

MINILM = {
    "name": "all-MiniLM-L6-v2", "path": "/models/minilm", "fingerprint": "f" * 64,
    "layers": 6, "hidden": 384, "params": 22_713_216, "bytes": 90_852_864,
}
"""The default backbone's description, as `BackboneInfo` gives it."""


def _admin_url() -> tuple[str | None, str]:
    """The first PostgreSQL admin URL that answers, or (None, why not)."""
    reason = ""
    for user in PG_USERS:
        url = f"postgresql+psycopg://{user}@{PG_HOST}/{PG_ADMIN_DB}"
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return url, ""
        except Exception as exc:  # any failure means "not usable here"; the reason is reported
            users = ", ".join(PG_USERS)
            reason = f"PostgreSQL at {PG_HOST} unreachable (tried users {users}): {str(exc).splitlines()[0]}"
        finally:
            engine.dispose()
    return None, reason


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end); yields its URL."""
    admin, reason = _admin_url()
    if admin is None:
        cannot_run(reason)
    name = f"sl_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        reset_engines()
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture()
def pg_url(pg_database: str) -> Iterator[str]:
    """An empty schema of the session's PostgreSQL database, as the search path of the yielded URL."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{pg_database}?options=-csearch_path%3D{schema}"
    finally:
        reset_engines()
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a not-yet-existing SQLite catalogue in a fresh folder."""
    yield f"sqlite:///{tmp_path / 'cat' / 'catalogue.db'}"
    reset_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty catalogue database, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def artifact_fields(backbone_id: int, *, bytes_: int, m: int | None = 64, classes: int = 2,
                    method: str = "adapter", uri: str = "file:///a.safetensors") -> dict[str, Any]:
    """An `artifact` dict for `records.mark_succeeded` with made-up but consistent numbers."""
    return {
        "uri": uri, "sha256": "a" * 64, "bytes": bytes_, "trainable_params": bytes_ // 4,
        "stored_params": bytes_ // 4, "method": method, "adapter_size": m, "classes": classes,
        "backbone_id": backbone_id,
    }


def finished_task(s, name: str, *, bytes_: int, m: int | None = 64, classes: int = 2, method: str = "adapter",
                  val: float = 0.9, test: float = 0.8, backbone: dict[str, Any] = MINILM,
                  collapsed: bool | None = None) -> str:
    """Create task `name` and walk its job through queued -> running -> succeeded; return the job id."""
    bb = records.ensure_backbone(s, backbone)
    _, job, _ = records.create_task_and_job(
        s, name=name, dataset_sha256=uuid.uuid4().hex * 2, method=method,
        hyperparameters={"m": m, "lr": 1e-3}, rows={"train": 10}, labels=[str(i) for i in range(classes)],
    )
    records.mark_running(s, job.id, "host", 1)
    records.mark_succeeded(
        s, job.id, artifact_fields(bb.id, bytes_=bytes_, m=m, classes=classes, method=method, uri=f"file:///{name}"),
        {"validation": {"accuracy": val}, "test": {"accuracy": test, "collapsed": collapsed}},
    )
    return job.id


def bulk_catalogue(s, tasks: int, *, bytes_of=lambda i: 2_423_816 + 1_096, m_of=lambda i: 64,
                   classes_of=lambda i: 2 + i % 3, prefix_names: bool = False) -> None:
    """Insert `tasks` finished tasks (task, succeeded job, artifact, two metrics each) in a few bulk statements.

    Tasks are named `task-00000`, ... (or `<random>-00000`, ... with `prefix_names`, to add more).
    """
    from sqlalchemy import insert, select

    from streamlearn.catalogue.models import Artifact, Job, JobStatus, Metric, Task, utcnow

    bb = records.ensure_backbone(s, MINILM)
    now, prefix = utcnow(), uuid.uuid4().hex[:8]
    names = [f"{prefix}-{i:05d}" if prefix_names else f"task-{i:05d}" for i in range(tasks)]
    job_ids = [f"{prefix}-{i:04x}-4000-8000-{i:012x}"[:36] for i in range(tasks)]
    # The summary columns the service keeps (tasks.latest_*, artifacts.task_id ...), as `records` writes them.
    s.execute(insert(Task), [
        {"name": names[i], "created_at": now, "dataset_sha256": f"{i:064x}", "files": {},
         "rows": {"train": 100}, "labels": ["a", "b"], "text_field": "text", "label_field": "label",
         "latest_job_id": job_ids[i], "latest_status": "succeeded"}
        for i in range(tasks)])
    task_ids = dict(s.execute(select(Task.name, Task.id).where(Task.name.in_(names))).all())
    s.execute(insert(Job), [
        {"id": job_ids[i], "task_id": task_ids[names[i]], "kind": "train", "method": "adapter",
         "hyperparameters": {"m": m_of(i)}, "spec_sha256": "0" * 64, "status": JobStatus.SUCCEEDED, "attempts": 0,
         "chosen": False, "created_at": now, "enqueued_at": now, "started_at": now, "finished_at": now}
        for i in range(tasks)])
    s.execute(insert(Artifact), [
        {"job_id": job_ids[i], "backbone_id": bb.id, "uri": f"file:///{names[i]}", "sha256": f"{i:064x}",
         "bytes": bytes_of(i), "trainable_params": 1, "stored_params": 1, "method": "adapter",
         "adapter_size": m_of(i), "classes": classes_of(i), "created_at": now, "task_id": task_ids[names[i]],
         "visible": True, "drop_layers": 0, "store_dtype": "float32", "fusion_rank": 0, "current": True}
        for i in range(tasks)])
    s.execute(insert(Metric), [
        {"job_id": job_ids[i], "split": split, "name": "accuracy", "value": i / tasks}
        for i in range(tasks) for split in ("validation", "test")])
