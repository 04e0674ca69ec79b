"""The server's dynamic batcher and token rule, without a model: batches are made of whole requests."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streamlearn.errors import InvalidConfig
from streamlearn.serve.batcher import Batcher
from streamlearn.serve.config import api_token, is_loopback


def _record(batches: list, threads: set):
    def run(items):
        batches.append([i[0] for i in items])
        threads.add(threading.current_thread().name)
        return [f"{task}:{text}" for task, text in items]
    return run


def test_concurrent_requests_of_different_tasks_share_one_batch_off_the_event_loop():
    """Requests that arrive within max-wait-ms form one batch of mixed tasks, run in the inference thread, answered in order."""
    batches, threads = [], set()

    async def main():
        batcher = Batcher(_record(batches, threads), max_batch_size=8, max_wait_ms=200)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.submit([("a", "1"), ("b", "2")]), batcher.submit([("c", "3")]),
                                        batcher.submit([("a", "4")]))
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    assert answers == [["a:1", "b:2"], ["c:3"], ["a:4"]]
    assert batches == [["a", "b", "c", "a"]]
    assert threads and all(name.startswith("streamlearn-inference") for name in threads)


def test_a_batch_never_exceeds_max_batch_size_and_never_splits_a_request():
    """With max 3 rows, requests of 2, 2 and 1 rows become batches [2] and [2, 1]."""
    batches, threads = [], set()

    async def main():
        batcher = Batcher(_record(batches, threads), max_batch_size=3, max_wait_ms=100)
        await batcher.start()
        try:
            await asyncio.gather(batcher.submit([("a", "1"), ("a", "2")]), batcher.submit([("b", "3"), ("b", "4")]),
                                 batcher.submit([("c", "5")]))
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert [len(b) for b in batches] == [2, 3]
    assert batches[1] == ["b", "b", "c"]


def test_a_lone_request_waits_at_most_max_wait_ms():
    """A single request is answered after about max-wait-ms, not held for a full batch."""
    batches, threads = [], set()

    async def main():
        batcher = Batcher(_record(batches, threads), max_batch_size=64, max_wait_ms=50)
        await batcher.start()
        try:
            start = time.monotonic()
            await batcher.submit([("a", "1")])
            return time.monotonic() - start
        finally:
            await batcher.stop()

    assert asyncio.run(main()) < 2.0
    assert batches == [["a"]]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs():
    """An exception inside a batch reaches that batch's callers; the loop keeps serving."""
    calls = []

    def run(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return ["ok"] * len(items)

    async def main():
        batcher = Batcher(run, max_batch_size=4, max_wait_ms=0)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit([("a", "1")])
            return await batcher.submit([("a", "2")])
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == ["ok"]


def test_a_non_loopback_bind_needs_a_token(monkeypatch):
    """Loopback needs no token; 0.0.0.0 without STREAMLEARN_API_TOKEN is refused naming it; a set token is returned."""
    monkeypatch.delenv("STREAMLEARN_API_TOKEN", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert api_token("127.0.0.1") is None
    with pytest.raises(InvalidConfig, match="STREAMLEARN_API_TOKEN"):
        api_token("0.0.0.0")
    monkeypatch.setenv("STREAMLEARN_API_TOKEN", "t0k")
    assert api_token("0.0.0.0") == "t0k" and api_token("127.0.0.1") == "t0k"
