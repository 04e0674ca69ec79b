"""Writes to the catalogue: rows round-trip, and job statuses follow the transition table only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from catalogue_fixtures import MINILM, artifact_fields, db_url, pg_database, pg_url, sqlite_url  # noqa: F401
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from streamlearn.catalogue import records
from streamlearn.catalogue.models import Artifact, Backbone, Job, JobKind, JobStatus, Metric, Task, utcnow
from streamlearn.catalogue.session import session_scope
from streamlearn.errors import InvalidConfig, UnknownJob, UnknownTask

Q, R, S, F = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED


def _submit(s, name: str = "sst2", **overrides) -> Job:
    fields = dict(name=name, dataset_sha256="d" * 64, method="adapter", hyperparameters={"m": 64, "lr": 1e-3})
    return records.create_task_and_job(s, **(fields | overrides))[1]


def _job_in(url: str, status: JobStatus) -> str:
    """A job brought to `status` through the public functions only."""
    with session_scope(url) as s:
        bb = records.ensure_backbone(s, MINILM)
        job = _submit(s)
        if status in (R, S):
            records.mark_running(s, job.id, "h", 7)
        if status == S:
            records.mark_succeeded(s, job.id, artifact_fields(bb.id, bytes_=100), {})
        if status == F:
            records.mark_failed(s, job.id, "boom")
        return job.id


ACTIONS = {
    R: lambda s, j: records.mark_running(s, j, "h2", 8),
    S: lambda s, j: records.mark_succeeded(s, j, artifact_fields(1, bytes_=100), {}),
    F: lambda s, j: records.mark_failed(s, j, "later"),
    Q: lambda s, j: records.requeue(s, j),
}
IDEMPOTENT = {(S, S), (F, F)}


def test_rows_round_trip(db_url: str) -> None:
    """Backbone, task, job, artifact and metric rows read back exactly as written, JSON included."""
    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM)
        task, job, created = records.create_task_and_job(
            s, name="sst2", dataset_sha256="d" * 64, method="adapter",
            hyperparameters={"method": {"adapter_size": 64}, "train": {"lr": 1e-3, "epochs": 3}},
            files={"train": "d" * 64, "test": "e" * 64}, rows={"train": 100, "validation": 10, "test": 20},
            labels=["negative", "positive"], text_field="sentence", label_field="y", pair_field=None,
        )
        records.mark_running(s, job.id, "node-1", 4242)
        records.mark_succeeded(s, job.id, artifact_fields(bb.id, bytes_=2_423_816),
                               {"val": {"accuracy": 0.91, "macro_f1": 0.9}, "test": {"accuracy": 0.88}})
        job_id = job.id
    assert created
    with session_scope(db_url) as s:
        task = s.scalars(select(Task)).one()
        assert (task.name, task.rows, task.labels, task.text_field, task.label_field) == (
            "sst2", {"train": 100, "validation": 10, "test": 20}, ["negative", "positive"], "sentence", "y")
        assert task.files == {"train": "d" * 64, "test": "e" * 64}
        job = s.get(Job, job_id)
        assert (job.status, job.kind, job.worker, job.attempts) == (S, JobKind.TRAIN, "node-1:4242", 0)
        assert job.hyperparameters["train"]["lr"] == 1e-3
        assert job.started_at <= job.finished_at
        art = job.artifact
        assert (art.bytes, art.stored_params, art.adapter_size, art.classes, art.backbone.name) == (
            2_423_816, 605_954, 64, 2, "all-MiniLM-L6-v2")
        assert {(m.split, m.name): m.value for m in job.metrics} == {
            ("validation", "accuracy"): 0.91, ("validation", "macro_f1"): 0.9, ("test", "accuracy"): 0.88}
        assert s.scalars(select(Backbone)).one().params == 22_713_216


@pytest.mark.parametrize("start", [Q, R, S, F])
@pytest.mark.parametrize("target", [Q, R, S, F])
def test_status_changes_follow_the_transition_table(sqlite_url: str, start: JobStatus, target: JobStatus) -> None:
    """Each status change succeeds exactly when TRANSITIONS allows it (or is a documented no-op), else raises."""
    job_id = _job_in(sqlite_url, start)
    allowed = target in records.TRANSITIONS[start] or (start, target) in IDEMPOTENT
    with session_scope(sqlite_url) as s:
        if allowed:
            ACTIONS[target](s, job_id)
        else:
            with pytest.raises(records.InvalidTransition, match=f"{start} -> {target}"):
                ACTIONS[target](s, job_id)
    with session_scope(sqlite_url) as s:
        assert s.get(Job, job_id).status == (target if allowed else start)


def test_illegal_transitions_raise_on_postgresql_too(db_url: str) -> None:
    """A finished job cannot start again, nor a succeeded one fail, on either database."""
    job_id = _job_in(db_url, S)
    with session_scope(db_url) as s:
        with pytest.raises(records.InvalidTransition):
            records.mark_running(s, job_id, "h", 1)
        with pytest.raises(records.InvalidTransition):
            records.mark_failed(s, job_id, "no")
        with pytest.raises(records.InvalidTransition):
            records.requeue(s, job_id)


def test_mark_succeeded_twice_keeps_one_artifact(db_url: str) -> None:
    """Finalising a succeeded job again returns the stored artifact and adds no row."""
    job_id = _job_in(db_url, S)
    with session_scope(db_url) as s:
        again = records.mark_succeeded(s, job_id, artifact_fields(1, bytes_=999), {"test": {"accuracy": 0.1}})
        assert again.bytes == 100
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Artifact)) == 1
        assert s.scalar(select(func.count()).select_from(Metric)) == 0


def test_the_database_refuses_a_second_artifact_for_a_job(db_url: str) -> None:
    """The unique constraint on artifacts.job_id is the last guard against a double finalisation."""
    job_id = _job_in(db_url, S)
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as s:
            s.add(Artifact(job_id=job_id, **(artifact_fields(1, bytes_=5))))


def test_mark_succeeded_rejects_incomplete_artifact_fields(sqlite_url: str) -> None:
    """A missing field or an unknown backbone fingerprint raises before any write."""
    job_id = _job_in(sqlite_url, R)
    with session_scope(sqlite_url) as s:
        with pytest.raises(ValueError, match="missing"):
            records.mark_succeeded(s, job_id, {"uri": "x", "backbone_id": 1}, {})
        fields = artifact_fields(1, bytes_=5)
        del fields["backbone_id"]
        with pytest.raises(ValueError, match="unknown backbone"):
            records.mark_succeeded(s, job_id, fields | {"backbone_fingerprint": "0" * 64}, {})
        assert s.get(Job, job_id).status == R


def test_identical_resubmit_returns_the_same_job(db_url: str) -> None:
    """Same name, dataset and hyperparameters (in any key order) give back the job; force makes a new one."""
    with session_scope(db_url) as s:
        first = _submit(s, hyperparameters={"m": 64, "lr": 1e-3})
        task, again, created = records.create_task_and_job(
            s, name="sst2", dataset_sha256="d" * 64, method="adapter", hyperparameters={"lr": 1e-3, "m": 64})
        assert (again.id, created) == (first.id, False)
        _, forced, created = records.create_task_and_job(
            s, name="sst2", dataset_sha256="d" * 64, method="adapter", hyperparameters={"lr": 1e-3, "m": 64},
            force=True)
        assert created and forced.id != first.id
        other = _submit(s, hyperparameters={"m": 8, "lr": 1e-3})
        assert other.id not in (first.id, forced.id)


def test_a_failed_job_is_not_reused_by_a_resubmit(sqlite_url: str) -> None:
    """Resubmitting after a failure trains again under a new job id."""
    job_id = _job_in(sqlite_url, F)
    with session_scope(sqlite_url) as s:
        assert _submit(s).id != job_id


def test_same_name_with_another_dataset_is_refused(sqlite_url: str) -> None:
    """A task name already bound to another dataset is an InvalidConfig error."""
    with session_scope(sqlite_url) as s:
        _submit(s)
        with pytest.raises(InvalidConfig, match="another dataset"):
            _submit(s, dataset_sha256="e" * 64)


@pytest.mark.parametrize("name", ["../../etc", "", "a" * 129, "-x", "a/b", "a..b", "tab\tname"])
def test_unsafe_task_names_are_refused(sqlite_url: str, name: str) -> None:
    """Names outside the safe charset or length limit are refused before anything is written."""
    with session_scope(sqlite_url) as s:
        with pytest.raises(InvalidConfig, match="not allowed"):
            _submit(s, name=name)
        assert s.scalar(select(func.count()).select_from(Task)) == 0


def test_find_job_accepts_a_unique_prefix(sqlite_url: str) -> None:
    """A job is found by its full id or a unique prefix; unknown ids raise UnknownJob."""
    with session_scope(sqlite_url) as s:
        job = _submit(s)
        assert records.find_job(s, job.id[:8]) is job
        with pytest.raises(UnknownJob):
            records.find_job(s, "0000dead")
        with pytest.raises(UnknownTask):
            records.find_task(s, "nope")


def test_progress_is_a_heartbeat_only_while_the_worker_owns_the_job(db_url: str) -> None:
    """Progress updates the row and heartbeat for the owning worker, and reports False to anyone else."""
    job_id = _job_in(db_url, R)
    with session_scope(db_url) as s:
        before = s.get(Job, job_id).heartbeat_at
        assert records.record_progress(s, job_id, 1, 10, 30, 0.5, host="h", pid=7)
        assert not records.record_progress(s, job_id, 1, 11, 30, 0.4, host="h", pid=99)
        assert records.heartbeat(s, job_id)
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert (job.epoch, job.step, job.total_steps, job.loss) == (1, 10, 30, 0.5)
        assert job.heartbeat_at >= before
        records.mark_failed(s, job_id, "x")
        assert not records.record_progress(s, job_id, 2, 1, 30, 0.1)


def test_requeue_of_a_stale_job_happens_once(db_url: str) -> None:
    """With stale_before, a job still heartbeating is left alone and a stale one is requeued once."""
    job_id = _job_in(db_url, R)
    with session_scope(db_url) as s:
        assert records.requeue(s, job_id, stale_before=utcnow() - timedelta(minutes=1)) is None
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(minutes=5)
    cutoff = utcnow() - timedelta(minutes=1)
    with session_scope(db_url) as s:
        job = records.requeue(s, job_id, stale_before=cutoff)
        assert (job.status, job.attempts, job.worker_host, job.heartbeat_at) == (Q, 1, None, None)
        # A second reconciler with the same view finds the job freshly enqueued, hence not stale.
        assert records.requeue(s, job_id, stale_before=cutoff) is None
    with session_scope(db_url) as s:
        assert s.get(Job, job_id).attempts == 1


def test_requeue_of_a_dead_workers_job_spares_a_worker_that_took_it_over(db_url: str) -> None:
    """held_by: a reconciler that saw worker h:7 dead does not requeue the job once h2:8 has taken it over."""
    job_id = _job_in(db_url, R)  # running on h:7
    with session_scope(db_url) as s:
        # Another worker takes the job over between the reconciler's read and its write.
        records.requeue(s, job_id, held_by=("h", 7))
        records.mark_running(s, job_id, "h2", 8)
    with session_scope(db_url) as s:
        assert records.requeue(s, job_id, held_by=("h", 7)) is None
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.worker_host, job.worker_pid, job.attempts) == (R, "h2", 8, 1)
        assert records.requeue(s, job_id, held_by=("h2", 8)).status == Q


def test_ensure_backbone_registers_a_fingerprint_once(db_url: str) -> None:
    """Two registrations of the same backbone share one row."""
    with session_scope(db_url) as s:
        a = records.ensure_backbone(s, MINILM)
        b = records.ensure_backbone(s, dict(MINILM, path="/elsewhere"))
        assert a.id == b.id
        assert s.scalar(select(func.count()).select_from(Backbone)) == 1


def test_complete_sweep_keeps_only_the_winners_artifact(db_url: str) -> None:
    """Selecting a winner marks the sweep succeeded and the trial chosen, and returns the losers' URIs once."""
    with session_scope(db_url) as s:
        bb = records.ensure_backbone(s, MINILM)
        task, sweep, _ = records.create_task_and_job(
            s, name="rte", dataset_sha256="d" * 64, method="sweep", hyperparameters={"grid": "quick"}, kind="sweep")
        trials = [records.create_job(s, "rte", method="adapter", hyperparameters={"m": m}, kind="trial",
                                     parent_id=sweep.id) for m in (8, 64)]
        for trial, m in zip(trials, (8, 64)):
            records.mark_running(s, trial.id, "h", 1)
            records.mark_succeeded(s, trial.id, artifact_fields(bb.id, bytes_=m * 100, m=m, uri=f"file:///{m}"),
                                   {"validation": {"accuracy": 0.5 + m / 1000}})
        sweep_id, winner, loser = sweep.id, trials[1].id, trials[0].id
    with session_scope(db_url) as s:
        assert records.complete_sweep(s, sweep_id, winner) == ["file:///8"]
    with session_scope(db_url) as s:
        assert records.complete_sweep(s, sweep_id, winner) == []
        with pytest.raises(ValueError):
            records.complete_sweep(s, sweep_id, loser)
        assert s.get(Job, sweep_id).status == S
        assert s.get(Job, winner).chosen and not s.get(Job, loser).chosen
        assert s.scalars(select(Artifact.job_id)).all() == [winner]
        assert s.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == loser)) == 1


def test_a_failure_message_is_stored_and_a_second_failure_keeps_it(sqlite_url: str) -> None:
    """mark_failed stores the message; failing again is a no-op that keeps the first message."""
    job_id = _job_in(sqlite_url, F)
    with session_scope(sqlite_url) as s:
        records.mark_failed(s, job_id, "second")
    with session_scope(sqlite_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.error) == (F, "boom") and job.finished_at is not None
