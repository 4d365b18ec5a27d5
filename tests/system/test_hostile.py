"""Slow, idle, greedy and nosy clients, and a misbehaving upstream: the service keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.audio import make_wav, upload_form
from tests.support import (
    assert_problem,
    call,
    poll,
    port_of,
    post_form,
    post_streaming,
    scratch_files,
    serve_process,
    stall_body,
    upload_head,
)

SLOW_CLIENTS = 200


async def drip_headers(host: str, port: int, stop: asyncio.Event) -> bool:
    """Send a request's headers one byte a second; True once the server has closed the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    request = b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    try:
        for byte in request:
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), timeout=1.0) == b"":
                    return True
            except TimeoutError:
                pass
            except ConnectionError:
                return True
            if stop.is_set():
                return False
        return False
    finally:
        writer.close()


async def upload_succeeds_soon(base_url: str, user: dict[str, object], seconds: float = 10) -> bool:
    """Upload until one is stored (201), allowing only "capacity full" (503) meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reply = await post_form(base_url, upload_form(user, make_wav(0.2)))
        if reply.status == 201:
            return True
        assert_problem(reply, 503)
    return False


@pytest.mark.gen_test(timeout=120)
async def test_slow_and_stalled_clients_do_not_stop_others_and_are_dropped(db, standin, tmp_path):
    env = {
        "DATABASE_URL": db,
        "JSERVICE_URL": standin.url,
        "DATA_DIR": str(tmp_path),
        "HTTP_IDLE_TIMEOUT": "2",
        "HTTP_BODY_TIMEOUT": "2",
        "UPLOAD_TIMEOUT": "2",
        "CONVERT_WORKERS": "1",
        "CONVERT_QUEUE": "0",
    }
    server = await serve_process(env, tmp_path / "server.log")
    port = port_of(server.base_url)
    stop = asyncio.Event()
    try:
        drippers = [asyncio.ensure_future(drip_headers("127.0.0.1", port, stop)) for _ in range(SLOW_CLIENTS)]
        user = (await call(server.base_url, "POST", "/users", {"name": "busy"})).json
        assert (await call(server.base_url, "GET", "/health")).status == 200
        # A JSON body and an upload that stop half-way: both connections are dropped after the timeouts.
        json_head = b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        form = upload_form(user, make_wav(1.0))
        stalled = await asyncio.gather(
            stall_body(port, json_head, b'{"name": "'),
            stall_body(port, upload_head(form), form[0][: len(form[0]) // 2]),
        )
        assert list(stalled) == [b"", b""]
        # The stalled upload gives its conversion slot back once its ffmpeg is gone (at once, or a
        # moment later), and leaves no temporary file.
        assert await upload_succeeds_soon(server.base_url, user)
        assert not scratch_files(tmp_path / "media" / ".tmp")
        assert all(await asyncio.wait_for(asyncio.gather(*drippers), timeout=30))
    finally:
        stop.set()
        server.stop()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(jservice_timeout=4.0, jservice_budget_seconds=4.0)
async def test_a_hanging_upstream_does_not_slow_anything_else(base_url, db, standin):
    standin.behaviour.hang = True
    quiz = [
        asyncio.ensure_future(call(base_url, "POST", "/questions", {"questions_num": 3})) for _ in range(40)
    ]
    # They share upstream calls: all 40 are waiting once the calls cover their 3 questions each.
    await poll(lambda: sum(standin.behaviour.requested_counts) == 40 * 3)
    user = await call(base_url, "POST", "/users", {"name": "unaffected"})
    assert user.status == 201
    record = await post_form(base_url, upload_form(user.json, make_wav(0.5)))
    assert record.status == 201
    assert (await call(record.json["url"], "GET", "")).status == 200
    assert (await call(base_url, "GET", "/questions")).status == 200
    assert not any(request.done() for request in quiz)
    for reply in await asyncio.gather(*quiz):
        assert_problem(reply, 504)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(convert_workers=1, convert_queue=1)
async def test_uploads_beyond_capacity_get_503_at_once_and_the_rest_complete(base_url, db, app):
    user = (await call(base_url, "POST", "/users", {"name": "crowd"})).json
    release = asyncio.Event()
    held = []
    for _ in range(2):
        body, content_type = upload_form(user, make_wav(0.5))
        held.append(
            asyncio.ensure_future(post_streaming(f"{base_url}/records", content_type, _hold(body, release)))
        )
    await poll(lambda: app.settings["conversions"].reserved == 2)
    refused = await asyncio.gather(*(post_form(base_url, upload_form(user, make_wav(0.2))) for _ in range(3)))
    for reply in refused:
        assert_problem(reply, 503)
        assert reply.headers["Retry-After"] == "5"
    release.set()
    assert [reply.status for reply in await asyncio.gather(*held)] == [201, 201]


def _hold(body: bytes, release: asyncio.Event):
    async def produce(write):
        await write(body[:1000])
        await release.wait()
        await write(body[1000:])

    return produce


@pytest.mark.gen_test(timeout=120)
async def test_tokens_never_reach_the_logs(db, standin, tmp_path):
    env = {"DATABASE_URL": db, "JSERVICE_URL": standin.url, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "DEBUG"}
    server = await serve_process(env, tmp_path / "server.log")
    base = server.base_url
    try:
        user = (await call(base, "POST", "/users", {"name": "secretive"})).json
        token = user["token"]
        wrong = "11111111-2222-4333-8444-555555555555"
        body, content_type = upload_form(user, make_wav(0.2))
        assert (await post_form(base, (body, content_type))).status == 201
        bare, bare_type = upload_form({"id": user["id"], "token": ""}, make_wav(0.2))
        with_header = {"Content-Type": bare_type, "Authorization": f"Bearer {token}"}
        assert (await call(base, "POST", "/records", raw=bare, headers=with_header)).status == 201
        in_query = await call(
            base, "POST", f"/records?token={token}", raw=bare, headers={"Content-Type": bare_type}
        )
        assert in_query.status == 422
        wrong_body = upload_form({"id": user["id"], "token": wrong}, make_wav(0.2))
        assert (await post_form(base, wrong_body)).status == 403
        await call(base, "GET", f"/questions?token={token}")
    finally:
        server.stop()
    log = server.log
    assert "POST /records 201" in log and "POST /records 403" in log
    assert token not in log and wrong not in log
