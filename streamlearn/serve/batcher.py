"""Dynamic batching across requests: the knobs of Ray Serve, BentoML and KServe.

Requests wait in one queue. The batching loop takes the oldest, then keeps adding whole requests
until the batch holds `max_batch_size` rows or the oldest has waited `max_wait_ms`; rows of
different tasks go into the same batch. The batch then runs in the single inference thread (off
the event loop, so the server keeps accepting requests), and while it runs the next batch gathers.

A request is never split across batches (one larger than `max_batch_size` runs alone, chunked by
the backend), so all of a request's rows of one task see the same version of that task.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Request:
    items: Sequence[Any]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers the rows of concurrent requests into batches and runs them in one worker thread.

    Args:
        run: Called in the inference thread with a batch's items (`backends.Item` rows); returns one outcome per item
            (a result, or the StreamlearnError of that row).
        max_batch_size: Most rows per batch.
        max_wait_ms: Longest the oldest request waits for others.
        on_batch: Called with each batch's row count (metrics).
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch_size: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamlearn-inference")
        self._pending: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._arrived = asyncio.Event()
        self._loop_task = asyncio.create_task(self._batches(), name="streamlearn-batcher")

    async def stop(self) -> None:
        """Stop the loop and the inference thread (a running batch finishes first)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue one request's items and wait for their outcomes, in order."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(items, future))
        self._arrived.set()
        return await future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in the inference thread, between two batches (never during one)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _next_request(self, timeout: float | None) -> _Request | None:
        while not self._pending:
            self._arrived.clear()
            if timeout is None:
                await self._arrived.wait()
                continue
            if timeout <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return None
        return self._pending[0]

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next_request(None)
            batch, rows = [self._pending.popleft()], len(first.items)
            deadline = first.arrived + self.max_wait
            while rows < self.max_batch_size:
                nxt = await self._next_request(deadline - time.monotonic())
                if nxt is None or rows + len(nxt.items) > self.max_batch_size:
                    break
                batch.append(self._pending.popleft())
                rows += len(nxt.items)
            batch = [r for r in batch if not r.future.cancelled()]
            if not batch:
                continue
            items = [item for r in batch for item in r.items]
            if self.on_batch is not None:
                self.on_batch(len(items))
            try:
                outcomes = await loop.run_in_executor(self.executor, self.run, items)
            except Exception as exc:  # a bug in a batch must fail its requests, not the loop
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            start = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(outcomes[start:start + len(r.items)])
                start += len(r.items)
