"""What the catalogue answers: the task table, job status, job lists, recovery lists, storage report."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from catalogue_fixtures import (  # noqa: F401
    MINILM,
    artifact_fields,
    bulk_catalogue,
    db_url,
    finished_task,
    pg_database,
    pg_url,
    sqlite_url,
)
from sqlalchemy import event

from streamlearn.catalogue import queries, records
from streamlearn.catalogue.models import Job, utcnow
from streamlearn.catalogue.session import get_engine, session_scope
from streamlearn.errors import UnknownJob

W = 90_852_864
"""|w| of all-MiniLM-L6-v2 in bytes (22,713,216 fp32 parameters)."""


def _three_tasks(url: str) -> None:
    with session_scope(url) as s:
        finished_task(s, "sst2", bytes_=2_424_912, m=64, classes=2)
        finished_task(s, "trec", bytes_=359_380, m=8, classes=3)
        finished_task(s, "agnews", bytes_=2_429_532, m=64, classes=5, val=0.95, test=0.94)


def test_storage_report_matches_hand_computed_numbers(db_url: str) -> None:
    """For three tasks the report's per-task, cumulative, law and K·|w| bytes equal the numbers worked out by hand."""
    _three_tasks(db_url)
    with session_scope(db_url, readonly=True) as s:
        report = queries.storage_report(s)
    # Law per task, 4 bytes x [2L(2md+m+d) + (4L+2)d + (d+1)C] with L=6, d=384:
    #   m=64, C=2: 12*(49152+64+384) + 26*384 + 385*2 = 595200 + 9984 + 770  = 605954 -> 2423816 B
    #   m=8,  C=3: 12*(6144+8+384)   + 9984     + 385*3 = 78432 + 9984 + 1155  = 89571  -> 358284 B
    #   m=64, C=5: 595200 + 9984 + 385*5                 = 607109               -> 2428436 B
    assert [(t["task"], t["method"], t["bytes"], t["cumulative_bytes"], t["full_copy_cumulative_bytes"],
             t["theoretical_bytes"]) for t in report["tasks"]] == [
        ("sst2", "adapter", 2_424_912, 2_424_912, W, 2_423_816),
        ("trec", "adapter", 359_380, 2_784_292, 2 * W, 2_782_100),
        ("agnews", "adapter", 2_429_532, 5_213_824, 3 * W, 5_210_536),
    ]
    assert (report["backbone_params"], report["backbone_bytes"]) == (22_713_216, W)
    assert (report["total_bytes"], report["full_copy_total_bytes"]) == (5_213_824, 272_558_592)
    assert report["ratio"] == pytest.approx(5_213_824 / 272_558_592) == pytest.approx(0.0191292, abs=1e-7)
    assert report["theoretical_total_bytes"] == 5_210_536


def test_task_table_shows_each_tasks_current_artifact(db_url: str) -> None:
    """Each task appears once, in arrival order, with its newest artifact's method, m, accuracies, size and backbone."""
    _three_tasks(db_url)
    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM)
        _, newer, _ = records.create_task_and_job(
            s, name="trec", dataset_sha256=records.find_task(s, "trec").dataset_sha256, method="adapter",
            hyperparameters={"m": 16}, files=records.find_task(s, "trec").files)
        records.mark_running(s, newer.id, "h", 1)
        records.mark_succeeded(s, newer.id, artifact_fields(bb.id, bytes_=600_000, m=16, classes=3),
                               {"validation": {"accuracy": 0.97}})
        records.create_task_and_job(s, name="pending", dataset_sha256="1" * 64, method="adapter", hyperparameters={})
    with session_scope(db_url, readonly=True) as s:
        rows = queries.task_table(s)
        report = queries.storage_report(s)
    assert [r["task"] for r in rows] == ["sst2", "trec", "agnews", "pending"]
    trec = rows[1]
    assert (trec["status"], trec["method"], trec["adapter_size"], trec["val_accuracy"], trec["test_accuracy"],
            trec["bytes"], trec["backbone"], trec["hyperparameters"]) == (
        "succeeded", "adapter", 16, 0.97, None, 600_000, "all-MiniLM-L6-v2", {"m": 16})
    assert (rows[2]["val_accuracy"], rows[2]["test_accuracy"], rows[2]["sha256"]) == (0.95, 0.94, "a" * 64)
    assert (rows[3]["status"], rows[3]["method"], rows[3]["bytes"]) == ("queued", None, None)
    # Both trec artifacts are on disk, so storage counts both; the law counts trec's current (m=16) one.
    assert [(t["task"], t["bytes"], t["artifacts"], t["adapter_size"]) for t in report["tasks"]][1] == (
        "trec", 959_380, 2, 16)


