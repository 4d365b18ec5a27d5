"""Database access for questions: small functions that take and return plain values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from models import Question, in_transaction
from quiz.upstream import Clue

QuestionDict = dict[str, Any]


def iso8601(moment: datetime | None) -> str | None:
    """Format a timestamp the way jService does (UTC, milliseconds, `Z`)."""
    if moment is None:
        return None
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def question_to_dict(row: Question) -> QuestionDict:
    """The public JSON shape of a stored question; `id` is the upstream id."""
    return {
        "id": row.jservice_id,
        "question": row.question,
        "answer": row.answer,
        "created_at": iso8601(row.created_at),
        "airdate": iso8601(row.airdate),
        "value": row.value,
        "category": row.category,
        "saved_at": iso8601(row.saved_at),
    }


def _latest() -> QuestionDict | None:
    row = Question.select().order_by(Question.id.desc()).first()
    return question_to_dict(row) if row else None


@in_transaction
def latest_question() -> QuestionDict | None:
    """The most recently saved question, or None when there is none."""
    return _latest()


@in_transaction
def insert_new_questions(clues: Sequence[Clue], with_previous: bool) -> tuple[int, QuestionDict | None]:
    """Insert the clues whose upstream id is new; return how many were stored and, when
    asked, the latest question as it was just before this insert."""
    previous = _latest() if with_previous else None
    if not clues:
        return 0, previous
    # In id order: concurrent batches that share ids then lock them in the same order, never a deadlock.
    rows = [asdict(clue) for clue in sorted(clues, key=lambda clue: clue.jservice_id)]
    cursor = Question.insert_many(rows).on_conflict_ignore().returning(Question.jservice_id).execute()
    return len(list(cursor)), previous


@in_transaction
def list_questions(limit: int, offset: int) -> dict[str, Any]:
    """One page of stored questions, newest first, and the total count."""
    rows = Question.select().order_by(Question.id.desc()).limit(limit).offset(offset)
    return {"items": [question_to_dict(row) for row in rows], "total": Question.select().count()}
