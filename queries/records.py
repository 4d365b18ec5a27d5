"""Database access for records."""

from __future__ import annotations

import uuid
from typing import Any

from database import in_transaction, with_connection
from models import Record
from queries.questions import iso8601


@in_transaction  # committed only by a live process, after the MP3 is in the store
def insert_record(
    record_id: uuid.UUID, user_id: int, original_name: str, key: str, size: int, duration: float
) -> None:
    """The row for an MP3 that is already in the store under `key`."""
    Record.create(
        id=record_id, user=user_id, original_name=original_name, path=key, size=size, duration=duration
    )


@with_connection
def keys_with_rows(keys: list[str]) -> set[str]:
    """Which of these store keys a record points at (for the orphan sweep)."""
    rows: Any = Record.select(Record.path).where(Record.path.in_(keys)).tuples()
    return {path for (path,) in rows}


@with_connection
def find_record(record_id: uuid.UUID, user_id: int) -> dict[str, Any] | None:
    """The record with this id if it belongs to this user, else None."""
    record = Record.get_or_none((Record.id == record_id) & (Record.user == user_id))
    if record is None:
        return None
    return {
        "id": str(record.id),
        "path": record.path,
        "original_name": record.original_name,
        "created_at": record.created_at,
    }


@with_connection
def list_user_records(user_id: int, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """One page of a user's records, newest first (id, original_name, size, duration, created_at),
    and how many the user has."""
    of_user = Record.user == user_id
    rows: Any = (
        Record.select(Record.id, Record.original_name, Record.size, Record.duration, Record.created_at)
        .where(of_user)
        .order_by(Record.created_at.desc(), Record.id.desc())
        .limit(limit)
        .offset(offset)
    )
    page = [
        {
            "id": str(record_id),
            "file_name": name,
            "size": size,
            "duration": duration,
            "created_at": iso8601(created_at),
        }
        for record_id, name, size, duration, created_at in rows.tuples()
    ]
    return page, Record.select().where(of_user).count()


# Committed before the file is removed: a crash in between leaves a file without a row (swept),
# never a row without its file.
@in_transaction
def delete_record(record_id: uuid.UUID, user_id: int) -> str | None:
    """Delete the user's record; its file's relative path, or None when there was no such record."""
    query = Record.delete().where((Record.id == record_id) & (Record.user == user_id)).returning(Record.path)
    row: tuple[str] | None = next(iter(query.tuples().execute()), None)
    return row[0] if row else None
