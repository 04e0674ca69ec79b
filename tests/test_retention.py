"""Retention on the folder store: `gc` removes only unreferenced files, even racing a submission,
and `delete TASK` removes the task's rows and the files no other task uses."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import tiny_rows, write_jsonl
from sqlalchemy import func, select, update

from streamlearn import pipeline, retention
from streamlearn.artifacts import ArtifactStore
from streamlearn.catalogue.models import Artifact, Job, Metric, Task
from streamlearn.catalogue.session import session_scope
from streamlearn.data import DataSpec, file_sha256
from streamlearn.errors import InvalidConfig, UnknownTask
from streamlearn.settings import get_settings

METHOD = {"method": "adapter", "adapter_size": 8, "top_k": 1, "sigma": 1e-2, "pooling": "mean", "drop_layers": 0}
TRAIN = {"epochs": 1, "lr": 1e-2, "batch_size": 32, "max_length": 32, "seed": 0, "warmup": 0.1,
         "weight_decay": 0.0, "max_grad_norm": 1.0, "store_dtype": "float32"}


@pytest.fixture()
def service(isolated_home, tiny_backbone_dir, monkeypatch):
    """An embedded service home on the tiny backbone."""
    monkeypatch.setenv("STREAMLEARN_BACKBONE", tiny_backbone_dir)
    get_settings.cache_clear()
    return isolated_home


def _submit(train, name: str) -> str:
    from streamlearn.submission import SubmitRequest, submit

    return submit(SubmitRequest(train, method=METHOD, train_config=TRAIN, spec=DataSpec(), name=name)).job_id


def _age(path, seconds: float = 7200) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _stored(home) -> list[str]:
    root = home / "artifacts"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_gc_removes_only_unreferenced_files_and_dry_run_removes_nothing(service, tmp_path):
    """Strays older than the grace period go; referenced files (however old) and young strays stay."""
    train = write_jsonl(tmp_path / "a.jsonl", tiny_rows(32, seed=1))
    job = _submit(train, "a")
    assert pipeline.run_task(job) == "succeeded"
    store = ArtifactStore(get_settings().artifacts)
    store.objects.put_bytes("datasets/" + "f" * 64 + ".jsonl", b"x" * 10)
    store.objects.put_bytes("tasks/ghost/old.safetensors", b"y" * 20)
    store.objects.put_bytes("tasks/ghost/old.json", b"{}")
    store.objects.put_bytes("tasks/ghost/young.safetensors", b"z")
    for path in (service / "artifacts").rglob("*"):
        if path.is_file() and path.name != "young.safetensors":
            _age(path)
    before = _stored(service)
    dry = retention.gc(dry_run=True, grace=3600)
    assert _stored(service) == before
    expected = ["datasets/" + "f" * 64 + ".jsonl", "tasks/ghost/old.json", "tasks/ghost/old.safetensors"]
    assert [r["key"] for r in dry["removed"]] == expected and dry["bytes_freed"] == 32
    done = retention.gc(grace=3600)
    assert [r["key"] for r in done["removed"]] == expected and done["bytes_freed"] == 32
    sha = file_sha256(train)
    assert _stored(service) == [f"datasets/{sha}.jsonl", f"tasks/a/{job}.json", f"tasks/a/{job}.safetensors",
                                "tasks/ghost/young.safetensors"]
    assert done["kept"] == 3 and done["scanned"] == 6


def test_gc_racing_a_submission_between_listing_and_deletion_keeps_its_dataset(service, tmp_path):
    """A submission that references an old unreferenced dataset after gc listed it keeps the file: gc re-checks under its lock."""
    train = write_jsonl(tmp_path / "b.jsonl", tiny_rows(32, seed=2))
    store = ArtifactStore(get_settings().artifacts)
    sha, stored = store.put_dataset(train)
    _age(stored)  # an old upload whose task was deleted: unreferenced, past the grace period
    submitted: list[str] = []
    report = retention.gc(grace=60, between=lambda: submitted.append(_submit(train, "b")))
    assert report["scanned"] == 1 and report["removed"] == [] and report["kept"] == 1
    assert stored.is_file() and file_sha256(stored) == sha
    assert pipeline.run_task(submitted[0]) == "succeeded"


def test_gc_during_a_submissions_recording_cannot_lose_its_dataset(service, tmp_path, monkeypatch):
    """A gc started after a submission published its dataset copy, before its rows commit, waits for the lock and keeps the copy."""
    from streamlearn.artifacts import DatasetStaging

    train = write_jsonl(tmp_path / "c.jsonl", tiny_rows(32, seed=3))
    publish = DatasetStaging.publish
    reports: list[dict] = []
    collector: list[threading.Thread] = []

    def publish_then_gc(*args, **kwargs):
        out = publish(*args, **kwargs)
        thread = threading.Thread(target=lambda: reports.append(retention.gc(grace=0)))
        thread.start()
        collector.append(thread)
        return out

    monkeypatch.setattr(DatasetStaging, "publish", publish_then_gc)
    job = _submit(train, "c")
    collector[0].join(timeout=60)
    sha = file_sha256(train)
    assert reports and f"datasets/{sha}.jsonl" not in [r["key"] for r in reports[0]["removed"]]
    assert (service / "artifacts" / "datasets" / f"{sha}.jsonl").is_file()
    assert pipeline.run_task(job) == "succeeded"


def test_delete_task_removes_rows_then_files_but_keeps_an_artifact_another_task_uses(service, tmp_path):
    """Deleting a task removes its rows in one go and its own files; an artifact another task's row shares stays until that task goes."""
    a = _submit(write_jsonl(tmp_path / "a.jsonl", tiny_rows(32, seed=4)), "a")
    b = _submit(write_jsonl(tmp_path / "b.jsonl", tiny_rows(32, seed=5)), "b")
    for job in (a, b):
        assert pipeline.run_task(job) == "succeeded"
    with session_scope() as s:  # b's row now shares a's artifact file (as a fusion would read it)
        s.execute(update(Artifact).where(Artifact.job_id == b).values(uri=f"tasks/a/{a}.safetensors"))
    report = retention.delete_task("a")
    assert report["jobs"] == 1 and [r["key"] for r in report["removed"]] == [
        f"datasets/{file_sha256(tmp_path / 'a.jsonl')}.jsonl"]
    with session_scope(readonly=True) as s:
        assert list(s.scalars(select(Task.name))) == ["b"]
        assert s.scalar(select(func.count()).select_from(Job).where(Job.id == a)) == 0
        assert s.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == a)) == 0
    assert (service / "artifacts" / "tasks" / "a" / f"{a}.safetensors").is_file()
    report = retention.delete_task("b")
    assert sorted(r["key"] for r in report["removed"]) == sorted([
        f"datasets/{file_sha256(tmp_path / 'b.jsonl')}.jsonl", f"tasks/a/{a}.json", f"tasks/a/{a}.safetensors"])
    assert [p for p in _stored(service) if not p.startswith(f"tasks/b/{b}")] == []
    with pytest.raises(UnknownTask):
        retention.delete_task("b")


def test_delete_task_with_a_queued_job_is_refused(service, tmp_path):
    """A task whose job has not ended is not deleted (its worker would record into nothing)."""
    job = _submit(write_jsonl(tmp_path / "q.jsonl", tiny_rows(32, seed=6)), "q")
    with pytest.raises(InvalidConfig, match=f"has job {job} queued or running"):
        retention.delete_task("q")
    with session_scope(readonly=True) as s:
        assert list(s.scalars(select(Task.name))) == ["q"]
