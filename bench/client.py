"""A small keep-alive HTTP/1.1 client over asyncio streams: bodies may stream from files (sendfile)
and responses may be discarded or written to a file, so nothing large is held in memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 256 * 1024
STREAM_LIMIT = 1024 * 1024
EARLY_ANSWER_SECONDS = 1.0

# A request body: bytes, or pieces that are bytes or files sent as they are (never read whole).
Body = bytes | Sequence[bytes | Path]


class ProtocolError(ConnectionError):
    """The server answered something this client cannot read."""


@dataclass(frozen=True)
class Response:
    """A response: the body is kept only when asked for; `size` counts its bytes either way."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    size: int


def body_length(body: Body) -> int:
    """The Content-Length of a body."""
    if isinstance(body, bytes):
        return len(body)
    return sum(len(piece) if isinstance(piece, bytes) else piece.stat().st_size for piece in body)


class Connection:
    """One keep-alive connection; reconnects by itself when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        target: str,
        body: Body = b"",
        headers: Mapping[str, str] | None = None,
        keep_body: bool = True,
        sink: BinaryIO | None = None,
    ) -> Response:
        """Send one request and read the whole response (kept, written to `sink`, or counted)."""
        if self._writer is None or self._writer.is_closing():
            await self._connect()
        assert self._reader is not None and self._writer is not None
        try:
            try:
                await self._send(method, target, body, headers or {})
            except ConnectionError as error:
                # The server may have answered early (a 413 or 503 before the body) and closed.
                response = await self._early_answer(method, error)
            else:
                response = await self._receive(method, keep_body, sink)
        except BaseException:
            await self.close()
            raise
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def close(self) -> None:
        """Close the socket (a later request opens a new one)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _early_answer(self, method: str, error: ConnectionError) -> Response:
        try:
            response = await asyncio.wait_for(self._receive(method, True, None), EARLY_ANSWER_SECONDS)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            raise error from None
        return Response(response.status, {**response.headers, "connection": "close"}, response.body, 0)

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=STREAM_LIMIT)

    async def _send(self, method: str, target: str, body: Body, headers: Mapping[str, str]) -> None:
        assert self._writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {body_length(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        pieces: Sequence[bytes | Path] = [body] if isinstance(body, bytes) else body
        for piece in pieces:
            if isinstance(piece, bytes):
                self._writer.write(piece)
                continue
            await self._writer.drain()
            with piece.open("rb") as file:
                await asyncio.get_running_loop().sendfile(self._writer.transport, file)
        await self._writer.drain()

    async def _receive(self, method: str, keep_body: bool, sink: BinaryIO | None) -> Response:
        assert self._reader is not None
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            raise ProtocolError("the connection closed before a response") from error
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"bad status line {status_line!r}") from None
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        kept = bytearray() if keep_body else None
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            size = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            size = await self._read_chunked(kept, sink)
        elif "content-length" in headers:
            size = await self._read_exact(int(headers["content-length"]), kept, sink)
        else:
            size = await self._read_exact(None, kept, sink)
            headers["connection"] = "close"
        return Response(status, headers, bytes(kept) if kept is not None else b"", size)

    async def _read_exact(self, length: int | None, kept: bytearray | None, sink: BinaryIO | None) -> int:
        """Read `length` bytes (None: until the server closes)."""
        assert self._reader is not None
        done = 0
        while length is None or done < length:
            want = READ_CHUNK if length is None else min(READ_CHUNK, length - done)
            chunk = await self._reader.read(want)
            if not chunk:
                if length is None:
                    break
                raise ProtocolError("the connection closed in the middle of a body")
            done += len(chunk)
            if kept is not None:
                kept += chunk
            if sink is not None:
                sink.write(chunk)
        return done

    async def _read_chunked(self, kept: bytearray | None, sink: BinaryIO | None) -> int:
        assert self._reader is not None
        total = 0
        while True:
            size_line = await self._reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return total
            total += await self._read_exact(size, kept, sink)
            await self._reader.readexactly(2)
