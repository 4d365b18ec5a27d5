"""The stand-in's application: clues from clues.json, with switches for faults tests need."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tornado.web import Application, RequestHandler

DATA_FILE = Path(__file__).with_name("clues.json")
MAX_COUNT = 100
EPOCH = datetime(2014, 2, 11, 22, 47, 18, 687000, tzinfo=UTC)


@dataclass
class Behaviour:
    """How the stand-in answers; tests change it between requests."""

    pool_size: int | None = None  # distinct ids on offer; None means one per clue in the data file
    latency: float = 0.0  # seconds before each answer
    fail_times: int = 0  # answer this many next requests with `fail_status`
    fail_status: int = 503
    retry_after: str | None = None  # Retry-After header on failures
    garbage: str | None = None  # answer 200 with this body (an HTML page, broken JSON) instead
    hang: bool = False  # never answer
    redirect_to: str | None = None  # answer 302 with this Location instead
    repeat_in_batch: bool = False  # send every clue of a batch twice
    blank_ids: frozenset[int] = frozenset()  # ids served with an empty question
    requested_counts: list[int] = field(default_factory=list)  # the count of every request seen
    request_times: list[float] = field(default_factory=list)  # when each arrived (loop time)


SourceClue = tuple[int, str, int, dict[str, Any]]  # category number, title, clue count; the clue


def load_clues(path: Path = DATA_FILE) -> list[SourceClue]:
    """Every clue in the data file, with its category's number, title and number of clues."""
    categories = json.loads(path.read_text(encoding="utf-8"))
    return [
        (number, category["category"], len(category["clues"]), clue)
        for number, category in enumerate(categories, start=1)
        for clue in category["clues"]
    ]


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def render_clue(clue_id: int, clues: list[SourceClue], blank: bool) -> dict[str, Any]:
    """The clue with upstream id `clue_id`, in jService's JSON shape; ids past the data wrap around."""
    category_number, title, category_size, clue = clues[(clue_id - 1) % len(clues)]
    created = _stamp(EPOCH + timedelta(minutes=clue_id))
    return {
        "id": clue_id,
        "answer": clue["answer"],
        "question": "" if blank else clue["question"],
        "value": clue["value"],
        "airdate": _stamp(datetime(1990, 1, 1, 12, tzinfo=UTC) + timedelta(days=clue_id % 9000)),
        "created_at": created,
        "updated_at": created,
        "category_id": category_number,
        "game_id": None if clue_id % 7 == 0 else 1000 + clue_id // 60,
        "invalid_count": None,
        "category": {
            "id": category_number,
            "title": title,
            "created_at": _stamp(EPOCH),
            "updated_at": _stamp(EPOCH),
            "clues_count": category_size,
        },
    }


class RandomCluesHandler(RequestHandler):
    """GET /api/random?count=N: N random distinct clues (count clamped to 0..100)."""

    def initialize(  # noqa: D102
        self, clues: list[SourceClue], behaviour: Behaviour
    ) -> None:
        self.clues = clues
        self.behaviour = behaviour

    async def get(self) -> None:
        """Answer one batch, or misbehave as the switches say."""
        behaviour = self.behaviour
        try:
            count = max(0, min(MAX_COUNT, int(self.get_query_argument("count", "1"))))
        except ValueError:
            count = 1
        behaviour.requested_counts.append(count)
        behaviour.request_times.append(asyncio.get_running_loop().time())
        if behaviour.hang:
            await asyncio.Event().wait()
        if behaviour.latency:
            await asyncio.sleep(behaviour.latency)
        if behaviour.fail_times > 0:
            behaviour.fail_times -= 1
            self.set_status(behaviour.fail_status)
            if behaviour.retry_after is not None:
                self.set_header("Retry-After", behaviour.retry_after)
            self.finish({"error": "injected failure"})
            return
        if behaviour.redirect_to is not None:
            self.redirect(behaviour.redirect_to)
            return
        if behaviour.garbage is not None:
            self.set_header("Content-Type", "text/html")
            self.finish(behaviour.garbage)
            return
        pool = behaviour.pool_size or len(self.clues)
        ids = [number + 1 for number in random.sample(range(pool), min(count, pool))]
        batch = [render_clue(i, self.clues, i in behaviour.blank_ids) for i in ids]
        if behaviour.repeat_in_batch:
            batch = [clue for clue in batch for _ in (0, 1)][:count]
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(batch))


def make_standin_app(behaviour: Behaviour | None = None) -> Application:
    """The stand-in as a Tornado application (no access log, so it is never the bottleneck)."""
    return Application(
        [
            (
                r"/api/random",
                RandomCluesHandler,
                {"clues": load_clues(), "behaviour": behaviour or Behaviour()},
            )
        ],
        log_function=lambda handler: None,
    )