def test_a_sweep_shows_only_its_chosen_trial(db_url: str) -> None:
    """Unselected trials stay out of the task table; after selection the winner's artifact is the task's."""
    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM)
        _, sweep, _ = records.create_task_and_job(
            s, name="rte", dataset_sha256="d" * 64, method="sweep", hyperparameters={"grid": "quick"}, kind="sweep")
        trials = [records.create_job(s, "rte", method="adapter", hyperparameters={"m": m}, kind="trial",
                                     parent_id=sweep.id) for m in (8, 64)]
        for trial, m, acc in zip(trials, (8, 64), (0.7, 0.6)):
            records.mark_running(s, trial.id, f"worker-{m}", m)
            records.mark_succeeded(s, trial.id, artifact_fields(bb.id, bytes_=m * 1000, m=m),
                                   {"validation": {"accuracy": acc}})
        sweep_id, ids = sweep.id, [t.id for t in trials]
    with session_scope(db_url, readonly=True) as s:
        (row,) = queries.task_table(s)
        assert (row["status"], row["method"], row["job_id"]) == ("queued", None, sweep_id)
        assert queries.storage_report(s)["total_bytes"] == 72_000
    with session_scope(db_url) as s:
        records.complete_sweep(s, sweep_id, ids[0])
    with session_scope(db_url, readonly=True) as s:
        (row,) = queries.task_table(s)
        status = queries.job_status(s, sweep_id)
        assert queries.storage_report(s)["total_bytes"] == 8_000
    assert (row["status"], row["adapter_size"], row["val_accuracy"], row["artifact_job_id"]) == (
        "succeeded", 8, 0.7, ids[0])
    assert [(t["job_id"], t["val_accuracy"], t["chosen"], t["worker"]) for t in status["trials"]] == [
        (ids[0], 0.7, True, "worker-8:8"), (ids[1], 0.6, False, "worker-64:64")]


def test_job_status_reports_progress_worker_and_result(db_url: str) -> None:
    """job_status gives progress while running, and metrics plus artifact once succeeded."""
    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM)
        _, job, _ = records.create_task_and_job(s, name="t", dataset_sha256="d" * 64, method="adapter",
                                                hyperparameters={"m": 64})
        records.mark_running(s, job.id, "gpu-node", 99)
        records.record_progress(s, job.id, 2, 40, 90, 0.25)
        job_id = job.id
    with session_scope(db_url, readonly=True) as s:
        running = queries.job_status(s, job_id[:8])
    assert (running["job_id"], running["task"], running["status"], running["worker"], running["attempts"]) == (
        job_id, "t", "running", "gpu-node:99", 0)
    assert running["progress"] == {"epoch": 2, "step": 40, "total_steps": 90, "loss": 0.25}
    assert running["artifact"] is None and "trials" not in running
    with session_scope(db_url) as s:
        records.mark_succeeded(s, job_id, artifact_fields(bb.id, bytes_=10), {"test": {"accuracy": 0.5}})
    with session_scope(db_url, readonly=True) as s:
        done = queries.job_status(s, job_id)
        with pytest.raises(UnknownJob):
            queries.job_status(s, "ffffffff-nope")
    assert done["status"] == "succeeded" and done["metrics"] == {"test": {"accuracy": 0.5}}
    assert (done["artifact"]["bytes"], done["artifact"]["backbone"]) == (10, "all-MiniLM-L6-v2")


def test_list_jobs_filters_by_status_and_task(db_url: str) -> None:
    """list_jobs returns jobs oldest first, filtered by status or task name."""
    _three_tasks(db_url)
    with session_scope(db_url) as s:
        records.create_task_and_job(s, name="new", dataset_sha256="1" * 64, method="adapter", hyperparameters={})
    with session_scope(db_url, readonly=True) as s:
        assert [j["task"] for j in queries.list_jobs(s)] == ["sst2", "trec", "agnews", "new"]
        assert [j["task"] for j in queries.list_jobs(s, "queued")] == ["new"]
        assert [j["status"] for j in queries.list_jobs(s, task="trec")] == ["succeeded"]
        assert len(queries.list_jobs(s, limit=2)) == 2


