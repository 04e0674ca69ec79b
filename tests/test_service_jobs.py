"""In-process tests of the service recipes: submit, idempotent run_task, heartbeat ownership, reconcile.

No worker process here (the integration tests have those): `run_task` is called as a worker would.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest

from streamlearn import jobs, pipeline, recovery
from streamlearn.catalogue import queries, records
from streamlearn.catalogue.models import Job, utcnow
from streamlearn.catalogue.session import session_scope
from streamlearn.errors import InvalidDataset, TransientError
from streamlearn.settings import get_settings


@pytest.fixture()
def service(isolated_home, tiny_backbone_dir, monkeypatch):
    """An embedded service home on the tiny backbone, with quick progress writes."""
    monkeypatch.setenv("STREAMLEARN_BACKBONE", tiny_backbone_dir)
    monkeypatch.setenv("STREAMLEARN_PROGRESS_INTERVAL", "0.05")
    get_settings.cache_clear()
    return isolated_home


def _submit(files, **train) -> str:
    method = {"method": "adapter", "adapter_size": 8, "top_k": 1, "sigma": 1e-2, "pooling": "mean"}
    config = {"epochs": 2, "lr": None, "batch_size": 32, "max_length": 32, "seed": 0, "warmup": 0.1,
              "weight_decay": 0.0, "max_grad_norm": 1.0, **train}
    from streamlearn.submission import SubmitRequest, submit

    return submit(SubmitRequest(files["train"], name="tiny", validation=files["validation"], test=files["test"],
                                method=method, train_config=config)).job_id


def _state(job_id: str) -> dict:
    with session_scope(readonly=True) as s:
        return queries.job_status(s, job_id)


def _artifacts(home) -> list[str]:
    folder = home / "artifacts" / "tasks" / "tiny"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_run_task_trains_once_and_records_artifact_and_metrics(service, tiny_task_files):
    """A queued job is trained, its artifact written, and its row succeeded with metrics and worker recorded."""
    job_id = _submit(tiny_task_files)
    assert pipeline.run_task(job_id) == "succeeded"
    state = _state(job_id)
    assert state["status"] == "succeeded" and state["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert state["progress"]["step"] == state["progress"]["total_steps"] == 4
    assert set(state["metrics"]) == {"validation", "test"}
    assert state["artifact"]["uri"] == f"tasks/tiny/{job_id}.safetensors"
    assert _artifacts(service) == [f"{job_id}.json", f"{job_id}.safetensors"]


def test_run_task_on_a_succeeded_job_changes_nothing(service, tiny_task_files, monkeypatch):
    """A second delivery of a finished job is a no-op: no training, same row."""
    job_id = _submit(tiny_task_files)
    pipeline.run_task(job_id)
    before = _state(job_id)
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("retrained a finished job"))
    assert pipeline.run_task(job_id) == "succeeded"
    assert _state(job_id) == before


def test_run_task_finalises_an_existing_artifact_without_retraining(service, tiny_task_files, monkeypatch):
    """If the worker saved the artifact but could not record it, the retry records it without training again."""
    job_id = _submit(tiny_task_files)
    real_finalise = jobs.finalise

    def catalogue_down(*args, **kwargs):
        raise TransientError("catalogue unavailable")

    monkeypatch.setattr(jobs, "finalise", catalogue_down)
    with pytest.raises(TransientError):
        pipeline.run_task(job_id)
    assert _state(job_id)["status"] == "running"
    saved = (service / "artifacts" / "tasks" / "tiny" / f"{job_id}.safetensors").read_bytes()

    monkeypatch.setattr(jobs, "finalise", real_finalise)
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("retrained although the artifact was complete"))
    assert pipeline.run_task(job_id) == "succeeded"
    state = _state(job_id)
    assert state["status"] == "succeeded"
    import hashlib

    assert state["artifact"]["sha256"] == hashlib.sha256(saved).hexdigest()


def test_data_error_in_the_worker_fails_the_job_with_the_message(service, tiny_task_files):
    """A stored dataset that no longer validates fails the job (no retry) with the file and line in the error."""
    job_id = _submit(tiny_task_files)
    plan = _plan(job_id)
    from streamlearn.artifacts import ArtifactStore

    stored = ArtifactStore(get_settings().artifacts).dataset_path(plan.files["train"])
    stored.write_text('{"text": "ok", "label": "pos"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InvalidDataset):
        pipeline.run_task(job_id)
    state = _state(job_id)
    assert state["status"] == "failed" and ":2:" in state["error"]
    assert _artifacts(service) == []


def _plan(job_id: str) -> jobs.JobPlan:
    with session_scope(readonly=True) as s:
        return jobs.plan_of(records.find_job(s, job_id))


def _set_running(job_id: str, host: str, pid: int, heartbeat_age: float = 0.0) -> None:
    with session_scope() as s:
        records.mark_running(s, job_id, host, pid)
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=heartbeat_age)


def test_run_task_leaves_a_job_of_a_live_worker_alone(service, tiny_task_files):
    """A job another worker is running with a fresh heartbeat is not taken over."""
    job_id = _submit(tiny_task_files)
    _set_running(job_id, "another-host", 4242)
    assert pipeline.run_task(job_id) == "running elsewhere"
    state = _state(job_id)
    assert state["status"] == "running" and state["worker"] == "another-host:4242" and state["attempts"] == 0


def test_run_task_takes_over_a_job_whose_heartbeat_stopped(service, tiny_task_files):
    """A running job without a heartbeat for longer than the timeout is requeued and run here."""
    job_id = _submit(tiny_task_files)
    _set_running(job_id, "another-host", 4242, heartbeat_age=get_settings().heartbeat_timeout + 5)
    assert pipeline.run_task(job_id) == "succeeded"
    state = _state(job_id)
    assert state["attempts"] == 1 and state["worker"].startswith(socket.gethostname())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reconcile_requeues_the_job_of_a_dead_local_worker_at_once(service, tiny_task_files):
    """A running job whose worker pid on this host is gone is requeued and re-sent without waiting for the timeout."""
    job_id = _submit(tiny_task_files)
    _set_running(job_id, socket.gethostname(), _dead_pid())
    messages = service / "queue" / "messages"
    before = len(list(messages.iterdir()))
    assert recovery.reconcile() == [job_id]
    state = _state(job_id)
    assert state["status"] == "queued" and state["attempts"] == 1 and state["worker"] is None
    assert len(list(messages.iterdir())) == before + 1
    assert recovery.reconcile() == []  # nothing stale any more


def test_reconcile_leaves_live_jobs_and_requeues_stale_queued_ones(service, tiny_task_files, monkeypatch):
    """Fresh running jobs stay; a queued job older than the queued timeout is re-sent once."""
    job_id = _submit(tiny_task_files)
    assert recovery.reconcile() == []
    monkeypatch.setenv("STREAMLEARN_QUEUED_TIMEOUT", "0.001")
    get_settings.cache_clear()
    assert recovery.reconcile() == [job_id]
    assert _state(job_id)["attempts"] == 1


def test_idle_queue_warning_names_the_command_to_start_a_worker(service, tiny_task_files):
    """With a job waiting and no live worker, status explains how to start one; with a live worker it is quiet."""
    job_id = _submit(tiny_task_files)
    later = utcnow() + timedelta(seconds=60)
    with session_scope(readonly=True) as s:
        warning = recovery.idle_queue_warning(s, now=later)
    assert "streamlearn worker" in warning and "1 job(s) queued" in warning
    other = _submit(tiny_task_files, seed=1)
    _set_running(other, "another-host", 1)
    with session_scope(readonly=True) as s:
        assert recovery.idle_queue_warning(s, now=utcnow()) is None
    assert job_id != other


def test_heartbeat_stops_the_job_when_another_worker_took_it(service, tiny_task_files):
    """Once the row says another worker owns the job, the next progress call raises JobSuperseded."""
    from streamlearn.heartbeat import Heartbeat, JobSuperseded

    job_id = _submit(tiny_task_files)
    _set_running(job_id, "me", 1)
    with Heartbeat(job_id, "me", 1, interval=0.02, time_limit=60) as beat:
        beat.progress(1, 1, 10, 0.5)
        with session_scope() as s:
            records.requeue(s, job_id)
            records.mark_running(s, job_id, "other", 2)
        import time

        deadline = time.monotonic() + 5
        while not beat.superseded and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(JobSuperseded):
            beat.progress(1, 2, 10, 0.4)
    assert _state(job_id)["worker"] == "other:2"


def test_submit_task_flags_default_to_the_config_defaults():
    """submit-task's training flags default to MethodConfig's and TrainConfig's defaults, so CLI and API jobs hash alike."""
    from streamlearn.cli.service import submit_task_command
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    defaults = {p.name: p.default for p in submit_task_command.params}
    expected = {**dataclasses.asdict(MethodConfig()), **dataclasses.asdict(TrainConfig())}
    for name, value in expected.items():
        assert defaults[name] == value, name


