"""The Batcher: concurrent submissions share one call of the batch function."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from batching import Batcher
from tests.support import poll


class Recorder:
    """A batch function that records its batches and can be held until released."""

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


@pytest.mark.gen_test
async def test_items_arriving_together_share_one_batch_and_get_their_own_results(executor):
    work = Recorder()
    batcher = Batcher(work, executor, max_batches=2, max_items=100)
    results = await asyncio.gather(*(batcher.submit(item) for item in range(20)))
    assert results == [item * 10 for item in range(20)]
    assert work.batches == [list(range(20))]


@pytest.mark.gen_test
async def test_items_wait_for_a_free_batch_and_then_go_together(executor):
    work = Recorder()
    work.release.clear()
    batcher = Batcher(work, executor, max_batches=1, max_items=3)
    first = asyncio.ensure_future(batcher.submit(0))
    await poll(lambda: work.batches)
    later = [asyncio.ensure_future(batcher.submit(item)) for item in range(1, 6)]
    for _ in range(3):  # loop turns enough for a batch to start, were one allowed to
        await asyncio.sleep(0)
    assert work.batches == [[0]]  # one batch at most runs; the others wait
    work.release.set()
    assert await asyncio.gather(first, *later) == [0, 10, 20, 30, 40, 50]
    assert work.batches == [[0], [1, 2, 3], [4, 5]]  # at most max_items a batch


@pytest.mark.gen_test
async def test_a_failed_batch_fails_each_of_its_items_and_the_next_batch_runs(executor):
    calls: list[list[str]] = []

    def fail_on_bad(items: list[str]) -> list[str]:
        calls.append(items)
        if "bad" in items:
            raise ValueError("no")
        return items

    batcher = Batcher(fail_on_bad, executor, max_batches=1, max_items=10)
    outcomes = await asyncio.gather(batcher.submit("bad"), batcher.submit("x"), return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [ValueError, ValueError]
    assert await batcher.submit("good") == "good"


@pytest.mark.gen_test
async def test_a_batch_function_returning_the_wrong_count_fails_rather_than_hangs(executor):
    batcher: Batcher[int, int] = Batcher(lambda items: items[:1], executor, max_batches=1, max_items=10)
    outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
