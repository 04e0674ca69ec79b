"""A sweep's trials in the catalogue: fan-out at submission, one selection after the last trial, cleanup."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from catalogue_fixtures import MINILM, db_url, pg_database, pg_url, sqlite_url  # noqa: F401

from streamlearn import dispatch, trials
from streamlearn.artifacts import ArtifactStore
from streamlearn.catalogue import queries, records
from streamlearn.catalogue.models import Artifact, Job, JobStatus, Metric
from streamlearn.catalogue.session import session_scope
from streamlearn.data import DataSpec
from streamlearn.errors import BrokerUnavailable
from streamlearn.settings import get_settings
from streamlearn.sweep import resolve

METHOD = {"method": "adapter", "adapter_size": 64, "top_k": 1, "sigma": 0.01, "pooling": "mean"}
TRAIN = {"epochs": 3, "lr": None, "batch_size": 32, "max_length": 128, "seed": 0, "warmup": 0.1,
         "weight_decay": 0.0, "max_grad_norm": 1.0}


@pytest.fixture()
def catalogue(isolated_home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    """An isolated home whose catalogue is a fresh SQLite or PostgreSQL database."""
    monkeypatch.setenv("STREAMLEARN_DATABASE_URL", db_url)
    get_settings.cache_clear()
    return isolated_home


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Capture the job ids sent to the broker instead of sending them."""
    ids: list[str] = []
    monkeypatch.setattr(dispatch, "enqueue", lambda job_id, settings=None: ids.append(job_id))
    return ids


def _submit(files: dict[str, Path], grid: str = "m=8,64;lr=1e-3", **kwargs) -> tuple[str, list[str]]:
    """Submit a sweep of the tiny task; return the sweep id and its trial ids in grid order."""
    spec = resolve(None, grid, kwargs.pop("seeds", None), kwargs.pop("prefer_smaller", None))
    from streamlearn.submission import SubmitRequest, submit

    submission = submit(SubmitRequest(files["train"], sweep=spec, method=METHOD, train_config=TRAIN, spec=DataSpec(),
                                      name="tiny", validation=files["validation"], test=files["test"], **kwargs))
    with session_scope(readonly=True) as s:
        ids = [t["job_id"] for t in queries.job_status(s, submission.job_id)["trials"]]
    return submission.job_id, ids


def _succeed(job_id: str, val: float, size: int) -> Path:
    """Walk a trial to succeeded with a fake artifact file of `size` bytes; return the file."""
    path = ArtifactStore(get_settings().artifacts).task_artifact_path("tiny", job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    path.with_suffix(".json").write_text("{}")
    with session_scope() as s:
        records.mark_running(s, job_id, "host", 1)
        bb = records.ensure_backbone(s, MINILM)
        records.mark_succeeded(s, job_id, artifact={
            "uri": str(path.relative_to(get_settings().artifacts)), "sha256": "a" * 64, "bytes": size,
            "trainable_params": size // 4, "stored_params": size // 4, "method": "adapter", "adapter_size": 8,
            "classes": 2, "backbone_id": bb.id,
        }, metrics={"validation": {"accuracy": val, "macro_f1": val}, "test": {"accuracy": val - 0.1}})
    return path


def _fail(job_id: str, message: str = "boom") -> None:
    with session_scope() as s:
        records.mark_failed(s, job_id, message)


def test_submit_records_a_sweep_and_enqueues_each_trial_not_the_parent(catalogue, tiny_task_files, sent):
    """One sweep job and one queued trial per grid point are recorded; only the trials are sent."""
    sweep_id, ids = _submit(tiny_task_files, "m=8,64;lr=1e-4,1e-3", seeds=2)
    assert len(ids) == 8 and sent == ids and sweep_id not in sent
    with session_scope(readonly=True) as s:
        info = queries.job_status(s, sweep_id)
        assert (info["kind"], info["status"], info["method"]) == ("sweep", "queued", "sweep")
        assert info["hyperparameters"]["sweep"]["grid"] == {"m": [8, 64], "lr": [1e-4, 1e-3]}
        hps = [t["hyperparameters"] for t in info["trials"]]
        assert [(h["method"]["adapter_size"], h["train"]["lr"], h["train"]["seed"]) for h in hps][:4] == [
            (8, 1e-4, 0), (8, 1e-4, 1), (8, 1e-3, 0), (8, 1e-3, 1)]
        assert all(t["status"] == "queued" and t["kind"] == "trial" for t in info["trials"])


def test_identical_resubmit_returns_the_sweep_without_new_trials(catalogue, tiny_task_files, sent):
    """Submitting the same sweep again returns the first one and enqueues nothing."""
    first, ids = _submit(tiny_task_files)
    again, ids_again = _submit(tiny_task_files)
    assert again == first and ids_again == ids and len(sent) == 2


def test_last_trial_to_end_selects_the_best_and_deletes_the_losers(catalogue, tiny_task_files, sent):
    """Selection waits for every trial; then the best is chosen, loser rows and files go, metrics stay."""
    sweep_id, (small, big) = _submit(tiny_task_files)
    big_file = _succeed(big, 0.90, 4000)
    assert trials.trial_ended(big) is None  # the other trial is still queued
    small_file = _succeed(small, 0.85, 1000)
    assert trials.trial_ended(small) == big
    assert big_file.exists() and not small_file.exists() and not small_file.with_suffix(".json").exists()
    with session_scope(readonly=True) as s:
        info = queries.job_status(s, sweep_id)
        assert info["status"] == "succeeded"
        assert [(t["job_id"], t["chosen"], t["val_accuracy"]) for t in info["trials"]] == [
            (small, False, 0.85), (big, True, 0.90)]
        assert [a.job_id for a in s.query(Artifact)] == [big]
        assert s.query(Metric).filter(Metric.job_id == small).count() == 3
        row = queries.task_table(s)[0]
        assert (row["artifact_job_id"], row["bytes"], row["status"]) == (big, 4000, "succeeded")
        assert queries.storage_report(s)["total_bytes"] == 4000


def test_prefer_smaller_spec_keeps_the_smaller_close_trial(catalogue, tiny_task_files, sent):
    """With --prefer-smaller 0.1 a trial 5 points worse but 4x smaller wins."""
    sweep_id, (small, big) = _submit(tiny_task_files, prefer_smaller=0.1)
    _succeed(small, 0.85, 1000)
    _succeed(big, 0.90, 4000)
    assert trials.settle(sweep_id) == small


def test_a_failed_trial_does_not_fail_the_sweep(catalogue, tiny_task_files, sent):
    """The best of the succeeded trials wins, and the failed trial's stray file is removed."""
    sweep_id, (bad, good) = _submit(tiny_task_files)
    stray = ArtifactStore(get_settings().artifacts).task_artifact_path("tiny", bad)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"partial")
    _succeed(good, 0.7, 1000)
    _fail(bad)
    assert trials.trial_ended(bad) == good
    assert not stray.exists()
    with session_scope(readonly=True) as s:
        assert s.get(Job, sweep_id).status == JobStatus.SUCCEEDED