def test_recovery_lists_find_orphaned_and_stale_queued_jobs(db_url: str) -> None:
    """A running job without a recent heartbeat and a queued job left unpicked are listed; fresh ones are not."""
    with session_scope(db_url) as s:
        ids = {}
        for name in ("stale-run", "fresh-run", "stale-queue", "fresh-queue"):
            _, job, _ = records.create_task_and_job(s, name=name, dataset_sha256=name.encode().hex().ljust(64, "0"),
                                                    method="adapter", hyperparameters={})
            ids[name] = job.id
        for name in ("stale-run", "fresh-run"):
            records.mark_running(s, ids[name], "h", 1)
        long_ago = utcnow() - timedelta(minutes=10)
        s.get(Job, ids["stale-run"]).heartbeat_at = long_ago
        s.get(Job, ids["stale-queue"]).enqueued_at = long_ago
    now = utcnow()
    with session_scope(db_url, readonly=True) as s:
        orphans = queries.orphaned_jobs(s, now, 60)
        stale = queries.stale_queued_jobs(s, now, timedelta(seconds=60))
    assert [(o["job_id"], o["task"], o["worker"]) for o in orphans] == [(ids["stale-run"], "stale-run", "h:1")]
    assert [q["job_id"] for q in stale] == [ids["stale-queue"]]


def _count_statements(url: str, fn) -> int:
    statements = []
    engine = get_engine(url)
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with session_scope(url, readonly=True) as s:
            fn(s)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return len([sql for sql in statements if not sql.startswith("BEGIN")])


def test_task_table_and_storage_take_one_statement_whatever_the_size(sqlite_url: str) -> None:
    """The task table and storage report each run a single SQL statement, for 3 tasks as for 300 (no N+1)."""
    _three_tasks(sqlite_url)
    small = (_count_statements(sqlite_url, queries.task_table), _count_statements(sqlite_url, queries.storage_report))
    with session_scope(sqlite_url) as s:
        bulk_catalogue(s, 300, prefix_names=True)
    large = (_count_statements(sqlite_url, queries.task_table), _count_statements(sqlite_url, queries.storage_report))
    assert small == large == (1, 1)


def test_a_10000_task_catalogue_answers_tasks_and_storage(db_url: str) -> None:
    """With 10,000 tasks the task table has 10,000 correct rows and the storage totals are exact (times printed)."""
    n = 10_000
    sizes = [2_423_816 + 1_096 + (i % 7) for i in range(n)]
    start = time.perf_counter()
    with session_scope(db_url) as s:
        bulk_catalogue(s, n, bytes_of=sizes.__getitem__)
    inserted = time.perf_counter()
    with session_scope(db_url, readonly=True) as s:
        rows = queries.task_table(s)
        tabled = time.perf_counter()
        report = queries.storage_report(s)
        reported = time.perf_counter()
    dialect = db_url.split(":", 1)[0]
    print(f"\n[{dialect}] 10,000 tasks: bulk insert {inserted - start:.2f} s, task_table {tabled - inserted:.3f} s, "
          f"storage_report {reported - tabled:.3f} s")
    assert len(rows) == n and rows[0]["task"] == "task-00000" and rows[-1]["task"] == "task-09999"
    assert all(r["status"] == "succeeded" and r["adapter_size"] == 64 for r in rows)
    assert rows[1234]["bytes"] == sizes[1234] and rows[1234]["val_accuracy"] == pytest.approx(0.1234)
    assert report["task_count"] == n
    assert report["total_bytes"] == sum(sizes) == report["tasks"][-1]["cumulative_bytes"]
    assert report["full_copy_total_bytes"] == n * W
    law = {2: 2_423_816, 3: 2_425_356, 4: 2_426_896}  # m=64, C=2,3,4: (605954 + 385*(C-2)) * 4
    assert report["theoretical_total_bytes"] == sum(law[2 + i % 3] for i in range(n))
