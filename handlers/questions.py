"""POST /questions stores new quiz questions; GET /questions pages through them."""

from __future__ import annotations

from typing import Any

from handlers.base import BaseHandler
from handlers.problems import ApiError, invalid, sole_field
from queries.questions import latest_question, list_questions
from upstream.collect import Budget, QuestionsShortfall, QuestionStore, store_new_questions

SHORTFALL_STATUS = {"bad_gateway": 502, "timeout": 504, "no_new_questions": 503}


def parse_questions_num(body: dict[str, Any], maximum: int) -> int:
    """The validated `questions_num` of a POST /questions body: a JSON number without a fraction,
    as JSON Schema's `integer` (and so openapi.yaml) reads it, `3.0` included."""
    value = sole_field(body, "questions_num")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise invalid("questions_num", f"must be an integer from 0 to {maximum}")
    return value


class QuestionsHandler(BaseHandler):
    """The quiz questions collection."""

    async def post(self) -> None:
        """Store new questions; answer with the one saved before them."""
        count = parse_questions_num(self.json_object(), self.config.max_questions_num)
        budget = Budget(
            max_calls=self.config.jservice_max_calls,
            seconds=self.config.jservice_budget_seconds,
            call_timeout=self.config.jservice_timeout,
        )
        try:
            previous = await store_new_questions(count, self.jservice, self.question_store, budget)
        except QuestionsShortfall as shortfall:
            raise ApiError(
                SHORTFALL_STATUS[shortfall.reason],
                f"stored {shortfall.saved} of {shortfall.requested} new questions: {shortfall.detail}",
                extra={"saved": shortfall.saved, "requested": shortfall.requested},
            ) from None
        self.write_json(previous or {})

    @property
    def question_store(self) -> QuestionStore:
        """The database as the store-N-new-questions loop uses it: batches from concurrent requests
        share one statement and one commit."""
        return QuestionStore(
            latest=lambda: self.run_db(latest_question),
            insert=lambda clues: self.db_result(self.question_batches.submit(clues)),
        )

    async def get(self) -> None:
        """One page of stored questions, newest first."""
        self.write_json(await self.run_db(list_questions, *self.page_query()))
