"""The client side: single requests through Tornado's HTTP client (uploads streamed from disk, paced
when asked; downloads streamed to disk), a GET /health probe, and HTTP load from wrk."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from bench.service import children_cpu_seconds

PIECE_BYTES = 256 * 1024  # an upload is written in pieces of this size, each on its own schedule when paced
TRANSFER_TIMEOUT = 600
MAX_CLIENTS = 100  # Tornado's client queues requests beyond this many
WRK_SLACK_SECONDS = 30  # wrk gets this long past its duration before it is killed
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def client() -> AsyncHTTPClient:
    """The event loop's HTTP client (Tornado's simple_httpclient: one connection per request)."""
    return AsyncHTTPClient(max_clients=MAX_CLIENTS)


async def post_json(url: str, payload: Any) -> HTTPResponse:
    """POST a JSON body; the response whatever its status."""
    request = HTTPRequest(url, "POST", {"Content-Type": "application/json"}, json.dumps(payload))
    return await client().fetch(request, raise_error=False)


@dataclass(frozen=True)
class User:
    """The user uploads are made as."""

    id: int
    token: str


async def create_user(base_url: str, name: str = "bench") -> User:
    """POST /users."""
    response = await post_json(f"{base_url}/users", {"name": name})
    if response.code != 201:
        raise RuntimeError(f"POST /users answered {response.code}: {response.body[:300]!r}")
    body = json.loads(response.body)
    return User(int(body["id"]), str(body["token"]))


def multipart(user: User, wav: Path, fields_first: bool) -> tuple[bytes, bytes, str]:
    """The bytes before and after the file in a POST /records body, and its Content-Type. With the
    fields (user, token) first, the service converts the file while it arrives."""
    boundary = uuid.uuid4().hex
    fields = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("user", user.id), ("token", user.token))
    )
    file_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{wav.name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    head, tail = (fields + file_head, "\r\n") if fields_first else (file_head, "\r\n" + fields)
    return head.encode(), f"{tail}--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True)
class Upload:
    """One POST /records: its answer, and when (perf_counter) it began, sent its last byte, ended."""

    response: HTTPResponse
    started: float
    last_byte_sent: float
    answered: float
    size: int


async def upload(
    base_url: str, user: User, wav: Path, rate: float | None = None, fields_first: bool = True
) -> Upload:
    """POST /records with `wav` streamed from disk, at `rate` bytes/s (paced) or as fast as it goes."""
    head, tail, content_type = multipart(user, wav, fields_first)
    size = len(head) + wav.stat().st_size + len(tail)
    started = time.perf_counter()
    last_byte_sent = started

    async def produce(write: Callable[[bytes], Any]) -> None:  # Tornado's write returns a Future
        nonlocal last_byte_sent
        sent = 0
        with wav.open("rb") as file:
            for piece in itertools.chain([head], iter(lambda: file.read(PIECE_BYTES), b""), [tail]):
                sent += len(piece)
                if rate is not None:  # each piece leaves when the bytes up to its end are due
                    await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
                await write(piece)  # resolves once the piece is in the kernel's socket buffer
        last_byte_sent = time.perf_counter()

    headers = {"Content-Type": content_type, "Content-Length": str(size)}
    request = HTTPRequest(
        f"{base_url}/records",
        "POST",
        headers,
        body_producer=lambda write: asyncio.ensure_future(produce(write)),
        request_timeout=TRANSFER_TIMEOUT,
    )
    response = await client().fetch(request, raise_error=False)
    return Upload(response, started, last_byte_sent, time.perf_counter(), size)


async def download(url: str, sink: BinaryIO | None = None) -> HTTPResponse:
    """GET `url` with its body streamed into `sink` (or dropped); the response, whatever its status."""

    def take(chunk: bytes) -> None:
        if sink is not None:
            sink.write(chunk)

    request = HTTPRequest(url, streaming_callback=take, request_timeout=TRANSFER_TIMEOUT)
    return await client().fetch(request, raise_error=False)


class HealthProbe:
    """GET /health every `interval` seconds while running; keeps the longest answer time (a blocked
    event loop shows here, with each probe's connect and accept)."""

    def __init__(self, base_url: str, interval: float = 0.1) -> None:
        self.url = f"{base_url}/health"
        self.interval = interval
        self.longest = 0.0
        self.probes = 0
        self.failures = 0
        self._stop = asyncio.Event()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            sent = time.perf_counter()
            try:
                self.failures += (await client().fetch(self.url, raise_error=False)).code != 200
            except (OSError, HTTPClientError):
                self.failures += 1
            self.longest = max(self.longest, time.perf_counter() - sent)
            self.probes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), max(0.0, sent + self.interval - time.perf_counter())
                )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HealthProbe]:
        """Probe during the `async with` block; the probe in flight at its end is waited for."""
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            self._stop.set()
            await task


@dataclass(frozen=True)
class LoadResult:
    """What a wrk run measured."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int  # socket errors and timeouts
    bytes_per_s: float
    client_cpu_pct: float  # wrk's own CPU, % of one core (shows when the client is the limit)


async def wrk(
    wrk_path: str, url: str, connections: int, seconds: float, body: bytes = b"", content_type: str = ""
) -> LoadResult:
    """`wrk --latency` at `connections` for `seconds` with 1 thread (its C loop is far from the limit
    here and leaves the cores to the servers); a POST of `body` when one is given."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as directory:
        command = [wrk_path, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency"]
        if body:
            script = Path(directory) / "post.lua"
            escaped = "".join(f"\\{byte}" for byte in body)
            script.write_text(f'wrk.method = "POST"\nwrk.body = "{escaped}"\n')
            command += ["-s", str(script), "-H", f"Content-Type: {content_type}"]
        cpu_before = children_cpu_seconds()
        process = await asyncio.create_subprocess_exec(
            *command, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), seconds + WRK_SLACK_SECONDS)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text}")
    return parse_wrk(text, children_cpu_seconds() - cpu_before)


def _match(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ValueError(f"wrk output has no match for {pattern!r}:\n{text}")
    return match


def parse_wrk(text: str, cpu_seconds: float) -> LoadResult:
    """The numbers of `wrk --latency` output; `cpu_seconds` is what wrk used."""
    done = _match(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ", text)
    seconds = float(done.group(2)) * UNITS[done.group(3)]
    p50, p99 = (_match(rf"^\s*{p}%\s*([\d.]+)(us|ms|s|m|h)\b", text) for p in (50, 99))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    transfer = _match(r"^Transfer/sec:\s*([\d.]+)(B|KB|MB|GB|TB)", text)
    return LoadResult(
        requests=int(done.group(1)),
        seconds=seconds,
        rps=float(_match(r"^Requests/sec:\s*([\d.]+)", text).group(1)),
        p50_ms=float(p50.group(1)) * UNITS[p50.group(2)] * 1000,
        p99_ms=float(p99.group(1)) * UNITS[p99.group(2)] * 1000,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(value) for value in errors.groups()) if errors else 0,
        bytes_per_s=float(transfer.group(1)) * SIZES[transfer.group(2)],
        client_cpu_pct=100 * cpu_seconds / seconds if seconds else 0.0,
    )
