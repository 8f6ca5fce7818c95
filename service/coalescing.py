"""Gateway-side batching: concurrent calls of one batched function become one call.

`Coalescer(run, in_flight)`: `await coalescer.submit(key, item, size, limit)` queues `item`
(`size` ads) under `key`; at most `in_flight` calls of `run(key, items)` are running per key,
and each takes every item waiting for that key, up to `limit` ads. `run` returns one result per
item, in order; an exception it raises is every item's exception. No timer: an item that
arrives when fewer than `in_flight` calls run for its key goes at once, in its caller's own
task, so one request alone pays nothing extra, while under load the items that queue behind a
running call leave together (a background task drains them).

Two uses in gateway.py:
- backend calls, keyed by (model, version): ads from concurrent requests go to Triton as one
  request of several ads (one gRPC round trip, one python-backend execution) instead of
  one request each. Triton's dynamic batcher still merges what several gateways send.
- decision-log writes: concurrent requests' rows are committed in one transaction (one thread
  hop, one commit). A failed commit fails every request in it (503), so still no answer goes
  out without its row.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable


@dataclass
class _Waiting:
    item: Any
    size: int
    future: asyncio.Future


@dataclass
class _Queue:
    limit: int
    waiting: deque = field(default_factory=deque)
    running: int = 0


class Coalescer:
    def __init__(self, run: Callable[[Hashable, list], Awaitable[list]], in_flight: int = 1,
                 observe: Callable[[Hashable, int], None] | None = None):
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.run, self.in_flight, self.observe = run, in_flight, observe
        self._queues: dict[Hashable, _Queue] = {}
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def submit(self, key: Hashable, item: Any, size: int = 1, limit: int = 0) -> Any:
        """`item`'s result; `limit`: the most ads one call may carry (0: no limit).

        When a call slot is free the caller makes the call itself (no task switch for a lone
        request) and hands whatever queued meanwhile to a background drain."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(limit)
        queue.limit = limit
        waiting = _Waiting(item, size, asyncio.get_running_loop().create_future())
        queue.waiting.append(waiting)
        if queue.running < self.in_flight:
            queue.running += 1
            batch = self._take(queue)
            try:
                await self._call(key, batch)
            except asyncio.CancelledError:  # this caller went away: the others in its call go again
                queue.waiting.extendleft(reversed([w for w in batch if w is not waiting and not w.future.done()]))
                raise
            finally:
                if queue.waiting:
                    self._spawn(key, queue)  # the slot passes to the drain
                else:
                    queue.running -= 1
        return await waiting.future

    def _spawn(self, key: Hashable, queue: _Queue) -> None:
        task = asyncio.create_task(self._drain(key, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self, queue: _Queue) -> list[_Waiting]:
        taken, ads = [], 0
        while queue.waiting:
            head = queue.waiting[0]
            if head.future.done():  # its request was cancelled (client gone, timeout)
                queue.waiting.popleft()
                continue
            if taken and queue.limit and ads + head.size > queue.limit:
                break
            taken.append(queue.waiting.popleft())
            ads += head.size
        return taken

    async def _call(self, key: Hashable, batch: list[_Waiting]) -> None:
        if not batch:
            return
        if self.observe is not None:
            self.observe(key, sum(w.size for w in batch))
        try:
            results = await self.run(key, [w.item for w in batch])
        except Exception as error:  # noqa: BLE001 - handed to every waiter, never lost
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)

    async def _drain(self, key: Hashable, queue: _Queue) -> None:
        try:
            while batch := self._take(queue):
                await self._call(key, batch)
        finally:
            queue.running -= 1
