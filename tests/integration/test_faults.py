"""Faults injected into a running service: lost messages, a database that refuses connections, an
artifact store that cannot be written, SIGTERM, two workers racing for twenty jobs, a corrupted
backbone. Real worker processes, real Redis and PostgreSQL, the tiny BERT.

Where a fault is made by other means than the real event, the test's docstring names it:
- "Redis restarted": a private `redis-server` of the test is killed and started again on its port
  (a real restart, without disturbing other users of the machine's Redis); and, on the shared
  server, FLUSHDB of the test's own database, which loses the queued messages the same way.
- "PostgreSQL down": a TCP proxy in this process between the worker and PostgreSQL stops listening
  and drops its connections, so the worker sees refused connections; the shared server keeps running.
- "artifact store full / read-only": a real tmpfs filled to the last byte, a real read-only bind
  mount (both need mount privileges), and a plain file where the task's folder must go.
(The SIGKILL-mid-training fault lives in test_service.py.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import cannot_run, tiny_rows, write_jsonl

from integration.service_helpers import (
    catalogue_url,
    cli_json,
    deliver_again,
    deliveries,
    ended,
    job_state,
    wait_for,
    wait_for_deliveries,
)

pytestmark = pytest.mark.integration

STARTED = re.compile(r"job ([0-9a-f-]{36}): started on ")
"""The line `run_task` logs when it begins to train a job (one per training run)."""


def _task(folder: Path, name: str, seed: int, rows: int = 32) -> list[str]:
    """Write a tiny task's train and validation files; return the submit-task arguments for them."""
    folder.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(folder / f"{name}.jsonl", tiny_rows(rows, seed=seed))
    validation = write_jsonl(folder / f"{name}.validation.jsonl", tiny_rows(8, seed=seed + 100))
    return [str(train), "--validation", str(validation), "--batch-size", "16"]


def _store(env: dict[str, str]) -> Path:
    return Path(env.get("STREAMLEARN_ARTIFACTS") or Path(env["STREAMLEARN_HOME"]) / "artifacts")


def _task_files(env: dict[str, str]) -> list[str]:
    """Every file under the store's tasks/ folder, relative to it (temporary files included)."""
    root = _store(env) / "tasks"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _rows(env: dict[str, str]) -> dict[str, dict]:
    """Job id -> {status, attempts, worker, artifacts} straight from the catalogue."""
    from sqlalchemy import func, select

    from streamlearn.catalogue.models import Artifact, Job
    from streamlearn.catalogue.session import session_scope

    with session_scope(catalogue_url(env), readonly=True) as s:
        counts = dict(s.execute(select(Artifact.job_id, func.count()).group_by(Artifact.job_id)).all())
        return {j.id: {"status": str(j.status), "attempts": j.attempts, "worker": j.worker_pid,
                       "artifacts": counts.get(j.id, 0)} for j in s.scalars(select(Job))}


def _training_runs(log_dir: Path) -> Counter:
    """How many times each job started training, over the full logs of every worker."""
    text = "\n".join(p.read_text(errors="replace") for p in log_dir.glob("worker-*.log"))
    return Counter(STARTED.findall(text))


