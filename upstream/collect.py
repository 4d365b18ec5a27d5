"""Storing N new questions: the upstream loop with its retries and its budget."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from queries.questions import QuestionDict
from upstream.client import MAX_BATCH, Clue, RandomClues, UpstreamError

Shortfall = Literal["timeout", "bad_gateway", "no_new_questions"]

BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0


@dataclass(frozen=True)
class Budget:
    """What one request may spend on the upstream."""

    max_calls: int
    seconds: float
    call_timeout: float


@dataclass(frozen=True)
class QuestionStore:
    """How the loop reaches the database (each call raises when the database cannot answer)."""

    latest: Callable[[], Awaitable[QuestionDict | None]]
    # Stores the new clues of one batch: how many were new, and the latest question before them.
    insert: Callable[[list[Clue]], Awaitable[tuple[int, QuestionDict | None]]]


class QuestionsShortfall(Exception):
    """The budget ran out before N new questions were stored; what was stored stays."""

    def __init__(self, reason: Shortfall, detail: str, saved: int, requested: int) -> None:
        super().__init__(detail)
        self.reason: Shortfall = reason
        self.detail = detail
        self.saved = saved
        self.requested = requested


def unique_clues(clues: Iterable[Clue | None]) -> list[Clue]:
    """Drop unusable items (None) and clues whose upstream id already appeared earlier in the batch."""
    seen: set[int] = set()
    unique = []
    for clue in clues:
        if clue is not None and clue.jservice_id not in seen:
            seen.add(clue.jservice_id)
            unique.append(clue)
    return unique


def backoff_delay(failures: int) -> float:
    """Full-jitter exponential backoff for the n-th consecutive failure."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**failures))


async def store_new_questions(
    count: int, client: RandomClues, store: QuestionStore, budget: Budget
) -> QuestionDict | None:
    """Store `count` questions new to the database and return the question that was the latest
    before this request stored any, or None. Raises QuestionsShortfall when the budget runs out."""
    if count == 0:
        return await store.latest()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget.seconds
    saved = calls = failures = 0
    previous: QuestionDict | None = None  # pragma: no mutate - equivalent: the first insert sets it
    last_problem: Shortfall = "no_new_questions"
    last_detail = "the upstream returned only questions that are already stored"
    while saved < count:
        remaining = deadline - loop.time()
        if calls >= budget.max_calls or remaining <= 0:
            raise QuestionsShortfall(last_problem, last_detail, saved, count)
        calls += 1
        try:
            clues = await client.fetch_random(
                min(count - saved, MAX_BATCH), min(budget.call_timeout, remaining)
            )
        except UpstreamError as error:
            last_problem, last_detail = error.kind, str(error)
            if not error.transient:
                raise QuestionsShortfall(last_problem, last_detail, saved, count) from None
            delay = error.retry_after if error.retry_after is not None else backoff_delay(failures)
            failures += 1
            if loop.time() + delay >= deadline:
                raise QuestionsShortfall(last_problem, last_detail, saved, count) from None
            await asyncio.sleep(delay)
            continue
        failures = 0
        # Equivalent mutants through JServiceClient, which never returns more than it asked for.
        batch = unique_clues(clues)[: count - saved]  # pragma: no mutate
        stored = 0
        if batch:
            stored, before = await store.insert(batch)
            if saved == 0:
                previous = before
        saved += stored
        if not batch:  # garbage, not a lack of new questions
            last_problem = "bad_gateway"
            last_detail = (
                f"the upstream returned only unusable questions ({len(clues)} without a positive integer"
                " id, a question and an answer in storable text)"
                if clues
                else "the upstream returned no questions"
            )
        elif stored == 0:
            last_problem = "no_new_questions"
            last_detail = "the upstream returned only questions that are already stored"
    return previous
