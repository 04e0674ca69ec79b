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
