"""Cancelled jobs and retries, the 0002 migration on an existing catalogue, a corrupt catalogue, `db check`,
`jobs --limit`, and labels that look alike.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from catalogue_fixtures import db_url, pg_database, pg_url, sqlite_url  # noqa: F401
from click.testing import CliRunner
from sqlalchemy import text

from streamlearn import dispatch, jobs
from streamlearn.catalogue import records, session
from streamlearn.catalogue.models import Job, JobKind, JobStatus, utcnow
from streamlearn.catalogue.session import session_scope
from streamlearn.cli import main
from streamlearn.errors import InvalidConfig, InvalidDataset

CORPUS = Path(__file__).parent / "bad_data"
HP = {"method": {"method": "adapter"}, "train": {"lr": None, "epochs": 1}}


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Capture the job ids sent to the broker instead of sending them."""
    ids: list[str] = []
    monkeypatch.setattr(dispatch, "enqueue", lambda job_id, settings=None: ids.append(job_id))
    return ids


def _job(url: str | None = None, name: str = "t", kind: JobKind = JobKind.TRAIN) -> str:
    with session_scope(url) as s:
        _, job, _ = records.create_task_and_job(s, name=name, dataset_sha256="0" * 64, method="adapter",
                                                hyperparameters=HP, kind=kind)
        return job.id


def _status(job_id: str, url: str | None = None) -> str:
    with session_scope(url, readonly=True) as s:
        return str(s.get(Job, job_id).status)


def _upgrade_to(url: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(session.migrations_dir()))
    with session.make_engine(url).connect() as conn, session.migration_transaction(conn):
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def test_migration_upgrades_a_0001_catalogue_in_place_and_allows_cancelled(db_url: str) -> None:
    """A catalogue made by schema 0001 keeps its rows through 0002_hardening, which then accepts `cancelled`."""
    _upgrade_to(db_url, "0001")
    with session.make_engine(db_url).begin() as conn:
        conn.execute(text("INSERT INTO tasks (name, created_at, dataset_sha256, files, rows, labels, text_field, "
                          "label_field) VALUES ('old', CURRENT_TIMESTAMP, :sha, '{}', '{}', '[]', 'text', 'label')"),
                     {"sha": "1" * 64})
        conn.execute(text("INSERT INTO jobs (id, task_id, kind, method, hyperparameters, spec_sha256, status, "
                          "attempts, chosen, created_at, enqueued_at) SELECT 'job-1', id, 'train', 'adapter', '{}', "
                          ":sha, 'queued', 0, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM tasks"),
                     {"sha": "2" * 64})
        # a sweep's trial and an artifact and metric of the job: rows that reference `jobs`, which the
        # SQLite rebuild of that table must keep (a cascading DROP would delete them)
        conn.execute(text("INSERT INTO jobs (id, task_id, kind, parent_id, method, hyperparameters, spec_sha256, "
                          "status, attempts, chosen, created_at, enqueued_at) SELECT 'trial-1', id, 'trial', 'job-1', "
                          "'adapter', '{}', :sha, 'succeeded', 1, true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM tasks"),
                     {"sha": "3" * 64})
        conn.execute(text("INSERT INTO backbones (id, name, path, fingerprint, layers, hidden, params, bytes, "
                          "created_at) VALUES (1, 'b', '/b', :sha, 2, 32, 1, 4, CURRENT_TIMESTAMP)"), {"sha": "5" * 64})
        conn.execute(text("INSERT INTO artifacts (job_id, backbone_id, uri, sha256, bytes, trainable_params, "
                          "stored_params, method, classes, created_at) VALUES ('trial-1', 1, "
                          "'tasks/old/trial-1.safetensors', :sha, 10, 1, 1, 'adapter', 2, CURRENT_TIMESTAMP)"),
                     {"sha": "4" * 64})
        conn.execute(text("INSERT INTO metrics (job_id, split, name, value) VALUES ('trial-1', 'test', 'accuracy', 0.5)"))
    assert session.upgrade(db_url) == session.HEAD_REVISION
    with session.make_engine(db_url).connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("jobs", "artifacts", "metrics")}
    assert counts == {"jobs": 2, "artifacts": 1, "metrics": 1}
    with session_scope(db_url) as s:
        assert records.find_task(s, "OLD").name == "old"
        assert records.mark_cancelled(s, "job-1") == ["job-1"]
    assert _status("job-1", db_url) == "cancelled"


def test_migration_stops_with_the_names_of_tasks_that_differ_only_in_case(db_url: str) -> None:
    """Two tasks `same` and `Same` from before the rule stop the upgrade with a message naming them; nothing changes."""
    _upgrade_to(db_url, "0001")
    with session.make_engine(db_url).begin() as conn:
        for name in ("same", "Same"):
            conn.execute(text("INSERT INTO tasks (name, created_at, dataset_sha256, files, rows, labels, text_field, "
                              "label_field) VALUES (:n, CURRENT_TIMESTAMP, :sha, '{}', '{}', '[]', 'text', 'label')"),
                         {"n": name, "sha": "1" * 64})
    with pytest.raises(RuntimeError, match=r"tasks differ only in case \(same\)"):
        session.upgrade(db_url)
    assert session.current_revision(db_url) == "0001"


