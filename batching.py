"""Coalescing: concurrent requests for the same kind of work share one batch of it (one statement,
one upstream call)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _one(item: object) -> int:
    return 1


class _Entry(Generic[T, R]):
    """One submitted item and its caller's future (compared by identity)."""

    __slots__ = ("future", "item")

    def __init__(self, item: T, future: asyncio.Future[R]) -> None:
        self.item = item
        self.future = future


class Batcher(Generic[T, R]):
    """Runs `work(items) -> results` (one result per item, in order) for items that arrive together.
    An item submitted while `max_batches` batches are running waits for the next one, and a batch
    takes waiting items in order while their total `weight` stays within `max_weight`. So under
    load one call serves many requests, and with no load an item goes out in the same event-loop
    turn it came in (no timer, no added latency). A caller that stops waiting (cancelled, timed
    out) leaves its place in the queue, or its share of a running batch, to no one."""

    def __init__(
        self,
        work: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_batches: int,
        max_weight: int,
        weight: Callable[[T], int] = _one,
    ) -> None:
        self._work = work
        self._max_batches = max_batches
        self._max_weight = max_weight
        self._weight = weight
        self._waiting: list[_Entry[T, R]] = []
        self._running: set[asyncio.Future[Sequence[R]]] = set()  # referenced, so never collected
        self._scheduled = False

    async def submit(self, item: T) -> R:
        """The result of `item`, or the exception its batch raised."""
        loop = asyncio.get_running_loop()
        entry: _Entry[T, R] = _Entry(item, loop.create_future())
        self._waiting.append(entry)
        if not self._scheduled and len(self._running) < self._max_batches:
            # Start after the items this loop turn delivers have joined the batch too.
            self._scheduled = True
            loop.call_soon(self._start)
        try:
            return await entry.future
        finally:
            if entry in self._waiting:
                self._waiting.remove(entry)

    def _start(self) -> None:
        self._scheduled = False
        while self._waiting and len(self._running) < self._max_batches:
            batch = [self._waiting.pop(0)]
            total = self._weight(batch[0].item)
            while self._waiting and total + self._weight(self._waiting[0].item) <= self._max_weight:
                batch.append(self._waiting.pop(0))
                total += self._weight(batch[-1].item)
            self._running.add(running := asyncio.ensure_future(self._run([entry.item for entry in batch])))
            running.add_done_callback(partial(self._finish, batch))

    async def _run(self, items: list[T]) -> Sequence[R]:
        # Inside a task, so that even an exception raised before `work` awaits reaches _finish.
        return await self._work(items)

    def _finish(self, batch: list[_Entry[T, R]], outcome: asyncio.Future[Sequence[R]]) -> None:
        self._running.discard(outcome)
        results: Sequence[R] = ()
        if outcome.cancelled():
            error: BaseException | None = RuntimeError("the batch was cancelled")
        else:
            error = outcome.exception()
            if error is None:
                results = outcome.result()
                if len(results) != len(batch):
                    error = RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        for index, entry in enumerate(batch):
            if entry.future.done():  # its caller stopped waiting
                continue
            if error is not None:
                entry.future.set_exception(error)
            else:
                entry.future.set_result(results[index])
        self._start()


def on_executor(
    executor: Executor, work: Callable[[list[T]], Sequence[R]]
) -> Callable[[list[T]], Awaitable[Sequence[R]]]:
    """A blocking batch function (database work) as one that runs on `executor`."""
    return lambda items: asyncio.get_running_loop().run_in_executor(executor, work, items)
