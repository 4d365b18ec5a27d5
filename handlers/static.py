"""Static files served the API's way: Tornado's StaticFileHandler with problem documents."""

from __future__ import annotations

import os
from collections.abc import Generator

from tornado.web import StaticFileHandler

from handlers.base import BaseHandler

# StaticFileHandler reads 64 KiB at a time and awaits a flush after each piece; with 256 KiB a 7 MB
# MP3 takes a quarter of the event loop's turns (the download scenario: 560-610 -> 900-1,000 MB/s on
# one core); 1 MiB was no faster.
READ_CHUNK_BYTES = 256 * 1024


class StaticBaseHandler(BaseHandler, StaticFileHandler):
    """StaticFileHandler's file serving (Range, HEAD, 304) with this API's problem documents."""

    def initialize(self, path: str) -> None:  # type: ignore[override]
        """Serve files below `path`."""
        BaseHandler.initialize(self)
        StaticFileHandler.initialize(self, path)

    def compute_etag(self) -> str | None:
        """StaticFileHandler's content hash (the base handler sends no ETags)."""
        return StaticFileHandler.compute_etag(self)

    @classmethod
    def get_content(
        cls, abspath: str, start: int | None = None, end: int | None = None
    ) -> Generator[bytes, None, None]:
        """The file's bytes from `start` to `end` in READ_CHUNK_BYTES pieces (StaticFileHandler's hook)."""
        # Only ever called after validate_absolute_path, which refuses what is not a regular file.
        with open(abspath, "rb") as file:
            if start is not None:
                file.seek(start)
            remaining = (end if end is not None else os.fstat(file.fileno()).st_size) - (start or 0)
            while remaining > 0:
                chunk = file.read(min(remaining, READ_CHUNK_BYTES))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    async def get(self, path: str, include_body: bool = True) -> None:
        """Send the file; an unsatisfiable range becomes a problem document too."""
        await StaticFileHandler.get(self, path, include_body)
        if self.get_status() == 416 and not self._finished:
            self.write_problem(416, "the requested range is not satisfiable")
