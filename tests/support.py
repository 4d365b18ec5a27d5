"""Helpers the tests share: HTTP calls, the database, processes and polling."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.web import Application

from storage import MediaStore
from tests.contract import check_response

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Reply:
    """An HTTP response with its JSON body decoded (None when it has none)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


def reply_of(response: HTTPResponse) -> Reply:
    return Reply(response.code, response.headers, response.body or b"")


async def call(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    """One request to the service, its answer checked against openapi.yaml."""
    reply = await fetch(base_url, method, path, body, raw, headers, timeout)
    check_response(method, base_url + path, headers, reply.status, reply.headers, reply.body)
    return reply


async def fetch(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    """One request with a fresh client; `body` is sent as JSON, `raw` as is."""
    if raw is None and body is not None:
        raw = json.dumps(body).encode()
    if raw is None and method in ("POST", "PUT", "PATCH"):
        raw = b""
    request = HTTPRequest(
        base_url + path,
        method=method,
        body=raw,
        headers=headers,
        request_timeout=timeout,
        allow_nonstandard_methods=True,
    )
    client = AsyncHTTPClient(force_instance=True)
    try:
        return reply_of(await client.fetch(request, raise_error=False))
    finally:
        client.close()


async def post_streaming(
    url: str, content_type: str, produce: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]
) -> Reply:
    """POST a body that `produce` writes piece by piece (sent chunked, with no Content-Length)."""
    request = HTTPRequest(
        url,
        method="POST",
        body_producer=produce,  # type: ignore[arg-type]  # Tornado's stub wants a Future, a coroutine works
        headers={"Content-Type": content_type},
        request_timeout=60,
    )
    client = AsyncHTTPClient(force_instance=True)
    try:
        return reply_of(await client.fetch(request, raise_error=False))
    finally:
        client.close()


def port_of(base_url: str) -> int:
    """The port of a server's base URL."""
    port = urlsplit(base_url).port
    assert port is not None
    return port


def upload_head(form: tuple[bytes, str]) -> bytes:
    """The request line and headers of a POST /records with this (body, content type)."""
    body, content_type = form
    return (
        f"POST /records HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


async def send_partial(
    port: int, head: bytes, sent: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a raw connection to the server on loopback and send headers and part of a body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + sent)
    await writer.drain()
    return reader, writer


async def stall_body(port: int, head: bytes, sent: bytes) -> bytes:
    """Send headers and part of a body, then nothing; what the server answers before it hangs up."""
    reader, writer = await send_partial(port, head, sent)
    try:
        return await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()


# What a client sees when the server goes away mid-request.
CONNECTION_LOST = (OSError, HTTPClientError)


async def post_form(base_url: str, form: tuple[bytes, str], timeout: float = 30) -> Reply:
    """POST /records with a (body, content type) pair from `tests.audio.upload_form`."""
    body, content_type = form
    return await call(
        base_url, "POST", "/records", raw=body, headers={"Content-Type": content_type}, timeout=timeout
    )


def assert_problem(reply: Reply, status: int) -> dict[str, Any]:
    """The reply is an RFC 9457 problem document with this status; return it."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.content_type == "application/problem+json"
    problem: dict[str, Any] = reply.json
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert problem["status"] == status
    assert problem["detail"]
    return problem


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; rows if it returns any."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def poll(check: Callable[[], Any], deadline: float = 10.0, interval: float = 0.02) -> Any:
    """Await until `check()` (sync or async) is truthy and return it; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline}s")
        await asyncio.sleep(interval)


def start_server_process(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python server.py` as the image runs it, with exactly `env` (plus PATH) as its environment."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "server.py"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )


async def answers_health(base_url: str) -> bool:
    """Whether the server at `base_url` is up and its database answers."""
    try:
        return (await call(base_url, "GET", "/health", timeout=2)).status == 200
    except OSError:
        return False


@dataclass
class ServerProcess:
    """A server started as a separate process, the way the image starts it."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def serve_process(env: Mapping[str, str], log_path: Path, port: int | None = None) -> ServerProcess:
    """Start `python server.py` on a free loopback port and wait until it is healthy."""
    port = port or free_port()
    process = start_server_process({"HOST": "127.0.0.1", **env, "PORT": str(port)}, log_path)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        await poll(lambda: answers_health(server.base_url), deadline=60)
    except AssertionError:
        server.stop()
        raise AssertionError(f"the server did not become healthy:\n{server.log}") from None
    return server


def serve_blocking(database_url: str, directory: Path, **env: str) -> ServerProcess:
    """`serve_process` for plain (not async) tests: a server on `database_url` with `directory` as
    its DATA_DIR and no reachable upstream, plus `env`."""
    base = {"DATABASE_URL": database_url, "JSERVICE_URL": "http://127.0.0.1:9", "DATA_DIR": str(directory)}
    return asyncio.run(serve_process({**base, **env}, directory / "server.log"))


def standin_process(log_path: Path, pool_size: int = 1_000_000) -> tuple[subprocess.Popen[bytes], str]:
    """The jService stand-in as its own process; returns it and its URL once it listens."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jservice", "--port", str(port), "--pool-size", str(pool_size)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    async def listening() -> bool:
        try:
            return (await fetch(url, "GET", "/api/random?count=0", timeout=2)).status == 200
        except OSError:
            return False

    asyncio.run(poll(listening, deadline=30))
    return process, url


def scratch_files(root: Path) -> list[Path]:
    """Files in a scratch space (uploads and MP3s in progress), its instances' lock files aside."""
    if not root.exists():
        return []
    return [path for path in root.rglob("*") if path.is_file() and path.suffix != ".lock"]


def store_of(app: Application) -> MediaStore:
    """The app's media store (the media directory or the S3 bucket), to observe what it keeps."""
    store: MediaStore = app.settings["store"]
    return store


def stored_keys(app: Application) -> set[str]:
    """Every key in the app's media store, those stored a moment ago included (the cutoff lies an
    hour ahead)."""
    return set(store_of(app).keys_older_than(-3600))


def leftovers(app: Application) -> list[str]:
    """What requests left behind: keys in the media store and files in the app's scratch space."""
    scratch = scratch_files(app.settings["config"].scratch_root)
    return sorted(stored_keys(app)) + sorted(str(path) for path in scratch)
