"""The catalogue at 100,000 tasks on PostgreSQL: every read the CLI makes runs the same number of SQL
statements at K = 1,000 and at K = 100,000 (no query per task), and the pages and filters return
the right rows. Timing lives in `bench/catalogue.py` (docs/CATALOGUE.md), not here."""

from __future__ import annotations

import pytest

from bench.catalogue import counted, freshen, populate, reads

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _statements(url: str, count: int) -> dict[str, int]:
    from streamlearn import recovery
    from streamlearn.catalogue.session import get_engine, session_scope

    engine = get_engine(url)
    out = {}
    for name, fn in reads(count).items():
        with counted(engine) as seen:
            if fn is None:
                recovery.reconcile()
            else:
                with session_scope(url, readonly=True) as s:
                    fn(s)
        out[name] = seen[0]
    return out


def test_reads_run_a_constant_number_of_statements_from_1000_to_100000_tasks(postgres_url, monkeypatch, tmp_path):
    """tasks/jobs pages and filters, storage, status and one reconcile pass issue as many statements at K = 100,000 as at K = 1,000."""
    from streamlearn.catalogue import queries
    from streamlearn.catalogue.session import session_scope, upgrade
    from streamlearn.settings import get_settings

    monkeypatch.setenv("STREAMLEARN_DATABASE_URL", postgres_url)
    monkeypatch.setenv("STREAMLEARN_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    upgrade(postgres_url)
    populate(postgres_url, 1000)
    freshen(postgres_url)
    small = _statements(postgres_url, 1000)
    populate(postgres_url, 99_000, start=1000)
    freshen(postgres_url)
    large = _statements(postgres_url, 100_000)
    assert large == small, {k: (small[k], large[k]) for k in small if small[k] != large[k]}
    assert max(large.values()) <= 6

    with session_scope(postgres_url, readonly=True) as s:
        first = queries.task_table(s, limit=50)
        assert [r["task"] for r in first] == [f"task-{i:06d}" for i in range(1, 51)]
        assert first[0]["status"] == "succeeded" and first[0]["bytes"] == 2433384
        after = queries.task_table(s, limit=3, after="task-050000")
        assert [r["task"] for r in after] == ["task-050001", "task-050002", "task-050003"]
        running = queries.task_table(s, status="running")
        assert len(running) == 40 and {r["status"] for r in running} == {"running"}  # 20 per populate call
        like = queries.task_table(s, limit=500, name_like="task-0999%")
        assert [r["task"] for r in like] == [f"task-0999{i:02d}" for i in range(100)]
        queued = queries.list_jobs(s, "queued")
        assert len(queued) == 20 and {j["status"] for j in queued} == {"queued"}
        page = queries.list_jobs(s, limit=2)
        nxt = queries.list_jobs(s, limit=2, after=page[-1]["job_id"])
        assert [j["task"] for j in page + nxt] == [f"task-00000{i}" for i in range(1, 5)]  # failed jobs, 1 s apart
        assert len({j["job_id"] for j in page + nxt}) == 4
        report = queries.storage_report(s, limit=1000)
        learned = 100_000 - 2 * 30  # the last 30 tasks of each populate call have no artifact yet
        assert report["task_count"] == learned and report["tasks_shown"] == 1000
        assert report["total_bytes"] == learned * 2433384
        assert report["full_copy_total_bytes"] == learned * 90852864
        from streamlearn.storage import task_params

        assert report["theoretical_total_bytes"] == learned * task_params(6, 384, 64, 2) * 4
