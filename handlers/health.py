"""GET /health: whether the service can reach its database, and which version it is."""

import tomllib
from pathlib import Path

from database import ping
from handlers.base import BaseHandler

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def service_version(path: Path = PYPROJECT) -> str:
    """The version in pyproject.toml, the one place it is written down."""
    with path.open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


VERSION = service_version()  # read once, when the service starts


class HealthHandler(BaseHandler):
    """200 {"status": "ok", "version": ...} when the database answers; a 503 problem when it does not."""

    async def get(self) -> None:
        """Ping the database (one round trip on a pooled connection: nothing more)."""
        await self.run_db(ping)
        self.write_json({"status": "ok", "version": VERSION})
