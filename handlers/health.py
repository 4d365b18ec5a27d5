"""GET /health: whether the service can reach its database."""

from database import ping
from handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    """200 {"status": "ok"} when the database answers; a 503 problem when it does not."""

    async def get(self) -> None:
        """Ping the database."""
        await self.run_db(ping)
        self.write_json({"status": "ok"})