def test_worker_app_uses_late_acks_prefetch_one_and_a_visibility_above_the_time_limit(isolated_home, monkeypatch):
    """The worker's Celery settings protect long jobs (DESIGN.md, Modes)."""
    monkeypatch.setenv("STREAMLEARN_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("STREAMLEARN_TASK_TIME_LIMIT", "1000")
    get_settings.cache_clear()
    from workers.app import create_app

    conf = create_app().conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit == 1000
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit >= 1000
    assert conf.result_backend is None


def test_worker_task_retries_transient_errors_and_not_user_errors(isolated_home, monkeypatch):
    """The task maps a TransientError to a Celery retry and a StreamlearnError to a plain return."""
    from celery.exceptions import Retry

    from streamlearn.errors import InvalidConfig
    from workers import tasks

    def transient(job_id):
        raise TransientError("database locked")

    def user_error(job_id):
        raise InvalidConfig("bad flag")

    monkeypatch.setattr(pipeline, "run_task", transient)
    monkeypatch.setattr(tasks.train, "retry", lambda **kw: Retry("retry", when=kw["countdown"]))
    with pytest.raises(Retry):
        tasks.train.run("job-1")
    monkeypatch.setattr(pipeline, "run_task", user_error)
    assert tasks.train.run("job-1") is None
    assert tasks.backoff(0) == 2 and tasks.backoff(10) == 64


def test_submission_fields_are_the_config_dataclasses_fields():
    """`SubmitRequest`'s method and training fields are exactly MethodConfig's and TrainConfig's, and unknown options are refused."""
    from streamlearn.errors import InvalidConfig
    from streamlearn.methods import MethodConfig
    from streamlearn.submission import METHOD_FIELDS, TRAIN_FIELDS, SubmitRequest
    from streamlearn.training import TrainConfig

    assert set(METHOD_FIELDS) == set(MethodConfig().to_dict())
    assert set(TRAIN_FIELDS) == set(TrainConfig().to_dict())
    with pytest.raises(InvalidConfig, match="unknown submission options: colour"):
        SubmitRequest.from_options("x.jsonl", colour="red")
