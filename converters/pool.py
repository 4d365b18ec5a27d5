"""A bounded pool for conversions: a slot is reserved when an upload starts, so overload is
refused at once instead of queueing without end."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")


class ConversionPool:
    """`workers` threads convert; at most `workers + queue` uploads hold a slot at once."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self.reserved = 0
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="convert")
        self._lock = threading.Lock()
        self._queued = 0
        self.converting = 0  # work that a thread has started and not finished

    def try_reserve(self) -> bool:
        """Take a slot if one is free (event-loop thread only)."""
        if self.reserved >= self.capacity:
            return False
        self.reserved += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.reserved -= 1

    def submit(self, work: Callable[[], R]) -> Future[R]:
        """Queue blocking conversion work for the pool's threads."""
        with self._lock:
            self._queued += 1
        return self._executor.submit(self._start, work)

    def cancel(self, job: Future[R]) -> bool:
        """Take work out of the queue; False when it has started already (or ended)."""
        if not job.cancel():
            return False
        with self._lock:
            self._queued -= 1
        return True

    def others_waiting(self) -> bool:
        """Whether work is queued for a thread (a conversion waiting for its input gives way)."""
        return self._queued > 0

    def shutdown(self) -> None:
        """Wait for running conversions, then stop the threads."""
        self._executor.shutdown(wait=True)

    def _start(self, work: Callable[[], R]) -> R:
        with self._lock:
            self._queued -= 1
            self.converting += 1
        try:
            return work()
        finally:
            with self._lock:
                self.converting -= 1