def _wait_ready(log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until a worker's log says it consumes its queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(r"\bready\.", log.read_text(errors="replace")):
            return
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    pytest.fail(f"worker not ready in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def _wait_log(log_dir: Path, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(re.search(pattern, p.read_text(errors="replace")) for p in log_dir.glob("worker-*.log")):
            return
        time.sleep(0.2)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in log_dir.glob("worker-*.log"))
    pytest.fail(f"no log line matching {pattern!r} in {timeout} s:\n{logs}")


def _assert_each_succeeded_once(env: dict[str, str], ids: list[str], log_dir: Path) -> dict[str, dict]:
    rows = _rows(env)
    assert {rows[i]["status"] for i in ids} == {"succeeded"}, rows
    assert [rows[i]["artifacts"] for i in ids] == [1] * len(ids)
    runs = _training_runs(log_dir)
    assert {i: runs[i] for i in ids} == {i: 1 for i in ids}, "a job trained twice (or never)"
    files = _task_files(env)
    assert len(files) == 2 * len(ids) and all(f.endswith((".json", ".safetensors")) for f in files)
    return rows


# --------------------------------------------------------------------------------------------
# Lost messages: the catalogue is the source of truth, and every worker's reconcile re-enqueues
# queued jobs nobody picked up within STREAMLEARN_QUEUED_TIMEOUT.
# --------------------------------------------------------------------------------------------


def test_jobs_queued_when_redis_loses_its_messages_each_complete_once(scale_env, redis_db, workers, tmp_path):
    """Redis "restarted" (FLUSHDB of this test's database) while three jobs wait: a worker started afterwards re-enqueues and runs each once."""
    import redis

    env = {**scale_env, "STREAMLEARN_QUEUED_TIMEOUT": "2"}
    ids = [cli_json(env, "submit-task", *_task(tmp_path / "data", f"lost{i}", seed=i), "--epochs", "1")["job_id"]
           for i in range(3)]
    client = redis.Redis.from_url(redis_db)
    assert client.llen(env["STREAMLEARN_QUEUE"]) == 3
    client.flushdb()
    assert client.llen(env["STREAMLEARN_QUEUE"]) == 0 and client.dbsize() == 0
    assert {r["status"] for r in _rows(env).values()} == {"queued"}

    workers.start(env)
    for job_id in ids:
        assert wait_for(env, job_id, ended, 120, workers, "an end")["status"] == "succeeded"
    rows = _assert_each_succeeded_once(env, ids, tmp_path)
    assert all(rows[i]["attempts"] >= 1 for i in ids), "re-enqueued by the reconcile, so counted as a new attempt"
    for job_id in ids:  # a late duplicate, delivered for real, finds the job ended and changes nothing
        handled = deliveries(tmp_path, job_id)
        deliver_again(env, job_id)
        wait_for_deliveries(tmp_path, job_id, handled + 1, workers)
    assert _training_runs(tmp_path) == Counter({i: 1 for i in ids})
    assert _rows(env) == rows


def test_redis_restarted_under_a_connected_worker_every_queued_job_completes_once(service_env, postgres_url,
                                                                                 redis_server, workers, tmp_path):
    """A real restart of a Redis without persistence (a private server of this test, killed and started again on its port)
    under a connected worker, paused (SIGSTOP) so three jobs wait: the worker reconnects and every job completes once."""
    import redis

    server = redis_server()
    env = {**service_env, "STREAMLEARN_BROKER_URL": server.url, "STREAMLEARN_DATABASE_URL": postgres_url,
           "STREAMLEARN_QUEUED_TIMEOUT": "2"}
    proc = workers.start(env)
    _wait_ready(tmp_path / "worker-0.log", proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        ids = [cli_json(env, "submit-task", *_task(tmp_path / "data", f"wait{i}", seed=21 + i), "--epochs", "1")["job_id"]
               for i in range(3)]
        # The messages are in Redis's list, or one was popped by the worker's pending BRPOP and sits
        # unread in its socket: the restart loses the first kind, the second survives in the worker.
        assert redis.Redis.from_url(server.url).llen("streamlearn") >= 2
        server.restart()
        assert redis.Redis.from_url(server.url).dbsize() == 0
        assert {job_state(env, i)["status"] for i in ids} == {"queued"}
    finally:
        proc.send_signal(signal.SIGCONT)
    for job_id in ids:
        assert wait_for(env, job_id, ended, 180, workers, "an end")["status"] == "succeeded"
    _assert_each_succeeded_once(env, ids, tmp_path)


def test_jobs_queued_when_the_embedded_queue_folder_is_emptied_each_complete_once(service_env, workers, tmp_path):
    """Embedded broker: the message files of three queued jobs are deleted; a worker started afterwards runs each once."""
    env = {**service_env, "STREAMLEARN_QUEUED_TIMEOUT": "2"}
    ids = [cli_json(env, "submit-task", *_task(tmp_path / "data", f"lost{i}", seed=i), "--epochs", "1")["job_id"]
           for i in range(3)]
    messages = Path(env["STREAMLEARN_HOME"]) / "queue" / "messages"
    queued = list(messages.iterdir())
    assert len(queued) == 3
    for path in queued:
        path.unlink()

    workers.start(env)
    for job_id in ids:
        assert wait_for(env, job_id, ended, 120, workers, "an end")["status"] == "succeeded"
    rows = _assert_each_succeeded_once(env, ids, tmp_path)
    assert all(rows[i]["attempts"] >= 1 for i in ids)


# --------------------------------------------------------------------------------------------
# PostgreSQL refusing connections while a job finishes.
# --------------------------------------------------------------------------------------------


class RefusingProxy:
    """A TCP proxy on 127.0.0.1 to PostgreSQL that can stop accepting and drop its connections.

    `refuse()` closes the listening socket (new connections get ECONNREFUSED, as from a stopped
    server) and cuts every open connection; `accept()` listens again on the same port.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.accept()

    def accept(self) -> None:
        """Listen (again) and forward every new connection to the target."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Stop listening and cut every open connection."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave it listening.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_postgres_refusing_connections_at_finalisation_job_succeeds_once_when_it_returns(scale_env, workers, tmp_path):
    """PostgreSQL "down" (a proxy refuses and cuts connections) after training: the worker retries the finalisation,
    which succeeds once the database returns, without retraining."""
    from sqlalchemy.engine import make_url

    direct = make_url(scale_env["STREAMLEARN_DATABASE_URL"])
    proxy = RefusingProxy((direct.host, direct.port or 5432))
    worker_env = {**scale_env, "STREAMLEARN_DATABASE_URL": direct.set(host="127.0.0.1", port=proxy.port)
                  .render_as_string(hide_password=False)}
    try:
        workers.start(worker_env)
        job_id = cli_json(scale_env, "submit-task", *_task(tmp_path / "data", "pgdown", seed=3, rows=64),
                          "--epochs", "100")["job_id"]
        wait_for(scale_env, job_id, lambda s: s["status"] == "running" and (s["progress"]["step"] or 0) >= 1, 120,
                 workers, "running")
        proxy.refuse()
        assert f"pgdown/{job_id}.json" not in _task_files(scale_env), "training ended before the database went down"
        deadline = time.monotonic() + 120
        while f"pgdown/{job_id}.json" not in _task_files(scale_env):
            assert time.monotonic() < deadline, workers.logs()
            time.sleep(0.2)
        _wait_log(tmp_path, rf"job {job_id}: transient error, retry", 60)
        assert job_state(scale_env, job_id)["status"] == "running"  # the database never heard of the end
        time.sleep(1)
        proxy.accept()
        state = wait_for(scale_env, job_id, ended, 120, workers, "an end")
    finally:
        proxy.refuse()
    assert state["status"] == "succeeded", state["error"]
    rows = _assert_each_succeeded_once(scale_env, [job_id], tmp_path)
    assert rows[job_id]["attempts"] == 0, "the finalisation was retried, the job was never requeued"
    assert re.search(r"already complete: finalising without retraining", workers.logs())


# --------------------------------------------------------------------------------------------
# The artifact write fails.
# --------------------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def _can_mount(tmp_path: Path) -> bool:
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (OSError, subprocess.CalledProcessError):
        return False
    subprocess.run(["umount", str(probe)], check=True, timeout=30)
    return True


def _fill(folder: Path) -> None:
    """Write a filler file until the filesystem has no byte left."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC


@pytest.mark.parametrize("fault", ["full", "read-only", "folder-is-a-file"])
def test_artifact_write_failure_fails_the_job_clearly_and_leaves_no_partial_file(fault, service_env, workers, tmp_path):
    """A full store (a real tmpfs filled up), a read-only store (a real read-only bind mount) or a file where the task's
    folder goes: the job fails naming the store and the reason, and no file is left."""
    store = tmp_path / "store"
    store.mkdir()
    mounted = fault in ("full", "read-only")
    if mounted and not _can_mount(tmp_path):
        cannot_run("mounting a tmpfs or a read-only bind needs mount privileges here; 'folder-is-a-file' still runs")
    if fault == "full":
        _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(store))
    env = {**service_env, "STREAMLEARN_ARTIFACTS": str(store)}
    try:
        job_id = cli_json(env, "submit-task", *_task(tmp_path / "data", "nospace", seed=4), "--epochs", "1")["job_id"]
        if fault == "full":
            _fill(store)
            reason = "No space left on device"
        elif fault == "read-only":
            _mount("--bind", str(store), str(store))
            _mount("-o", "remount,ro,bind", str(store))
            reason = "Read-only file system"
        else:
            (store / "tasks").mkdir()
            (store / "tasks" / "nospace").write_text("not a folder\n")
            reason = "File exists|Not a directory"
        workers.start(env)
        state = wait_for(env, job_id, ended, 120, workers, "an end")
        assert state["status"] == "failed"
        assert re.fullmatch(rf"could not write the artifact to {re.escape(str(store))}/tasks/nospace: ({reason}).*",
                            state["error"]), state["error"]
        left = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
        assert [f for f in left if not f.startswith("datasets/") and f not in ("filler", "tasks/nospace")] == []
        assert _rows(env)[job_id]["artifacts"] == 0
    finally:
        workers.close()
        if mounted:
            subprocess.run(["umount", "-l", str(store)], timeout=30)


# --------------------------------------------------------------------------------------------
# SIGTERM: warm shutdown.
# --------------------------------------------------------------------------------------------


def test_sigterm_mid_training_finishes_the_job_then_the_worker_exits(service_env, workers, tmp_path):
    """SIGTERM while a job trains: the worker finishes that job (succeeded, once), takes no other, and exits 0."""
    proc = workers.start(service_env)
    first = cli_json(service_env, "submit-task", *_task(tmp_path / "data", "term", seed=6, rows=64), "--epochs", "100")
    second = cli_json(service_env, "submit-task", *_task(tmp_path / "data", "after", seed=7), "--epochs", "1")
    wait_for(service_env, first["job_id"], lambda s: s["status"] == "running" and (s["progress"]["step"] or 0) >= 2,
             120, workers, "running")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 0, workers.logs()
    assert job_state(service_env, first["job_id"])["status"] == "succeeded"
    assert job_state(service_env, second["job_id"])["status"] == "queued"
    assert _training_runs(tmp_path) == Counter({first["job_id"]: 1})
    assert _task_files(service_env) == [f"term/{first['job_id']}.json", f"term/{first['job_id']}.safetensors"]

    workers.start(service_env)  # the queued job was not lost with the worker
    assert wait_for(service_env, second["job_id"], ended, 120, workers, "an end")["status"] == "succeeded"


# --------------------------------------------------------------------------------------------
# Concurrency.
# --------------------------------------------------------------------------------------------


def test_twenty_tasks_on_two_workers_each_succeed_exactly_once(scale_env, workers, tmp_path):
    """Two workers on Redis + PostgreSQL, twenty tasks submitted at once: twenty successes, twenty artifacts, no job trained twice."""
    procs = [workers.start(scale_env) for _ in range(2)]
    for i, proc in enumerate(procs):
        _wait_ready(tmp_path / f"worker-{i}.log", proc)
    submits = [subprocess.Popen([sys.executable, "-m", "streamlearn", "submit-task",
                                 *_task(tmp_path / "data", f"t{i:02d}", seed=100 + i, rows=16), "--epochs", "1", "--json"],
                                env=scale_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(20)]
    ids = []
    for proc in submits:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        ids.append(json.loads(out)["job_id"])
    for job_id in ids:
        assert wait_for(scale_env, job_id, ended, 300, workers, "an end")["status"] == "succeeded"
    rows = _assert_each_succeeded_once(scale_env, ids, tmp_path)
    assert len(rows) == 20
    assert {rows[i]["attempts"] for i in ids} == {0}
    assert {rows[i]["worker"] for i in ids} == {p.pid for p in procs}, "both workers took jobs"


# --------------------------------------------------------------------------------------------
# Backbone integrity (in-process: the corruption is made inside the worker's own memory).
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def corruptible_backbone(isolated_home, tiny_backbone_dir, monkeypatch):
    """The process's cached tiny backbone, restored bit for bit (and the refusal cleared) after the test."""
    from streamlearn import pipeline
    from streamlearn.backbone import load_backbone
    from streamlearn.settings import get_settings

    monkeypatch.setenv("STREAMLEARN_BACKBONE", tiny_backbone_dir)
    monkeypatch.setenv("STREAMLEARN_PROGRESS_INTERVAL", "0.05")
    get_settings.cache_clear()
    # Recorded now, so monkeypatch's undo at teardown puts back None, whatever the test set.
    monkeypatch.setattr(pipeline, "_refusal", None)
    backbone = load_backbone(tiny_backbone_dir, "cpu")
    saved = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    yield backbone
    backbone.model.load_state_dict(saved)
    backbone.verify()


def test_backbone_changed_during_a_job_fails_it_loudly_and_the_worker_refuses_later_jobs(corruptible_backbone, tmp_path,
                                                                                         caplog, monkeypatch):
    """One weight of the resident backbone altered mid-training: that job fails naming the change, nothing is stored, and the next job is refused unclaimed."""
    import torch

    from streamlearn import pipeline
    from streamlearn.catalogue.queries import job_status
    from streamlearn.catalogue.session import session_scope
    from streamlearn.data import DataSpec
    from streamlearn.errors import BackboneChanged
    from streamlearn.submission import SubmitRequest, submit

    def submit_named(name: str) -> str:
        args = _task(tmp_path / "data", name, seed=len(name))
        return submit(SubmitRequest(args[0], name=name, validation=args[2], test=None, spec=DataSpec(),
                           method={"method": "adapter", "adapter_size": 8, "top_k": 1, "sigma": 1e-2, "pooling": "mean"},
                           train_config={"epochs": 1, "lr": None, "batch_size": 16, "max_length": 32, "seed": 0,
                                         "warmup": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0})).job_id

    first, second = submit_named("victim"), submit_named("next")
    real_fit = pipeline.fit

    def fit_then_corrupt(*args, **kwargs):
        # A stray in-place write into the shared weights, as a buggy method or a bit flip would make.
        result = real_fit(*args, **kwargs)
        with torch.no_grad():
            corruptible_backbone.model.get_input_embeddings().weight[3, 0] += 0.5
        return result

    monkeypatch.setattr(pipeline, "fit", fit_then_corrupt)
    with pytest.raises(BackboneChanged, match="resident backbone .* changed: [0-9a-f]{12} -> [0-9a-f]{12}"):
        pipeline.run_task(first)
    with session_scope(readonly=True) as s:
        state, waiting = job_status(s, first), job_status(s, second)
    assert state["status"] == "failed"
    assert "changed" in state["error"] and "refuses further jobs" in state["error"]
    assert any(r.levelname == "CRITICAL" and "BACKBONE CHANGED" in r.getMessage() for r in caplog.records)
    assert not list((pipeline.get_settings().artifacts / "tasks").rglob("*.safetensors"))
    assert pipeline.refusal() is not None

    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("a refusing worker trained a job"))
    with pytest.raises(BackboneChanged):
        pipeline.run_task(second)
    with session_scope(readonly=True) as s:
        after = job_status(s, second)
    assert after["status"] == "queued" and after["worker"] is None and after == waiting


def test_worker_task_stops_the_worker_when_the_backbone_changed(isolated_home, monkeypatch):
    """The Celery task maps BackboneChanged to a warm stop of the worker with exit code 70, without a retry."""
    from celery.worker import state

    from streamlearn import pipeline
    from streamlearn.errors import BackboneChanged
    from workers import tasks

    def refuse(job_id):
        raise BackboneChanged("the resident backbone tiny changed: aaa -> bbb; this worker refuses further jobs")

    monkeypatch.setattr(pipeline, "run_task", refuse)
    monkeypatch.setattr(state, "should_stop", None)
    tasks.train.apply(args=["some-job"])
    assert state.should_stop == tasks.EX_SOFTWARE == 70


@pytest.mark.parametrize("where,requeued", [("this host, live pid", False), ("another host", True)])
def test_reconcile_requeues_a_stale_heartbeat_only_when_its_worker_may_be_gone(isolated_home, tmp_path, where, requeued):
    """A missed heartbeat of a live worker on this host (a database outage) is not a crash; one from another host is."""
    from datetime import timedelta

    from streamlearn import recovery
    from streamlearn.catalogue import records
    from streamlearn.catalogue.models import Job, utcnow
    from streamlearn.catalogue.session import session_scope
    from streamlearn.data import DataSpec
    from streamlearn.submission import SubmitRequest, submit

    args = _task(tmp_path / "data", "stale", seed=9)
    job_id = submit(SubmitRequest(args[0], name="stale", validation=args[2], spec=DataSpec(),
                         method={"method": "adapter", "adapter_size": 8, "top_k": 1, "sigma": 1e-2, "pooling": "mean"},
                         train_config={"epochs": 1, "lr": None, "batch_size": 16, "max_length": 32, "seed": 0,
                                       "warmup": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0})).job_id
    host, pid = (socket.gethostname(), os.getpid()) if requeued is False else ("elsewhere", 4242)
    with session_scope() as s:
        records.mark_running(s, job_id, host, pid)
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(minutes=10)
    assert recovery.reconcile() == ([job_id] if requeued else [])
