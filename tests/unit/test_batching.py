"""The Batcher: concurrent submissions share one call of the batch function."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from batching import Batcher, on_executor
from tests.support import poll


class Recorder:
    """A blocking batch function that records its batches and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.release.wait(10)
        return [item * 10 for item in items]


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


async def _one_batch_held(executor, first: int, max_weight: int):
    """A Batcher allowing one batch at a time, whose first batch ([first]) is running, held."""
    work = Recorder()
    work.release.clear()
    batcher = Batcher(on_executor(executor, work), max_batches=1, max_weight=max_weight)
    running = asyncio.ensure_future(batcher.submit(first))
    await poll(lambda: work.batches)
    return work, batcher, running


async def _loop_turns(count: int = 3) -> None:
    """Let the event loop run a few turns: enough for a batch to start, were one allowed to."""
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.gen_test
async def test_items_arriving_together_share_one_batch_and_get_their_own_results(executor):
    work = Recorder()
    batcher = Batcher(on_executor(executor, work), max_batches=2, max_weight=100)
    results = await asyncio.gather(*(batcher.submit(item) for item in range(20)))
    assert results == [item * 10 for item in range(20)]
    assert work.batches == [list(range(20))]


@pytest.mark.gen_test
async def test_items_wait_for_a_free_batch_and_then_go_together(executor):
    work, batcher, first = await _one_batch_held(executor, 0, max_weight=3)
    later = [asyncio.ensure_future(batcher.submit(item)) for item in range(1, 6)]
    await _loop_turns()
    assert work.batches == [[0]]  # one batch at most runs; the others wait
    work.release.set()
    assert await asyncio.gather(first, *later) == [0, 10, 20, 30, 40, 50]
    assert work.batches == [[0], [1, 2, 3], [4, 5]]  # at most max_weight a batch


@pytest.mark.gen_test
async def test_a_batch_takes_items_while_their_weight_fits(executor):
    work = Recorder()
    batcher = Batcher(on_executor(executor, work), max_batches=1, max_weight=10, weight=lambda item: item)
    await asyncio.gather(*(batcher.submit(item) for item in (4, 5, 2, 9, 1)))
    assert work.batches == [[4, 5], [2], [9, 1]]


@pytest.mark.gen_test
async def test_a_failed_batch_fails_each_of_its_items_and_the_next_batch_runs(executor):
    calls: list[list[str]] = []

    def fail_on_bad(items: list[str]) -> list[str]:
        calls.append(items)
        if "bad" in items:
            raise ValueError("no")
        return items

    batcher = Batcher(on_executor(executor, fail_on_bad), max_batches=1, max_weight=10)
    outcomes = await asyncio.gather(batcher.submit("bad"), batcher.submit("x"), return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [ValueError, ValueError]
    assert await batcher.submit("good") == "good"
    assert calls == [["bad", "x"], ["good"]]


@pytest.mark.gen_test
async def test_a_batch_function_returning_the_wrong_count_fails_rather_than_hangs(executor):
    batcher: Batcher[int, int] = Batcher(on_executor(executor, lambda items: items[:1]), 1, 10)
    outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)


@pytest.mark.gen_test
async def test_a_caller_that_stops_waiting_leaves_the_queue_and_the_others_are_served(executor):
    work, batcher, running = await _one_batch_held(executor, 1, max_weight=10)
    impatient = asyncio.ensure_future(batcher.submit(2))
    patient = asyncio.ensure_future(batcher.submit(3))
    await _loop_turns()
    impatient.cancel()
    work.release.set()
    assert list(await asyncio.gather(running, patient)) == [10, 30]
    assert work.batches == [[1], [3]]
    assert impatient.cancelled()


@pytest.mark.gen_test
async def test_a_batch_function_that_cannot_start_fails_its_items_rather_than_hangs(executor):
    executor.shutdown()
    batcher = Batcher(on_executor(executor, Recorder()), max_batches=1, max_weight=10)
    outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
