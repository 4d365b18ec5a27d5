"""Faults, each driven against a real server process: the database going away, SIGKILL at every
stage of an upload, SIGTERM with work in flight."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
from pgserver import postgres_server

from tests.audio import make_wav, silent_wav, upload_form
from tests.support import (
    CONNECTION_LOST,
    ServerProcess,
    assert_problem,
    call,
    poll,
    post_form,
    post_streaming,
    scratch_files,
    serve_process,
    sql,
)

UUID = "00000000-0000-4000-8000-000000000000"


class Cluster:
    """A PostgreSQL of this test's own, so that it can be stopped and started again."""

    def __init__(self, directory: Path) -> None:
        self.server = postgres_server.get_server(directory, cleanup_mode="delete")
        self.url: str = self.server.get_uri()

    def stop(self) -> None:
        pg_ctl = postgres_server.pg_ctl  # type: ignore[attr-defined]  # pgserver makes it at import time
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.mark.gen_test(timeout=180)
async def test_database_restart_gives_503s_then_recovers_without_a_restart(standin, tmp_path):
    cluster = Cluster(tmp_path / "pg")
    env = {"DATABASE_URL": cluster.url, "JSERVICE_URL": standin.url, "DATA_DIR": str(tmp_path)}
    server = await serve_process(env, tmp_path / "server.log")
    base = server.base_url
    try:
        user = (await call(base, "POST", "/users", {"name": "before"})).json
        form = upload_form(user, make_wav(0.2))
        cluster.stop()
        for method, path, payload in [
            ("GET", "/health", None),
            ("GET", "/questions", None),
            ("POST", "/questions", {"questions_num": 1}),
            ("POST", "/users", {"name": "during"}),
            ("GET", f"/users/{user['id']}", None),
            ("GET", f"/record?id={UUID}&user={user['id']}", None),
        ]:
            reply = await call(base, method, path, payload, timeout=30)
            assert_problem(reply, 503)
            assert reply.headers["Retry-After"]
        upload = await post_form(base, form, timeout=30)
        assert_problem(upload, 503)
        cluster.start()
        await poll(lambda: _status_is(base, "/health", 200), deadline=30)
        assert (await call(base, "POST", "/users", {"name": "after"})).status == 201
        assert (await post_form(base, form)).status == 201
    finally:
        server.stop()
        cluster.stop()
    assert " 500 " not in server.log


async def _status_is(base: str, path: str, status: int) -> bool:
    return (await call(base, "GET", path, timeout=5)).status == status


async def server_with_user(env: dict[str, str], tmp_path: Path) -> tuple[ServerProcess, dict[str, Any]]:
    """A server process and a user of it."""
    server = await serve_process(env, tmp_path / "server.log")
    user: dict[str, Any] = (await call(server.base_url, "POST", "/users", {"name": "u"})).json
    return server, user


