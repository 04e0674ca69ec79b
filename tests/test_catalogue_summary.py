"""The summary columns (revision 0006) that keep `tasks --status` and `storage` fast at 100,000 tasks.

`tasks.latest_job_id` / `latest_status` and `artifacts.task_id` / `visible` / shape keys are copies;
every write path of `records` must keep them equal to what the jobs say. Each step below is a real
write through `records`, then `summary_mismatches` (what `db check` runs) must find nothing, the
`--status` filter must agree with the status the table shows, and the storage totals computed from
the copies must equal the per-task report computed from the jobs.
"""

from __future__ import annotations

from catalogue_fixtures import MINILM, artifact_fields, db_url, pg_database, pg_url, sqlite_url  # noqa: F401
from sqlalchemy import select, update

from streamlearn.catalogue import queries, records
from streamlearn.catalogue.models import Artifact, Job, Task
from streamlearn.catalogue.session import session_scope

HP = {"method": {"method": "adapter", "adapter_size": 8}, "train": {"store_dtype": "float16"}}


def _consistent(url: str) -> dict[str, str]:
    """Assert the copies agree with the jobs; return task -> the status the task table shows."""
    with session_scope(url, readonly=True) as s:
        assert records.summary_mismatches(s) == []
        shown = {r["task"]: r["status"] for r in queries.task_table(s)}
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            filtered = {r["task"] for r in queries.task_table(s, status=status)}
            assert filtered == {t for t, st in shown.items() if st == status}, status
        totals = queries.storage_report(s, limit=1)  # the SQL totals over the copies
        full = queries.storage_report(s)  # every task's row, ranked through its jobs
        for key in ("task_count", "total_bytes", "theoretical_total_bytes", "full_copy_total_bytes"):
            assert totals[key] == full[key], key
    return shown


def _succeed(s, job_id: str, bb: int, bytes_: int, m: int = 8) -> None:
    records.mark_running(s, job_id, "host", 1)
    records.mark_succeeded(s, job_id, artifact_fields(bb, bytes_=bytes_, m=m, uri=f"file:///{job_id}"),
                           {"validation": {"accuracy": 0.5}})


def test_every_write_path_keeps_the_summary_columns_equal_to_the_jobs(db_url: str) -> None:  # noqa: F811
    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM).id
        _, a, _ = records.create_task_and_job(s, name="alpha", dataset_sha256="0" * 64, method="adapter",
                                              hyperparameters=HP)
        _, b, _ = records.create_task_and_job(s, name="beta", dataset_sha256="1" * 64, method="adapter",
                                              hyperparameters=HP)
        a_id, b_id = a.id, b.id
    assert _consistent(db_url) == {"alpha": "queued", "beta": "queued"}

    with session_scope(db_url) as s:  # alpha fails; beta succeeds
        records.mark_running(s, a_id, "host", 1)
        records.mark_failed(s, a_id, "boom")
        _succeed(s, b_id, bb, 100)
    assert _consistent(db_url) == {"alpha": "failed", "beta": "succeeded"}

    with session_scope(db_url) as s:  # a retry of alpha, requeued once after its worker died
        retry = records.create_job(s, "alpha", method="adapter", hyperparameters=HP).id
        records.mark_running(s, retry, "host", 2)
    assert _consistent(db_url)["alpha"] == "running"
    with session_scope(db_url) as s:
        records.requeue(s, retry)
    assert _consistent(db_url)["alpha"] == "queued"
    with session_scope(db_url) as s:
        _succeed(s, retry, bb, 200)
        # the failed job is older: changing it again must not move the task's status
        s.execute(update(Job).where(Job.id == a_id).values(error="still boom"))
    assert _consistent(db_url)["alpha"] == "succeeded"

    with session_scope(db_url) as s:  # a sweep on beta: two trials, the second chosen
        sweep = records.create_job(s, "beta", method="adapter", hyperparameters=HP, kind="sweep").id
        trials = [records.create_job(s, "beta", method="adapter", hyperparameters=HP, kind="trial", parent_id=sweep).id
                  for _ in range(2)]
        records.start_sweep(s, sweep)
    assert _consistent(db_url)["beta"] == "running"
    with session_scope(db_url) as s:
        for i, trial in enumerate(trials):
            _succeed(s, trial, bb, 300 + i)
        assert s.get(Artifact, s.get(Job, trials[1]).artifact.id).visible is False
    shown = _consistent(db_url)  # trials are not the task's newest job: the sweep stands for them
    assert shown["beta"] == "running"
    with session_scope(db_url) as s:
        records.complete_sweep(s, sweep, trials[1])
    assert _consistent(db_url)["beta"] == "succeeded"
    with session_scope(db_url, readonly=True) as s:
        row = queries.task_table(s, name="beta")[0]
        assert row["artifact_job_id"] == trials[1] and row["bytes"] == 301  # the chosen trial is current

    with session_scope(db_url) as s:  # alpha retrained with another shape: two artifacts, the newer one counts
        other = records.create_job(s, "alpha", method="adapter", hyperparameters={**HP, "method": {"adapter_size": 16}}).id
        _succeed(s, other, bb, 50, m=16)
    assert _consistent(db_url)["alpha"] == "succeeded"
    with session_scope(db_url, readonly=True) as s:
        currents = s.execute(select(Artifact.job_id).where(Artifact.task_id == s.get(Job, other).task_id,
                                                           Artifact.current.is_(True))).scalars().all()
        report = queries.storage_report(s, limit=1)
    assert currents == [other] and report["total_bytes"] == 200 + 50 + 100 + 301

    with session_scope(db_url) as s:  # a queued retrain cancelled
        again = records.create_job(s, "beta", method="adapter", hyperparameters=HP).id
        records.mark_cancelled(s, again)
    assert _consistent(db_url)["beta"] == "cancelled"


