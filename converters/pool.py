"""A bounded pool for conversions: a slot is reserved when an upload starts, so overload is
refused at once instead of queueing without end."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from converters.mp3 import ConversionInterrupted

R = TypeVar("R")


class ConversionPool:
    """`workers` threads convert; at most `workers + queue` uploads hold a slot at once. A conversion
    that waits for its upload's data may give its thread to a queued one (`should_give_way`)."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self.reserved = 0
        self.converting = 0  # work that a thread has started and not finished
        self._workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="convert")
        self._lock = threading.Lock()
        self._queued = 0
        self._made_way = 0  # queued work that a waiting conversion has already given its thread to
        self._closing = False

    def try_reserve(self) -> bool:
        """Take a slot if one is free (event-loop thread only)."""
        if self.reserved >= self.capacity:
            return False
        self.reserved += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.reserved -= 1

    def has_idle_thread(self) -> bool:
        """Whether work submitted now would start at once."""
        with self._lock:
            return self.converting + self._queued < self._workers

    def submit(self, work: Callable[[], R]) -> Future[R]:
        """Queue blocking conversion work for the pool's threads (failed at once when shutting down).
        Cancelling the returned job takes it out of the queue if it has not started."""
        job: Future[R] = Future()
        with self._lock:
            if self._closing:
                job.set_exception(ConversionInterrupted("the service is shutting down"))
                return job
            self._queued += 1
            job = self._executor.submit(self._start, work)
        job.add_done_callback(self._forget_if_cancelled)
        return job

    def should_give_way(self) -> bool:
        """Whether a conversion waiting for its upload should give its thread to queued work: true
        once per queued job, and for every one while shutting down."""
        with self._lock:
            if self._closing:
                return True
            if self._made_way < self._queued:
                self._made_way += 1
                return True
            return False

    def shutdown(self) -> None:
        """Wait for running conversions (those waiting for an upload give way), then stop the threads."""
        with self._lock:
            self._closing = True
        self._executor.shutdown(wait=True)

    def _start(self, work: Callable[[], R]) -> R:
        with self._lock:
            self._leave_queue()
            self.converting += 1
        try:
            return work()
        finally:
            with self._lock:
                self.converting -= 1

    def _forget_if_cancelled(self, job: Future[R]) -> None:
        if job.cancelled():  # it never started: it leaves the queue here
            with self._lock:
                self._leave_queue()

    def _leave_queue(self) -> None:
        self._queued -= 1
        self._made_way = min(self._made_way, self._queued)
