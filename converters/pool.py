"""A bounded pool for conversions: a slot is reserved when an upload starts, so overload is
refused at once instead of queueing without end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class ConversionPool:
    """`workers` threads convert; at most `workers + queue` uploads hold a slot at once."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self.reserved = 0
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="convert")

    def try_reserve(self) -> bool:
        """Take a slot if one is free (event-loop thread only)."""
        if self.reserved >= self.capacity:
            return False
        self.reserved += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.reserved -= 1

    async def run(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking conversion work on the pool's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(*args, **kwargs))

    def shutdown(self) -> None:
        """Wait for running conversions, then stop the threads."""
        self._executor.shutdown(wait=True)
