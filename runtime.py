"""Process-wide helpers for serving: counting in-flight requests and the access log."""

from __future__ import annotations

import asyncio
import logging

from tornado.web import RequestHandler

access_log = logging.getLogger("tornado.access")


class InFlight:
    """Counts requests being served; `drained` resolves when none are left."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """A request started."""
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request ended, answered or abandoned."""
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (driver errors run to several), or ''."""
    return (str(error).strip().splitlines() or [""])[0]


def log_request(handler: RequestHandler) -> None:
    """One access-log line a request: method, path (never the query, which may hold secrets), status,
    milliseconds, the client's address and the request id. Refused requests (4xx) are routine: INFO."""
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return  # LOG_LEVEL=WARNING: no access log, and no work for it
    client = getattr(handler, "client", None)
    access_log.log(
        level,
        "%s %s %d %.1fms client=%s request_id=%s",
        handler.request.method,
        handler.request.path,
        status,
        1000.0 * handler.request.request_time(),
        client.address if client is not None else handler.request.remote_ip,
        getattr(handler, "request_id", "-"),
    )
