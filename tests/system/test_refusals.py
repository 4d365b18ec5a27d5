"""Answers sent before the body is read reach clients that write the whole body before reading:
the service closes those connections the lingering way (connections.py), never with a reset."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import psutil
import pytest

from connections import LINGER_SILENCE_SECONDS, Lingering
from tests.audio import make_wav, upload_form
from tests.support import ServerProcess, call, poll, port_of, serve_blocking

MB = 1_000_000
MIB = 1024 * 1024
PIECE = bytes(MIB)
# Each refusal at both sizes, a few times: before the lingering close, urllib read none of them.
SIZES = [pytest.param(20 * MB, 3, id="20MB"), pytest.param(500 * MB, 2, id="500MB")]
UNKNOWN_USER = 987654321


def post_whole_body(
    base_url: str, path: str, content_type: str, size: int, prefix: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """POST a `size`-byte body (`prefix`, then zeros, made as it is sent) with urllib, which writes
    all of it before reading the answer; the status, headers and body of the answer."""

    def body() -> Iterator[bytes]:
        yield prefix
        left = size - len(prefix)
        while left > 0:
            piece = PIECE if left >= len(PIECE) else PIECE[:left]
            left -= len(piece)
            yield piece

    headers = {"Content-Type": content_type, "Content-Length": str(size)}
    request = urllib.request.Request(base_url + path, data=body(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def fields_first(user_id: int, token: str) -> tuple[bytes, str]:
    """The start of an upload body with `user` and `token` before the file part, and its type."""
    boundary = "b0undary"
    prefix = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (("user", user_id), ("token", token))
    )
    prefix += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
        + make_wav(0.1)
    )
    return prefix, f"multipart/form-data; boundary={boundary}"


def assert_refused(answer: tuple[int, dict[str, str], bytes], status: int) -> None:
    """The client read a whole problem answer with this status, and was told the connection closes."""
    code, headers, body = answer
    assert code == status, (code, body)
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Connection"] == "close"
    assert json.loads(body)["status"] == status


@pytest.fixture(scope="module")
def small_cap(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose uploads may be 1 MiB at most."""
    process = serve_blocking(database_url, tmp_path_factory.mktemp("small"), MAX_UPLOAD_BYTES=str(MIB))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def large_cap(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server taking 600 MB uploads, with room for one upload at a time."""
    process = serve_blocking(
        database_url,
        tmp_path_factory.mktemp("large"),
        MAX_UPLOAD_BYTES=str(600 * MB),
        CONVERT_WORKERS="1",
        CONVERT_QUEUE="0",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def user(large_cap: ServerProcess) -> dict[str, object]:
    reply = asyncio.run(call(large_cap.base_url, "POST", "/users", {"name": "refused"}))
    created: dict[str, object] = reply.json
    return created


@pytest.mark.parametrize(("size", "times"), SIZES)
def test_an_upload_over_max_upload_bytes_gets_its_413(small_cap, size, times):
    for _ in range(times):
        answer = post_whole_body(small_cap.base_url, "/records", "multipart/form-data; boundary=x", size)
        assert_refused(answer, 413)


@pytest.mark.parametrize(("size", "times"), [pytest.param(4 * MB, 3, id="4MB"), *SIZES])
def test_a_json_body_over_its_cap_gets_its_413(small_cap, size, times):
    for path in ("/users", "/questions"):
        for _ in range(times):
            assert_refused(post_whole_body(small_cap.base_url, path, "application/json", size), 413)


@pytest.mark.parametrize(("size", "times"), SIZES)
def test_a_body_that_is_not_multipart_gets_its_400(large_cap, size, times):
    for _ in range(times):
        answer = post_whole_body(large_cap.base_url, "/records", "application/octet-stream", size)
        assert_refused(answer, 400)


@pytest.mark.parametrize(("size", "times"), SIZES)
def test_a_wrong_token_before_the_file_gets_its_403(large_cap, user, size, times):
    prefix, content_type = fields_first(user["id"], "11111111-2222-4333-8444-555555555555")
    for _ in range(times):
        assert_refused(post_whole_body(large_cap.base_url, "/records", content_type, size, prefix), 403)


@pytest.mark.parametrize(("size", "times"), SIZES)
def test_an_unknown_user_before_the_file_gets_its_404(large_cap, user, size, times):
    prefix, content_type = fields_first(UNKNOWN_USER, str(user["token"]))
    for _ in range(times):
        assert_refused(post_whole_body(large_cap.base_url, "/records", content_type, size, prefix), 404)


def capacity_is_full(base_url: str) -> bool:
    """Whether a small upload is refused for capacity (else it is refused for its unknown user)."""
    body, content_type = upload_form({"id": UNKNOWN_USER, "token": "t"}, make_wav(0.1))
    status = post_whole_body(base_url, "/records", content_type, len(body), body)[0]
    assert status in (404, 503)
    return status == 503


def hold_the_slot(base_url: str, deadline: float = 30.0) -> socket.socket:
    """A connection whose upload stalls after its first bytes, holding the only conversion slot.
    The previous test's last probe may free its slot a moment after its answer, so a holder that
    arrives in between is refused (503) and tries again."""
    head = (
        "POST /records HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {10 * MB}\r\n\r\n--x\r\n"
    )
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        holder = socket.create_connection(("127.0.0.1", port_of(base_url)))
        holder.sendall(head.encode())
        holder.settimeout(0.5)
        try:
            refused = holder.recv(64)  # an answer before the body is in can only be a refusal
        except TimeoutError:
            refused = b""
        if not refused and capacity_is_full(base_url):
            return holder
        holder.close()
    raise AssertionError(f"no upload could hold the slot within {deadline}s")


@pytest.mark.parametrize(("size", "times"), SIZES)
def test_a_full_capacity_gets_its_503(large_cap, size, times):
    holder = hold_the_slot(large_cap.base_url)
    try:
        for _ in range(times):
            answer = post_whole_body(large_cap.base_url, "/records", "multipart/form-data; boundary=x", size)
            assert_refused(answer, 503)
    finally:
        holder.close()
    # The slot is free once the server has seen the holder leave, which may wait behind the
    # lingering reads of the refused bodies on a busy machine.
    asyncio.run(poll(lambda: not capacity_is_full(large_cap.base_url), deadline=60))


def test_curl_without_100_continue_reads_the_413_of_a_500_mb_upload(small_cap):
    # curl's default waits for 100 Continue and sees the answer anyway; told not to, it writes the
    # body as it reads it (here from a pipe) and exited 55, "Connection reset by peer", 5 times in 6
    # before the lingering close.
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-T", "-"]
    command += ["-H", "Expect:", "-H", "Transfer-Encoding:", "-H", f"Content-Length: {500 * MB}"]
    command += ["-H", "Content-Type: multipart/form-data; boundary=x", f"{small_cap.base_url}/records"]
    for _ in range(5):
        zeros = subprocess.Popen(["head", "-c", str(500 * MB), "/dev/zero"], stdout=subprocess.PIPE)
        assert zeros.stdout is not None
        try:
            result = subprocess.run(command, stdin=zeros.stdout, capture_output=True, text=True, timeout=120)
        finally:
            zeros.stdout.close()
            zeros.wait()
        assert (result.returncode, result.stdout) == (0, "413"), result.stderr


def server_side_of(server: ServerProcess, client: socket.socket) -> list[object]:
    """The server's connections to this client socket."""
    local = client.getsockname()
    return [
        connection
        for connection in psutil.Process(server.process.pid).net_connections(kind="tcp")
        if connection.raddr and tuple(connection.raddr) == local
    ]


def test_a_refused_client_that_goes_quiet_is_closed_after_the_silence(small_cap):
    client = socket.create_connection(("127.0.0.1", port_of(small_cap.base_url)))
    try:
        head = f"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: {10 * MB}\r\n\r\n".encode()
        client.sendall(head + bytes(MB))
        answer = b""
        while chunk := client.recv(65536):  # the answer, then the end of the server's writing
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer
        # The client neither sends nor closes: the server reads on, then gives up.
        assert server_side_of(small_cap, client)
        asyncio.run(poll(lambda: not server_side_of(small_cap, client), deadline=LINGER_SILENCE_SECONDS + 10))
    finally:
        client.close()


async def linger_one(lingering: Lingering) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A loopback connection whose server side `lingering` has taken; the client's streams."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        sock, _ = await asyncio.get_running_loop().sock_accept(listener)
    sock.setblocking(False)
    lingering.take(sock)
    assert await reader.read() == b""  # the server's write side is shut at once
    return reader, writer


@pytest.mark.gen_test(timeout=30)
async def test_lingering_ends_at_the_clients_end_of_file():
    lingering = Lingering()
    _, writer = await linger_one(lingering)
    writer.write(bytes(100_000))
    writer.close()
    await poll(lambda: not lingering.sockets)


@pytest.mark.gen_test(timeout=30)
async def test_lingering_reads_at_most_max_bytes():
    lingering = Lingering(max_bytes=1024 * 1024)
    _, writer = await linger_one(lingering)

    async def flood() -> None:
        while True:
            writer.write(bytes(65536))
            await writer.drain()

    sender = asyncio.ensure_future(flood())
    await poll(lambda: not lingering.sockets)
    # The rest is refused: the client's writes fail once the server has closed.
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(sender, timeout=10)
    writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_lingering_ends_after_silence_and_after_its_total_time():
    quiet = Lingering(silence=0.2, total=30)
    _, quiet_writer = await linger_one(quiet)
    quiet_writer.write(b"x")
    await poll(lambda: not quiet.sockets)
    # A client trickling bytes faster than the silence still ends at the total time.
    trickled = Lingering(silence=0.5, total=1.0)
    _, writer = await linger_one(trickled)
    sending = True

    async def trickle() -> None:
        while sending:
            writer.write(b"x")
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(trickle())
    await poll(lambda: not trickled.sockets, deadline=10)
    assert not task.done()  # it was still sending when it was cut off
    sending = False
    await asyncio.gather(task, return_exceptions=True)
    quiet_writer.close()
    writer.close()