def test_db_check_names_a_summary_that_disagrees_with_its_jobs(db_url: str) -> None:  # noqa: F811
    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM).id
        _, job, _ = records.create_task_and_job(s, name="gamma", dataset_sha256="2" * 64, method="adapter",
                                                hyperparameters=HP)
        _succeed(s, job.id, bb, 100)
    with session_scope(db_url) as s:
        s.execute(update(Task).values(latest_status="failed"))
        s.execute(update(Artifact).values(store_dtype="float32"))
    with session_scope(db_url, readonly=True) as s:
        found = records.summary_mismatches(s)
    assert found == [f"task gamma: newest job {job.id} (succeeded), summary {job.id} (failed)",
                     f"artifact of job {job.id}: store_dtype 'float32' (job says 'float16')"]


def test_revision_0006_fills_the_summary_columns_of_an_existing_catalogue(db_url: str) -> None:  # noqa: F811
    """Rows written before 0006 (here: written at head, then the columns dropped by a downgrade to 0005)
    get their summaries from the jobs on upgrade, including a job of release 0.1.0 without shape keys."""
    from alembic import command
    from alembic.config import Config

    from streamlearn.catalogue import session

    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM).id
        for name, hp in (("old", {"method": {"adapter_size": 8}}), ("new", HP)):
            _, job, _ = records.create_task_and_job(s, name=name, dataset_sha256=name[0] * 64, method="adapter",
                                                    hyperparameters=hp)
            _succeed(s, job.id, bb, 100)
        later = records.create_job(s, "old", method="adapter", hyperparameters=HP).id
        records.mark_running(s, later, "host", 3)
        records.mark_failed(s, later, "boom")
    config = Config()
    config.set_main_option("script_location", str(session.migrations_dir()))
    with session.make_engine(db_url).connect() as conn, session.migration_transaction(conn):
        config.attributes["connection"] = conn
        command.downgrade(config, "0005_fusion_sources")
    assert session.current_revision(db_url) == "0005_fusion_sources"
    assert session.upgrade(db_url) == session.HEAD_REVISION
    assert _consistent(db_url) == {"old": "failed", "new": "succeeded"}
    with session_scope(db_url, readonly=True) as s:
        dtypes = dict(s.execute(select(Task.name, Artifact.store_dtype).join(Artifact, Artifact.task_id == Task.id)).all())
    assert dtypes == {"old": "float32", "new": "float16"}
