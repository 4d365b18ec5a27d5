"""Group commit: concurrent requests for the same database write share one statement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs `work(items) -> results` (one result per item, in order) on an executor for items that
    arrive together. An item submitted while `max_batches` batches are running waits for the next
    one, so under load one executor hop, one statement and one commit serve many requests, and with
    no load an item goes out in the same event-loop turn it came in (no timer, no added latency)."""

    def __init__(
        self,
        work: Callable[[list[T]], Sequence[R]],
        executor: Executor,
        max_batches: int,
        max_items: int,
    ) -> None:
        self._work = work
        self._executor = executor
        self._max_batches = max_batches
        self._max_items = max_items
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._scheduled = False

    async def submit(self, item: T) -> R:
        """The result of `item`, or the exception its batch raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if not self._scheduled and self._running < self._max_batches:
            # Start after the items this loop turn delivers have joined the batch too.
            self._scheduled = True
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._scheduled = False
        if not self._waiting or self._running >= self._max_batches:
            return
        batch = self._waiting[: self._max_items]
        del self._waiting[: self._max_items]
        self._running += 1
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._work, [item for item, _ in batch])
        done.add_done_callback(lambda outcome: self._finish(batch, outcome))

    def _finish(self, batch: list[tuple[T, asyncio.Future[R]]], outcome: asyncio.Future[Sequence[R]]) -> None:
        self._running -= 1
        results: Sequence[R] = ()
        if outcome.cancelled():
            error: BaseException | None = RuntimeError("the batch was cancelled")
        else:
            error = outcome.exception()
            if error is None:
                results = outcome.result()
                if len(results) != len(batch):
                    error = RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        for index, (_, future) in enumerate(batch):
            if future.done():  # the request was cancelled meanwhile
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(results[index])
        self._start()
