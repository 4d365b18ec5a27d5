"""POST /users creates a user and its access token; GET /users/<id> shows one."""

from __future__ import annotations

from typing import Any

from database import storable_text
from handlers.base import BaseHandler
from handlers.problems import ApiError, invalid, sole_field
from queries.users import find_user

MAX_NAME_CHARS = 100


def parse_user_name(body: dict[str, Any]) -> str:
    """The validated, trimmed `name` of a POST /users body."""
    name = sole_field(body, "name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME_CHARS:
        raise invalid("name", f"must be a string of 1 to {MAX_NAME_CHARS} characters")
    if not storable_text(name):
        raise invalid("name", "must not contain NUL characters or unpaired surrogates")
    return name.strip()


class UsersHandler(BaseHandler):
    """The users collection."""

    async def post(self) -> None:
        """Create a user; the token is shown only in this answer."""
        name = parse_user_name(self.json_object())
        user_id, token = await self.db_result(self.user_batches.submit(name))
        self.set_header("Location", f"/users/{user_id}")
        self.write_json({"id": user_id, "token": token}, status=201)


class UserHandler(BaseHandler):
    """One user, without its token."""

    async def get(self, user_id: str) -> None:
        """Show the user's id, name and creation time."""
        user = await self.run_db(find_user, int(user_id)) if len(user_id) <= 18 else None
        if user is None:
            raise ApiError(404, f"there is no user {user_id}")
        self.write_json(user)
