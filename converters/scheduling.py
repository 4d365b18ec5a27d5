"""ffmpeg as batch work for Linux's scheduler (SCHED_BATCH), while the service's own threads stay
normal tasks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def schedule_as_batch_work() -> None:
    """Mark the calling thread, and the processes it starts (they inherit it), as batch work
    (a no-op where SCHED_BATCH is missing or refused)."""
    # ffmpeg hands each frame between its own threads (demuxer, decoder, filter, encoder, muxer);
    # as normal tasks every hand-off preempts whatever runs, and with two encoders on two cores
    # that costs 6-8% of the conversions' CPU. A batch task that wakes does not preempt the task
    # running on its core; normal tasks (the event loop, the request threads) do.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


@contextlib.contextmanager
def starting_batch_work() -> Iterator[None]:
    """Processes started inside the block run as batch work; the calling thread keeps its policy."""
    # The thread itself must not stay a batch task: one that holds the GIL while it waits behind
    # two ffmpeg processes for a core keeps the event loop waiting too (GET /health took up to
    # 108 ms during four uploads on a slow machine).
    try:
        previous: tuple[int, os.sched_param] | None = (os.sched_getscheduler(0), os.sched_getparam(0))
    except (AttributeError, OSError):
        previous = None
    if previous is None:
        yield
        return
    schedule_as_batch_work()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, *previous)