def half_then(body: bytes, release: asyncio.Event):
    """A body producer that sends half of `body`, then the rest once `release` is set."""

    async def produce(write):
        await write(body[: len(body) // 2])
        await release.wait()
        await write(body[len(body) // 2 :])

    return produce


def server_children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def media_state(media: Path) -> tuple[list[Path], list[Path]]:
    """(temporary files, stored MP3s) under a media directory."""
    temps = scratch_files(media / ".tmp")
    stored = [path for path in media.glob("*/*.mp3") if path.parent.name != ".tmp"]
    return temps, stored


async def check_consistent_after_restart(db: str, env: dict[str, str], tmp_path: Path, media: Path) -> None:
    """Start the server again and check what a crash may have left: no temporary or partial file,
    no ffmpeg still running, every row's file present with its size, and once the orphan sweep
    has run (ORPHAN_GRACE_SECONDS), no file without a row."""
    server = await serve_process(env, tmp_path / "restart.log")
    try:
        assert media_state(media)[0] == []
        assert not [
            p for p in psutil.process_iter(["cmdline"]) if str(media) in " ".join(p.info["cmdline"] or [])
        ]
        rows = sql(db, "SELECT path, size FROM records")
        assert sorted((media / path).stat().st_size for path, _ in rows) == sorted(size for _, size in rows)
        with_rows = sorted(str(media / path) for path, _ in rows)
        await poll(lambda: sorted(str(path) for path in media_state(media)[1]) == with_rows, deadline=30)
        user = (await call(server.base_url, "POST", "/users", {"name": "after"})).json
        form = upload_form(user, make_wav(0.2))
        reply = await post_form(server.base_url, form)
        assert reply.status == 201
    finally:
        server.stop()


async def kill_then_restart(server, upload, db, env, tmp_path, media) -> None:
    """SIGKILL the server under an upload, then check what a restart finds; only the upload made
    after the restart has a row."""
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    with pytest.raises(CONNECTION_LOST):
        await upload
    await check_consistent_after_restart(db, env, tmp_path, media)
    assert sql(db, "SELECT count(*) FROM records") == [(1,)]


@pytest.fixture
def upload_env(db, standin, tmp_path):
    media = tmp_path / "media"
    return media, {
        "DATABASE_URL": db,
        "JSERVICE_URL": standin.url,
        "DATA_DIR": str(tmp_path),
        "MEDIA_DIR": str(media),
        "CONVERT_WORKERS": "1",
        # Orphans (an MP3 stored, its row never written) are swept once this old: soon, here.
        "ORPHAN_GRACE_SECONDS": "1",
    }


@pytest.mark.gen_test(timeout=180)
async def test_sigkill_while_an_upload_streams_in(db, upload_env, tmp_path):
    media, env = upload_env
    server, user = await server_with_user(env, tmp_path)
    form = upload_form(user, make_wav(3.0))
    release = asyncio.Event()

    upload = asyncio.ensure_future(
        post_streaming(f"{server.base_url}/records", form[1], half_then(form[0], release))
    )
    await poll(lambda: any(path.stat().st_size > 0 for path in media_state(media)[0]))
    release.set()
    await kill_then_restart(server, upload, db, env, tmp_path, media)


@pytest.mark.gen_test(timeout=180)
async def test_sigkill_while_ffmpeg_converts(db, upload_env, tmp_path):
    media, env = upload_env
    server, user = await server_with_user(env, tmp_path)
    form = upload_form(user, silent_wav(240.0))
    upload = asyncio.ensure_future(post_form(server.base_url, form, timeout=120))
    await poll(lambda: [p for p in server_children(server.process.pid) if "ffmpeg" in p.name()], deadline=60)
    await kill_then_restart(server, upload, db, env, tmp_path, media)


@pytest.mark.gen_test(timeout=180)
async def test_sigkill_after_the_rename_before_the_row_commits(db, upload_env, tmp_path):
    media, env = upload_env
    server, user = await server_with_user(env, tmp_path)
    form = upload_form(user, make_wav(1.0))
    # Holding a lock on the table stops the server's INSERT after the MP3 is already in place.
    blocker = psycopg2.connect(db)
    try:
        blocker.cursor().execute("LOCK TABLE records IN ACCESS EXCLUSIVE MODE")
        upload = asyncio.ensure_future(post_form(server.base_url, form))
        await poll(lambda: media_state(media)[1])
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    finally:
        blocker.rollback()
        blocker.close()
    with pytest.raises(CONNECTION_LOST):
        await upload
    assert len(media_state(media)[1]) == 1  # the orphan: a file no row points at
    await check_consistent_after_restart(db, env, tmp_path, media)
    assert sql(db, "SELECT count(*) FROM records") == [(1,)]


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_lets_uploads_and_quiz_requests_finish(db, upload_env, standin, tmp_path):
    media, env = upload_env
    standin.behaviour.latency = 1.0
    server, user = await server_with_user(env, tmp_path)
    form = upload_form(user, make_wav(2.0))
    release = asyncio.Event()

    upload = asyncio.ensure_future(
        post_streaming(f"{server.base_url}/records", form[1], half_then(form[0], release))
    )
    quiz = asyncio.ensure_future(call(server.base_url, "POST", "/questions", {"questions_num": 2}))
    await poll(lambda: standin.behaviour.requested_counts and media_state(media)[0])
    server.process.send_signal(signal.SIGTERM)
    release.set()
    assert (await quiz).status == 200
    assert (await upload).status == 201
    await poll(lambda: server.process.poll() is not None, deadline=30)
    assert server.process.returncode == 0
    temps, stored = media_state(media)
    assert temps == [] and len(stored) == 1
    assert sql(db, "SELECT count(*) FROM records") == [(1,)]


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_past_the_grace_period_cuts_uploads_off_cleanly(db, upload_env, tmp_path):
    media, env = upload_env
    env = {**env, "SHUTDOWN_GRACE_SECONDS": "0.3", "CONVERT_QUEUE": "4"}
    server, user = await server_with_user(env, tmp_path)
    release = asyncio.Event()
    form = upload_form(user, make_wav(2.0))
    converting = asyncio.ensure_future(
        post_form(server.base_url, upload_form(user, silent_wav(480.0, 44100, 2)))
    )
    await poll(lambda: [p for p in server_children(server.process.pid) if "ffmpeg" in p.name()], deadline=60)
    cut_off = [
        converting,
        asyncio.ensure_future(post_form(server.base_url, upload_form(user, make_wav(1.0)))),  # queued
        asyncio.ensure_future(
            post_streaming(f"{server.base_url}/records", form[1], half_then(form[0], release))
        ),
    ]
    await poll(lambda: len(media_state(media)[0]) >= 4)  # three uploads in, one MP3 being made
    server.process.send_signal(signal.SIGTERM)
    await poll(lambda: server.process.poll() is not None, deadline=60)
    release.set()
    await asyncio.gather(*cut_off, return_exceptions=True)
    assert server.process.returncode == 0
    assert " 500 " not in server.log and "Traceback" not in server.log
    assert media_state(media) == ([], [])
    assert sql(db, "SELECT count(*) FROM records") == [(0,)]
