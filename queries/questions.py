"""Database access for questions: small functions that take and return plain values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from database import with_connection
from models import Question, database
from upstream.client import Clue

QuestionDict = dict[str, Any]

# The public fields, in the order the queries below select them; "id" is the upstream id.
PUBLIC_COLUMNS = (
    Question.jservice_id,
    Question.question,
    Question.answer,
    Question.created_at,
    Question.airdate,
    Question.value,
    Question.category,
    Question.saved_at,
)
# One statement, so one round trip and one snapshot: `previous` is the latest question as it was
# just before these rows went in, however many other requests insert at the same time. The rows
# come as one array per column, so the statement has one shape for any batch.
INSERT_NEW = """
WITH previous AS (
    SELECT jservice_id, question, answer, created_at, airdate, value, category, saved_at
    FROM questions ORDER BY id DESC LIMIT 1
), inserted AS (
    INSERT INTO questions (jservice_id, question, answer, created_at, airdate, value, category)
    SELECT jservice_id, question, answer, created_at, airdate, value, category
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
                %s::integer[], %s::text[]) WITH ORDINALITY
        AS batch (jservice_id, question, answer, created_at, airdate, value, category, position)
    ORDER BY position
    ON CONFLICT (jservice_id) DO NOTHING
    RETURNING jservice_id
)
SELECT (SELECT array_agg(jservice_id) FROM inserted), previous.*
FROM (SELECT 1) AS one LEFT JOIN previous ON TRUE
"""


def iso8601(moment: datetime | None) -> str | None:
    """Format a timestamp the way jService does (UTC, milliseconds, `Z`)."""
    if moment is None:
        return None
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def question_dict(values: Sequence[Any]) -> QuestionDict:
    """The public JSON shape of a stored question, from its PUBLIC_COLUMNS values."""
    jservice_id, question, answer, created_at, airdate, value, category, saved_at = values
    return {
        "id": jservice_id,
        "question": question,
        "answer": answer,
        "created_at": iso8601(created_at),
        "airdate": iso8601(airdate),
        "value": value,
        "category": category,
        "saved_at": iso8601(saved_at),
    }


def _row(clue: Clue) -> tuple[Any, ...]:
    when = clue.created_at, clue.airdate
    return clue.jservice_id, clue.question, clue.answer, *when, clue.value, clue.category


@with_connection
def latest_question() -> QuestionDict | None:
    """The most recently saved question, or None when there is none."""
    row = Question.select(*PUBLIC_COLUMNS).order_by(Question.id.desc()).limit(1).tuples().first()
    return question_dict(row) if row else None


@with_connection
def insert_new_questions(batches: Sequence[Sequence[Clue]]) -> list[tuple[int, QuestionDict | None]]:
    """Insert the clues of several requests (a batch each, at least one clue in all) whose upstream
    id is new, in one statement and one commit. For each batch: how many of its clues were stored
    (a clue in two batches counts for the first), and the latest question as it was just before."""
    first_batch: dict[int, int] = {}
    unique: dict[int, Clue] = {}
    for index, batch in enumerate(batches):
        for clue in batch:
            first_batch.setdefault(clue.jservice_id, index)
            unique.setdefault(clue.jservice_id, clue)
    # In id order: concurrent statements that share ids then lock them in the same order, never a deadlock.
    ordered = sorted(unique.values(), key=lambda clue: clue.jservice_id)
    columns = [list(column) for column in zip(*map(_row, ordered), strict=True)]
    inserted, *previous = database.execute_sql(INSERT_NEW, columns).fetchone()
    stored = [0] * len(batches)
    for jservice_id in inserted or ():
        stored[first_batch[jservice_id]] += 1
    before = question_dict(previous) if previous[0] is not None else None
    return [(count, before) for count in stored]


@with_connection
def list_questions(limit: int, offset: int) -> dict[str, Any]:
    """One page of stored questions, newest first, and the total count."""
    rows: Any = Question.select(*PUBLIC_COLUMNS).order_by(Question.id.desc()).limit(limit).offset(offset)
    return {"items": [question_dict(row) for row in rows.tuples()], "total": Question.select().count()}