def test_all_trials_failed_fails_the_sweep_with_their_errors(catalogue, tiny_task_files, sent):
    """When every trial fails the sweep fails, and its error lists the trials' errors."""
    sweep_id, (a, b) = _submit(tiny_task_files)
    _fail(a, "out of memory")
    _fail(b, "bad data")
    assert trials.trial_ended(b) is None
    with session_scope(readonly=True) as s:
        sweep = s.get(Job, sweep_id)
        assert sweep.status == JobStatus.FAILED
        assert sweep.error == "all 2 trials failed: bad data; out of memory"


def test_concurrent_finishers_select_exactly_once(catalogue, tiny_task_files, sent):
    """Eight threads settling the same finished sweep at once: exactly one selection happens."""
    sweep_id, ids = _submit(tiny_task_files, "m=8,16,32,64")
    for i, job_id in enumerate(ids):
        _succeed(job_id, 0.5 + i / 100, 1000 * (i + 1))
    barrier, results = threading.Barrier(8), []

    def finish() -> None:
        barrier.wait()
        results.append(trials.settle(sweep_id))

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and results.count(ids[-1]) == 1 and results.count(None) == 7
    with session_scope(readonly=True) as s:
        assert [a.job_id for a in s.query(Artifact)] == [ids[-1]]


def test_reconcile_step_settles_sweeps_whose_trials_all_ended(catalogue, tiny_task_files, sent):
    """A sweep left unsettled (its last finisher crashed) is completed by `settle_ready`."""
    sweep_id, (a, b) = _submit(tiny_task_files)
    _succeed(a, 0.6, 1000)
    with session_scope(readonly=True) as s:
        assert queries.sweeps_ready(s) == []
    _succeed(b, 0.8, 1000)  # no trial_ended: as if the worker died right after the commit
    with session_scope(readonly=True) as s:
        assert queries.sweeps_ready(s) == [sweep_id]
    assert trials.settle_ready() == [sweep_id]
    assert trials.settle_ready() == []


def test_first_trial_start_marks_the_sweep_running_once(catalogue, tiny_task_files, sent):
    """`start_sweep` moves a queued sweep to running, without a worker, and only once."""
    sweep_id, _ = _submit(tiny_task_files)
    with session_scope() as s:
        assert records.start_sweep(s, sweep_id) is True
        assert records.start_sweep(s, sweep_id) is False
    with session_scope(readonly=True) as s:
        sweep = s.get(Job, sweep_id)
        assert (sweep.status, sweep.worker) == (JobStatus.RUNNING, None)
        assert queries.orphaned_jobs(s, sweep.started_at, 0) == []


def test_broker_down_fails_the_unsent_trials_and_the_sweep(catalogue, tiny_task_files, monkeypatch):
    """If the broker refuses the trials, they are recorded failed, the sweep too, and the error says so."""
    def refuse(job_id, settings=None):
        raise BrokerUnavailable("broker at filesystem:// did not answer")

    monkeypatch.setattr(dispatch, "enqueue", refuse)
    with pytest.raises(BrokerUnavailable, match="2 of 2 trials"):
        _submit(tiny_task_files)
    with session_scope(readonly=True) as s:
        statuses = sorted((j.kind, j.status) for j in s.query(Job))
    assert statuses == [("sweep", "failed"), ("trial", "failed"), ("trial", "failed")]
