"""Static files served the API's way: Tornado's StaticFileHandler with problem documents."""

from __future__ import annotations

from tornado.web import StaticFileHandler

from handlers.base import BaseHandler


class StaticBaseHandler(BaseHandler, StaticFileHandler):
    """StaticFileHandler's file serving (Range, HEAD, 304) with this API's problem documents."""

    def initialize(self, path: str) -> None:  # type: ignore[override]
        """Serve files below `path`."""
        BaseHandler.initialize(self)
        StaticFileHandler.initialize(self, path)

    def compute_etag(self) -> str | None:
        """StaticFileHandler's content hash (the base handler sends no ETags)."""
        return StaticFileHandler.compute_etag(self)

    async def get(self, path: str, include_body: bool = True) -> None:
        """Send the file; an unsatisfiable range becomes a problem document too."""
        await StaticFileHandler.get(self, path, include_body)
        if self.get_status() == 416 and not self._finished:
            self.write_problem(416, "the requested range is not satisfiable")