def test_cancelled_queued_job_is_never_started(isolated_home) -> None:
    """A queued job cancelled before a worker takes it is skipped by the worker's claim and cannot be marked running."""
    from streamlearn.settings import get_settings

    job_id = _job()
    assert jobs.cancel(job_id) == [job_id]
    assert jobs.claim(job_id, get_settings()) == ("cancelled", None)
    assert _status(job_id) == "cancelled"
    with session_scope() as s, pytest.raises(records.InvalidTransition):
        records.mark_running(s, job_id, "host", 1)


def test_cancel_of_a_sweep_cancels_its_unfinished_trials(isolated_home) -> None:
    """Cancelling a sweep marks it and every queued or running trial cancelled; an ended trial keeps its status."""
    sweep = _job(kind=JobKind.SWEEP)
    with session_scope() as s:
        trials = [records.create_job(s, "t", method="adapter", hyperparameters=HP, kind=JobKind.TRIAL,
                                     parent_id=sweep).id for _ in range(3)]
        records.mark_running(s, trials[1], "host", 1)
        records.mark_failed(s, trials[2], "boom")
    assert set(jobs.cancel(sweep[:8])) == {sweep, trials[0], trials[1]}
    assert [_status(t) for t in trials] == ["cancelled", "cancelled", "failed"]
    with pytest.raises(InvalidConfig, match="already cancelled"):
        jobs.cancel(sweep)


def test_running_job_sees_the_cancel_at_its_next_step(isolated_home) -> None:
    """The heartbeat of a running job finds it cancelled, and the next progress call stops it as cancelled."""
    from streamlearn.heartbeat import Heartbeat, JobSuperseded

    job_id = _job()
    with session_scope() as s:
        records.mark_running(s, job_id, "host", 7)
    with Heartbeat(job_id, "host", 7, interval=0.05, time_limit=60) as beat:
        beat.progress(1, 1, 10, 0.5)
        jobs.cancel(job_id)
        deadline = time.monotonic() + 10
        with pytest.raises(JobSuperseded) as stopped:
            while time.monotonic() < deadline:
                beat.progress(1, 2, 10, 0.4)
                time.sleep(0.02)
    assert stopped.value.cancelled
    assert _status(job_id) == "cancelled"


def test_retry_queues_a_new_job_with_the_same_hyperparameters(isolated_home, sent) -> None:
    """`retry` of a failed job records and enqueues a new job of the same task; a running job cannot be retried."""
    from streamlearn.submission import retry

    job_id = _job()
    with session_scope() as s:
        records.mark_failed(s, job_id, "boom")
    again = retry(job_id)
    assert again.job_id != job_id and again.task == "t" and again.status == "queued"
    assert sent == [again.job_id]
    with session_scope(readonly=True) as s:
        assert s.get(Job, again.job_id).hyperparameters == HP
    with pytest.raises(InvalidConfig, match="only a failed or cancelled job can be retried"):
        retry(again.job_id)


