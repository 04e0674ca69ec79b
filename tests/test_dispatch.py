"""Tests of the client side of the queue: what `enqueue` sends and how it fails."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest

from streamlearn import dispatch
from streamlearn.errors import BrokerUnavailable, InvalidConfig
from streamlearn.settings import get_settings


def _messages(home):
    return sorted((home / "queue" / "messages").glob("*.msg"))


def test_enqueue_writes_one_message_naming_the_task_and_job(isolated_home):
    """An embedded enqueue leaves one message file that carries the task name and only the job id."""
    dispatch.enqueue("job-123")
    files = _messages(isolated_home)
    assert len(files) == 1
    envelope = json.loads(files[0].read_text())
    assert envelope["headers"]["task"] == "streamlearn.train"
    body = json.loads(base64.b64decode(envelope["body"]))
    assert body[0] == ["job-123"] and body[1] == {}
    assert files[0].name.endswith(".streamlearn.msg")


def test_enqueue_to_closed_redis_port_fails_fast_with_masked_url(isolated_home, monkeypatch):
    """A Redis URL nobody listens on raises BrokerUnavailable within seconds, password masked."""
    monkeypatch.setenv("STREAMLEARN_BROKER_URL", "redis://user:hunter2@127.0.0.1:1/0")
    get_settings.cache_clear()
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        dispatch.enqueue("job-1")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "redis://user:***@127.0.0.1:1/0" in message and "hunter2" not in message


def test_unknown_broker_scheme_is_refused(isolated_home, monkeypatch):
    """A broker URL of an unsupported transport is a configuration error, not a hang."""
    monkeypatch.setenv("STREAMLEARN_BROKER_URL", "sqla+sqlite:///x.db")
    get_settings.cache_clear()
    with pytest.raises(InvalidConfig):
        dispatch.enqueue("job-1")


def test_redis_visibility_timeout_exceeds_task_time_limit(isolated_home, monkeypatch):
    """By default Redis redelivers an unacknowledged job only after the task time limit has passed."""
    monkeypatch.setenv("STREAMLEARN_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("STREAMLEARN_TASK_TIME_LIMIT", "7200")
    get_settings.cache_clear()
    options = dispatch.transport_options(get_settings())
    assert options["visibility_timeout"] > 7200


def test_importing_dispatch_imports_neither_torch_nor_workers():
    """The client side stays light: no torch, no transformers and no workers package."""
    code = "import sys, streamlearn.dispatch; print(sorted(m for m in ('torch','transformers','workers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _channel():
    """A channel of the embedded broker's transport on this home's queue folders (as a worker opens it)."""
    from kombu import Connection

    settings = get_settings()
    config = dispatch.celery_config(settings)
    connection = Connection(config["broker_url"], transport=config["broker_transport"],
                            transport_options=config["broker_transport_options"])
    return connection, connection.channel()


def test_enqueue_leaves_no_temporary_file_and_the_message_parses(isolated_home):
    """The embedded publisher writes the message under a hidden name and renames it: only the complete .msg remains."""
    dispatch.enqueue("job-1")
    folder = isolated_home / "queue" / "messages"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".msg")] == []
    connection, channel = _channel()
    try:
        envelope = channel._get("streamlearn")
    finally:
        connection.release()
    assert json.loads(base64.b64decode(envelope["body"]))[0] == ["job-1"]


def test_a_message_file_still_being_written_is_read_once_complete(isolated_home):
    """A message file that appears empty (kombu's own publisher opens it, then writes) is read when its bytes arrive."""
    import threading

    dispatch.enqueue("job-2")
    folder = isolated_home / "queue" / "messages"
    [done] = list(folder.glob("*.msg"))
    content = done.read_bytes()
    late = folder / ("1" + done.name)  # sorts first: the consumer claims it before the complete one
    late.write_bytes(b"")
    writer = threading.Timer(0.3, lambda: (isolated_home / "queue" / "processed" / late.name).write_bytes(content))
    writer.start()
    connection, channel = _channel()
    try:
        first = channel._get("streamlearn")
    finally:
        writer.join()
        connection.release()
    assert json.loads(base64.b64decode(first["body"]))[0] == ["job-2"]


def test_a_message_file_that_never_parses_is_set_aside_and_the_consumer_goes_on(isolated_home):
    """A file that stays invalid is renamed to .bad and skipped (the worker keeps running; reconcile re-sends the job)."""
    import queue

    folder = isolated_home / "queue" / "messages"
    dispatch.queue_folders(get_settings())
    (folder / "1_x.streamlearn.msg").write_bytes(b"{not json")
    connection, channel = _channel()
    try:
        with pytest.raises(queue.Empty):
            channel._get("streamlearn")
    finally:
        connection.release()
    assert [p.name for p in (isolated_home / "queue" / "processed").iterdir()] == ["1_x.streamlearn.msg.bad"]
