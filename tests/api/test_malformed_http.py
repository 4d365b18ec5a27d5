"""Requests whose HTTP framing is broken get a problem document where the server can answer, and
the connection ends without a reset even when the client goes on sending."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from connections import MAX_HEAD_BYTES
from tests.support import ServerProcess, port_of, serve_blocking

AFTER = 5_000_000  # bytes the client sends after its malformed request, before it reads
PIECE = bytes(1024 * 1024)


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = serve_blocking(database_url, tmp_path_factory.mktemp("malformed"))
    yield process
    process.stop()


def exchange(base_url: str, request: bytes, then: int = AFTER) -> bytes:
    """Send `request` and `then` more bytes, then read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port_of(base_url)), timeout=30) as sock:
        sock.sendall(request)
        while then > 0:
            sent = sock.send(memoryview(PIECE)[: min(then, len(PIECE))])
            then -= sent
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def problem_of(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, headers and problem document of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert headers["Content-Type"] == "application/problem+json", answer[:300]
    assert int(headers["Content-Length"]) == len(body)
    problem: dict[str, Any] = json.loads(body)
    assert int(status_line.split()[1]) == problem["status"]
    return problem["status"], headers, problem


POST = b"POST /users HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "words"),
    [
        pytest.param(POST + b"Content-Length: -1\r\n\r\n", 400, "Content-Length", id="length -1"),
        pytest.param(POST + b"Content-Length: 12abc\r\n\r\n", 400, "Content-Length", id="length 12abc"),
        pytest.param(POST + b"Content-Length: " + b"1" + b"0" * 23 + b"\r\n\r\n", 413, "larger", id="10^23"),
        pytest.param(
            POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both",
            id="length+chunked",
        ),
        pytest.param(POST + b"Transfer-Encoding: gzip\r\n\r\n", 400, "chunked", id="coding gzip"),
        pytest.param(CHUNKED + b"zz\r\n", 400, "chunked", id="chunk zz"),
        pytest.param(CHUNKED + b"-5\r\n", 400, "chunked", id="chunk -5"),
        pytest.param(CHUNKED + b"3\r\nabcXY", 400, "chunked", id="chunk unterminated"),
        pytest.param(CHUNKED + b"200000\r\n", 400, "larger", id="chunk of 2 MiB"),
        pytest.param(b"GARBAGE\r\n\r\n", 400, "request line", id="request line"),
        pytest.param(b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", 400, "header", id="header line"),
        pytest.param(b"GET /health HTTP/1.1\r\n\r\n", 400, "Host", id="no Host"),
    ],
)
def test_malformed_framing_gets_a_problem_and_no_reset(server, request_bytes, status, words):
    answered, headers, problem = problem_of(exchange(server.base_url, request_bytes))
    assert answered == status
    assert words in problem["detail"]
    assert headers["Connection"] == "close"


def test_a_header_block_over_64_kib_gets_431_and_no_reset(server):
    # 1 MB of header field, sent in full before the client reads.
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000
    status, headers, problem = problem_of(exchange(server.base_url, request, then=0))
    assert status == 431
    assert str(MAX_HEAD_BYTES) in problem["detail"]
    assert headers["Connection"] == "close"


def test_a_header_block_just_under_the_limit_is_served(server):
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES - 100) + b"\r\n\r\n"
    answer = exchange(
        server.base_url, request + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