def test_cancel_and_retry_commands(isolated_home, sent) -> None:
    """`cancel JOB` then `retry JOB --json` through the CLI: one line each, the new job queued."""
    job_id = _job()
    runner = CliRunner()
    result = runner.invoke(main, ["cancel", job_id[:8]])
    assert result.exit_code == 0 and result.stdout == f"cancelled job {job_id}\n"
    result = runner.invoke(main, ["retry", job_id, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "queued"
    result = runner.invoke(main, ["cancel", job_id])
    assert result.exit_code == 2 and result.stderr == f"error: job {job_id} already cancelled; nothing to cancel\n"


@pytest.mark.parametrize("command", [["tasks"], ["jobs"], ["storage"], ["status", "abcd"], ["db", "check"]])
def test_corrupt_catalogue_is_one_line_and_exit_2(isolated_home, command) -> None:
    """A catalogue file that is not a database gives one `error:` line and exit code 2, never a traceback."""
    (isolated_home / "catalogue.db").write_bytes(b"this is not a database, just bytes " * 200)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: catalogue ") and "is unusable: file is not a database" in line


def test_db_check_reports_a_healthy_catalogue_and_then_an_orphan(isolated_home, sent) -> None:
    """`db check --json` is ok after a submission; a dataset copy no task refers to makes it exit 1 and list it."""
    runner = CliRunner()
    assert runner.invoke(main, ["submit-task", str(CORPUS / "good_train.jsonl")]).exit_code == 0
    report = json.loads(runner.invoke(main, ["db", "check", "--json"]).stdout)
    assert report["ok"] and report["integrity"] == "ok" and report["revision"] == report["head"] == session.HEAD_REVISION
    orphan = isolated_home / "artifacts" / "datasets" / f"{'a' * 64}.jsonl"
    orphan.write_text("{}\n")
    result = runner.invoke(main, ["db", "check", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["unreferenced_datasets"] == [str(orphan)]


def test_jobs_lists_a_screenful_newest_first_and_all_on_request(isolated_home) -> None:
    """`jobs` shows the newest 20 of 25 jobs by default, `--limit 3` three, `--all` every one; a stale job says so."""
    with session_scope() as s:
        task, first, _ = records.create_task_and_job(s, name="t", dataset_sha256="0" * 64, method="adapter",
                                                     hyperparameters=HP)
        ids = [first.id] + [records.create_job(s, task, method="adapter", hyperparameters=HP).id for _ in range(24)]
        for i, job_id in enumerate(ids):
            s.get(Job, job_id).created_at = utcnow() - timedelta(minutes=100 - i)
        records.mark_running(s, ids[-1], "gone-host", 4242)
        s.get(Job, ids[-1]).heartbeat_at = utcnow() - timedelta(minutes=10)
    runner = CliRunner()
    rows = json.loads(runner.invoke(main, ["jobs", "--json"]).stdout)
    assert [r["job_id"] for r in rows] == ids[::-1][:20]
    assert rows[0]["stale"] and not rows[1]["stale"]
    assert len(json.loads(runner.invoke(main, ["jobs", "--json", "--limit", "3"]).stdout)) == 3
    assert len(json.loads(runner.invoke(main, ["jobs", "--json", "--all"]).stdout)) == 25
    table = runner.invoke(main, ["jobs"])
    assert "newest 20 of 25 jobs" in table.stdout and "running (stale)" in table.stdout
    assert "no heartbeat for 600 s" in table.stderr and "reconcile will re-enqueue it" in table.stderr


def test_labels_differing_only_in_case_or_whitespace_are_refused_naming_both(tmp_path) -> None:
    """`pos` and `Pos ` in one file are refused with a message naming both spellings and their lines."""
    from streamlearn.data import read_jsonl

    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n{"text": "c", "label": "Pos "}\n')
    with pytest.raises(InvalidDataset, match=r"labels.jsonl:3: field 'label': label 'Pos ' differs from label 'pos' "
                                             r"of line 1 only in case or surrounding whitespace"):
        read_jsonl(path)


def test_control_characters_in_labels_are_removed_as_in_texts(tmp_path) -> None:
    """A NUL inside a label is dropped like control characters in texts, so `po\\x00s` is the class `pos`."""
    from streamlearn.data import load_dataset

    path = tmp_path / "nul.jsonl"
    path.write_text('{"text": "a", "label": "po\\u0000s"}\n{"text": "b", "label": "neg"}\n'
                    '{"text": "c", "label": "pos"}\n{"text": "d", "label": "neg"}\n')
    assert load_dataset(path, validation=path).labels == ("neg", "pos")
    assert JobStatus.CANCELLED in records.TRANSITIONS[JobStatus.RUNNING]


def test_piped_tables_never_cut_long_values(isolated_home) -> None:
    """Piped `jobs` and `tasks` print a 64-character task name whole, and `tasks` says `1 task`."""
    name = "t" * 40 + "-long-name-that-is-64-characters-x"[: 64 - 40]
    assert len(name) == 64
    _job(name=name)
    runner = CliRunner()
    assert name in runner.invoke(main, ["jobs"]).stdout
    tasks = runner.invoke(main, ["tasks"]).stdout
    assert name in tasks and "1 task" in tasks and "1 tasks" not in tasks


def test_no_worker_hint_goes_to_stderr_when_piped(isolated_home) -> None:
    """A job queued for a minute with no worker: `status` and `jobs` print the hint on stderr, the table on stdout."""
    job_id = _job()
    with session_scope() as s:
        s.get(Job, job_id).enqueued_at = utcnow() - timedelta(seconds=60)
    for args in (["status", job_id], ["jobs"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "is a worker running? Start one with `streamlearn worker`" in result.stderr
        assert "is a worker running" not in result.stdout


def test_submit_wait_timeout_stops_waiting_with_exit_3(isolated_home) -> None:
    """`submit-task --wait --timeout 1` with no worker returns after about a second with exit 3; the job stays queued."""
    start = time.monotonic()
    result = CliRunner().invoke(main, ["submit-task", str(CORPUS / "good_train.jsonl"), "--wait", "--timeout", "1",
                                       "--json"])
    assert result.exit_code == 3, result.output
    assert "still queued after 1 s; it keeps its place" in result.stderr
    assert time.monotonic() - start < 60
    with session_scope(readonly=True) as s:
        assert [str(j.status) for j in s.query(Job)] == ["queued"]


def test_a_claim_takes_over_a_job_whose_worker_died_and_names_that_worker(isolated_home, caplog) -> None:
    """A running job held by a dead process of this host is requeued and claimed; the warning names the dead worker."""
    import socket
    import subprocess
    import sys

    from streamlearn.settings import get_settings

    job_id = _job()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    with session_scope() as s:
        records.mark_running(s, job_id, socket.gethostname(), pid)
    with caplog.at_level("WARNING", logger="streamlearn.jobs"):
        status, plan = jobs.claim(job_id, get_settings())
    assert status == "running" and plan is not None and _status(job_id) == "running"
    assert f"its worker {socket.gethostname()}:{pid} is gone; taking it over" in caplog.text
