"""Database access for users: tokens are stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any, Literal

from database import with_connection
from models import User, database
from queries.questions import iso8601

TokenCheck = Literal["ok", "unknown_user", "wrong_token"]


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token, which is all the database keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# One statement for any number of users, with two array parameters: no per-row query building.
INSERT_USERS = (
    "INSERT INTO users (name, token_sha256) SELECT * FROM unnest(%s::text[], %s::text[])"
    " RETURNING token_sha256, id"
)


@with_connection
def create_users(names: list[str]) -> list[tuple[int, str]]:
    """Store one user per name, each with a fresh uuid4 token, in one statement (one commit);
    returns (id, token) per name, in order. Tokens are never stored."""
    tokens = [str(uuid.uuid4()) for _ in names]
    digests = [token_digest(token) for token in tokens]
    # Matched by digest: PostgreSQL does not promise RETURNING rows in input order.
    ids = dict(database.execute_sql(INSERT_USERS, (names, digests)).fetchall())
    return [(ids[digest], token) for digest, token in zip(digests, tokens, strict=True)]


@with_connection
def find_user(user_id: int) -> dict[str, Any] | None:
    """A user's public fields, or None."""
    user = User.get_or_none(User.id == user_id)
    if user is None:
        return None
    return {"id": user.id, "name": user.name, "created_at": iso8601(user.created_at)}


@with_connection
def check_token(user_id: int, token: str) -> TokenCheck:
    """Whether `token` belongs to the user, compared in constant time."""
    stored = User.select(User.token_sha256).where(User.id == user_id).scalar()
    if stored is None:
        return "unknown_user"
    return "ok" if hmac.compare_digest(stored, token_digest(token)) else "wrong_token"
