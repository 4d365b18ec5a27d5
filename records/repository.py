"""Database access for records."""

from __future__ import annotations

import uuid
from typing import Any

from database import in_transaction, with_connection
from models import Record
from records.storage import StoredAudio


@in_transaction  # a row must never appear after a crash (start-up would have deleted its file)
def insert_record(audio: StoredAudio, user_id: int, original_name: str) -> None:
    """The row for an MP3 that is already in place."""
    Record.create(
        id=audio.record_id,
        user=user_id,
        original_name=original_name,
        path=audio.path,
        size=audio.size,
        duration=audio.duration,
    )


@with_connection
def record_paths() -> set[str]:
    """The relative paths of every stored record."""
    return {record.path for record in Record.select(Record.path)}


@with_connection
def find_record(record_id: uuid.UUID, user_id: int) -> dict[str, Any] | None:
    """The record with this id if it belongs to this user, else None."""
    record = Record.get_or_none((Record.id == record_id) & (Record.user == user_id))
    if record is None:
        return None
    return {"id": str(record.id), "path": record.path, "original_name": record.original_name}
