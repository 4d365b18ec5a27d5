"""HTTP/1.1 connections as the service runs them on top of Tornado's. An answer sent before the
request was read (413, 403, 503, ...) is followed by a lingering close, the way nginx and Apache
close: a plain close with unread input makes the kernel reset the connection, and a client still
writing its body then never reads the answer. A request Tornado cannot parse gets a problem
document where Tornado would send a bare 400 (or, for an oversized header block, nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import uuid
from asyncio import Future
from collections.abc import Awaitable
from typing import Any

from tornado import httputil
from tornado.iostream import IOStream, UnsatisfiableReadError

from handlers.problems import PROBLEM_CONTENT_TYPE, phrase, problem_document

# nginx's defaults (lingering_timeout, lingering_time): what the client still sends is read and
# dropped while it keeps coming at most 5 s apart, for 30 s at most...
LINGER_SILENCE_SECONDS = 5.0
LINGER_TOTAL_SECONDS = 30.0
# ...and 1 GiB at most (nginx has no byte cap): ten times the default MAX_UPLOAD_BYTES, so a client
# that writes a whole refused upload before it reads still gets its answer. Dropping 500 MB took
# 0.11-0.16 s of the server's CPU on loopback (docs/reliability.md); the time cap bounds slower links.
LINGER_MAX_BYTES = 1024**3
LINGER_READ_BYTES = 256 * 1024
LINGER_READS_PER_TURN = 16  # then the event loop serves others before this socket is read on

# What Tornado's HTTP1Connection writes to refuse a request it cannot parse, and the interim answer
# it sends to `Expect: 100-continue` (which is not an answer to the request).
TORNADO_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
TORNADO_CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"
# A request's line and header fields, at most (Tornado's default, made explicit by make_server).
MAX_HEAD_BYTES = 64 * 1024
DECIMAL = re.compile(r"[0-9]+")
MALFORMED_HEAD = "the request line or a header field is malformed"
MALFORMED_CHUNKS = "the chunked body is malformed, or declares a chunk larger than the body may be"


def problem_response(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 answer carrying a problem document, after which the connection closes."""
    request_id = uuid.uuid4().hex  # no handler saw the request: an id of its own, for the log
    body = problem_document(status, detail, {"request_id": request_id})
    head = (
        f"HTTP/1.1 {status} {phrase(status)}\r\nContent-Type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def framing_problem(headers: httputil.HTTPHeaders) -> str | None:
    """What is wrong with how a request's headers frame its body (RFC 9112 6), or None: what
    Tornado refuses (with a bare 400, once a handler has started), except a Content-Length over a
    cap, which the handler answers with 413."""
    length = headers.get("Content-Length")
    coding = headers.get("Transfer-Encoding")
    if length is not None and coding is not None:
        return "a request must not have both Content-Length and Transfer-Encoding"
    if length is not None and not DECIMAL.fullmatch(length):
        return "Content-Length must be one non-negative decimal integer"
    if coding is not None and coding.lower() != "chunked":
        return "Transfer-Encoding must be chunked, the only transfer coding the service reads"
    return None


def declares_body(headers: httputil.HTTPHeaders) -> bool:
    """Whether a request says a body follows its headers."""
    return "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0"


class Lingering:
    """Sockets being closed the lingering way: the write side is shut (the client sees the end of
    the answer), and what the client still sends is read and dropped until it stops (end of file,
    or `silence` seconds without a byte), `total` seconds have passed or `max_bytes` were read;
    then the socket is closed. On the event loop, with one buffer for all: no thread, no copy."""

    def __init__(
        self,
        silence: float = LINGER_SILENCE_SECONDS,
        total: float = LINGER_TOTAL_SECONDS,
        max_bytes: int = LINGER_MAX_BYTES,
    ) -> None:
        self.silence = silence
        self.total = total
        self.max_bytes = max_bytes
        self.buffer = bytearray(LINGER_READ_BYTES)
        self.sockets: set[_Linger] = set()

    def take(self, sock: socket.socket) -> None:
        """Close `sock` the lingering way (at once when it cannot be)."""
        try:
            loop = asyncio.get_running_loop()
            sock.shutdown(socket.SHUT_WR)
        except (RuntimeError, OSError):  # no event loop (shutting down), or the client is gone
            sock.close()
            return
        self.sockets.add(_Linger(self, sock, loop))

    def close_all(self) -> None:
        """Close every socket still lingering."""
        for linger in list(self.sockets):
            linger.close()


class _Linger:
    """One socket being read and dropped until one of its owner's limits is reached."""

    def __init__(self, owner: Lingering, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.sock = sock
        self.loop = loop
        self.last = loop.time()
        self.deadline = self.last + owner.total
        self.read = 0
        loop.add_reader(sock.fileno(), self._on_readable)
        self.timer = loop.call_at(min(self.last + owner.silence, self.deadline), self._on_timer)

    def _on_readable(self) -> None:
        for _ in range(LINGER_READS_PER_TURN):
            try:
                count = self.sock.recv_into(self.owner.buffer)
            except BlockingIOError:
                break
            except OSError:
                count = 0
            self.read += count
            if count == 0 or self.read >= self.owner.max_bytes:
                self.close()
                return
        self.last = self.loop.time()

    def _on_timer(self) -> None:
        now = self.loop.time()
        if now >= self.deadline or now - self.last >= self.owner.silence:
            self.close()
            return
        self.timer = self.loop.call_at(min(self.last + self.owner.silence, self.deadline), self._on_timer)

    def close(self) -> None:
        """Stop reading and close the socket (with anything still unread, the kernel resets it)."""
        if self in self.owner.sockets:
            self.owner.sockets.discard(self)
            self.timer.cancel()
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class ServiceStream(IOStream):
    """A server connection's stream that closes the lingering way when input is left unread, and
    answers with a problem document where Tornado would refuse a request with a bare 400 or none.
    RequestGuard keeps its per-request state."""

    def __init__(self, sock: socket.socket, lingering: Lingering, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.lingering = lingering
        self.start_request()

    def start_request(self) -> None:
        """A new request's head is awaited."""
        self.reading_head = True
        self.answered = False
        self.linger = False  # input will be left unread if the stream closes now
        self.refusal = (400, MALFORMED_HEAD)  # the answer if Tornado refuses the request now

    def write(self, data: bytes | memoryview) -> Future[None]:
        """Write, putting a problem document in place of Tornado's bare 400."""
        if len(data) == len(TORNADO_BAD_REQUEST) and bytes(data) == TORNADO_BAD_REQUEST:
            self.linger = True  # Tornado stops reading the request here
            if self.answered:  # the handler answered already: that answer stands
                done: Future[None] = Future()
                done.set_result(None)
                return done
            data = problem_response(*self.refusal)
        if not (len(data) == len(TORNADO_CONTINUE) and bytes(data) == TORNADO_CONTINUE):
            self.answered = True
        return super().write(data)

    def close_fd(self) -> None:
        """Close the socket: the lingering way when input is left unread."""
        sock = self.socket
        if isinstance(self.error, UnsatisfiableReadError) and self.reading_head:
            # The header block outgrew max_header_size: Tornado closes without a word. The answer
            # is small and nothing else was written, so it fits the socket's empty send buffer.
            with contextlib.suppress(OSError):
                sock.send(problem_response(431, f"the request's header block is over {MAX_HEAD_BYTES} bytes"))
            self.linger = True
        if not self.linger:
            super().close_fd()
            return
        self.socket = None  # type: ignore[assignment]  # as IOStream.close_fd leaves it
        self.lingering.take(sock)


class RequestGuard(httputil.HTTPMessageDelegate):
    """Stands between Tornado's connection and the application for one request: refuses a request
    whose headers frame its body wrongly before any handler sees it, and tells the stream how to
    close (lingering while a declared body is not read in full) and how to refuse."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, stream: ServiceStream) -> None:
        self._delegate = delegate
        self._stream = stream
        self._started = False
        stream.start_request()

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        """Check the framing, then hand the request to the application."""
        stream = self._stream
        stream.reading_head = False
        stream.linger = declares_body(headers)
        problem = framing_problem(headers)
        if problem is not None:
            stream.refusal = (400, problem)
            raise httputil.HTTPInputError(problem)  # Tornado refuses it; the stream words the answer
        # Tornado refuses a body it reads only for broken chunks, or a length over its own cap
        # (above every handler's, so handlers refuse that first).
        chunked = "Transfer-Encoding" in headers
        stream.refusal = (400, MALFORMED_CHUNKS) if chunked else (413, "the request body is too large")
        try:
            result = self._delegate.headers_received(start_line, headers)
        except httputil.HTTPInputError as error:  # the Host header or the query string
            stream.refusal = (400, str(error))
            raise
        self._started = True
        return result

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        """Pass a piece of the body on."""
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        """The whole body was read: nothing is left unread."""
        self._stream.linger = False
        self._delegate.finish()

    def on_connection_close(self) -> None:
        """Tell the application, if it had the request."""
        if self._started:
            self._delegate.on_connection_close()
