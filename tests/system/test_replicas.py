"""Three instances (`python server.py` processes) on one machine behind a real nginx, round-robin,
sharing one PostgreSQL database and one media directory: they start together on an empty database,
serve each other's data, store no question twice, hand out links through nginx, and one of them
SIGKILLed under load and started again loses no stored upload and leaves no orphan behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.audio import decode_mp3, make_wav, upload_form
from tests.nginx import find_nginx, nginx_command, write_config
from tests.support import (
    ServerProcess,
    answers_health,
    call,
    fetch,
    free_port,
    poll,
    post_streaming,
    scratch_files,
    serve_process,
    sql,
    standin_process,
    start_server_process,
)
from tests.system.test_faults import half_then

INSTANCES = 3
# Orphans (an MP3 stored whose row was never written) are swept once this old: soon, here, yet
# well above the time between storing an MP3 and committing its row on a loaded machine.
ORPHAN_GRACE_SECONDS = 3
# Distinct questions the stand-in offers: few, so that concurrent requests draw the same ones.
QUESTION_POOL = 200


@dataclass
class Cluster:
    """nginx in front of the instances, and what they share."""

    nginx_url: str
    instances: list[ServerProcess]
    env: dict[str, str]
    db: str
    media: Path
    directory: Path

    def port(self, index: int) -> int:
        """The port of one instance."""
        port = urlsplit(self.instances[index].base_url).port
        assert port is not None
        return port


@contextlib.contextmanager
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty database of this module's own on the test PostgreSQL server, dropped afterwards."""
    name = f"quiz_replicas_{uuid.uuid4().hex[:12]}"
    server_url = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    sql(server_url, f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    finally:
        sql(server_url, f"DROP DATABASE {name} WITH (FORCE)")


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def all_healthy(instances: list[ServerProcess]) -> bool:
    """Whether every instance answers GET /health with 200; fails at once when one has exited."""
    for instance in instances:
        assert instance.process.poll() is None, f"an instance exited:\n{instance.log}"
    return all([await answers_health(instance.base_url) for instance in instances])


@pytest.fixture(scope="module")
def cluster(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The stand-in, three instances started at the same moment on an empty database, and nginx."""
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): the instances need it in front")
    directory = tmp_path_factory.mktemp("replicas")
    with fresh_database(database_url) as db:
        standin, standin_url = standin_process(directory / "standin.log", pool_size=QUESTION_POOL)
        try:
            yield from serve_behind_nginx(nginx, db, standin_url, directory)
        finally:
            standin.terminate()
            standin.wait()


def serve_behind_nginx(nginx: str, db: str, standin_url: str, directory: Path) -> Iterator[Cluster]:
    """Three instances started at once on `db`, then nginx in front of them; all stopped afterwards."""
    env = {
        "HOST": "127.0.0.1",
        "DATABASE_URL": db,
        "JSERVICE_URL": standin_url,
        "DATA_DIR": str(directory),
        "MEDIA_DIR": str(directory / "media"),
        "TRUSTED_PROXIES": "127.0.0.1",
        "ORPHAN_GRACE_SECONDS": str(ORPHAN_GRACE_SECONDS),
        "CONVERT_WORKERS": "2",
    }
    ports = [free_port() for _ in range(INSTANCES)]
    instances = []
    for index, port in enumerate(ports):
        log = directory / f"instance-{index}.log"
        process = start_server_process({**env, "PORT": str(port)}, log)
        instances.append(ServerProcess(process, f"http://127.0.0.1:{port}", log))
    nginx_process = None
    try:
        asyncio.run(poll(lambda: all_healthy(instances), deadline=90, interval=0.1))
        nginx_port = free_port()
        conf = write_config(directory, nginx_port, [f"127.0.0.1:{port}" for port in ports])
        nginx_process = subprocess.Popen(nginx_command(nginx, conf), stderr=subprocess.DEVNULL)
        asyncio.run(poll(lambda: nginx_process.poll() is not None or accepts(nginx_port), deadline=30))
        assert nginx_process.poll() is None, (directory / "error.log").read_text()
        yield Cluster(f"http://127.0.0.1:{nginx_port}", instances, env, db, directory / "media", directory)
    finally:
        if nginx_process is not None:
            nginx_process.terminate()
            nginx_process.wait(timeout=30)
        for instance in instances:
            instance.stop()


def served(instance: ServerProcess, line: str) -> int:
    """How many access-log lines of an instance contain `line` (such as "POST /users 201")."""
    return instance.log.count(line)


@pytest.mark.gen_test(timeout=60)
async def test_instances_started_together_on_an_empty_database_all_serve(cluster):
    for instance in cluster.instances:
        assert "ready:" in instance.log
        assert "Traceback" not in instance.log
        assert (await call(instance.base_url, "GET", "/health")).status == 200
    tables = sql(cluster.db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    assert tables == [("questions",), ("records",), ("users",)]


@pytest.mark.gen_test(timeout=60)
async def test_sign_ups_through_nginx_are_spread_and_seen_by_every_instance(cluster):
    before = [served(instance, "POST /users 201") for instance in cluster.instances]
    replies = await asyncio.gather(
        *(call(cluster.nginx_url, "POST", "/users", {"name": f"user {n}"}) for n in range(30))
    )
    assert [reply.status for reply in replies] == [201] * 30
    ids = {reply.json["id"] for reply in replies}
    assert len(ids) == 30
    # Round-robin: every instance signed some of them up.
    await poll(
        lambda: all(served(i, "POST /users 201") > b for i, b in zip(cluster.instances, before, strict=True))
    )
    for instance in cluster.instances:
        for user_id in sorted(ids)[:5]:
            assert (await call(instance.base_url, "GET", f"/users/{user_id}")).status == 200


@pytest.mark.gen_test(timeout=90)
async def test_concurrent_question_requests_store_no_question_twice(cluster):
    replies = await asyncio.gather(
        *(call(cluster.nginx_url, "POST", "/questions", {"questions_num": 10}, timeout=60) for _ in range(9))
    )
    assert [reply.status for reply in replies] == [200] * 9
    ((rows, distinct),) = sql(cluster.db, "SELECT count(*), count(DISTINCT jservice_id) FROM questions")
    assert rows == distinct
    # Each request stored 10 new ones, but instances drawing the same question store it once.
    assert rows >= 10
    await poll(lambda: all(served(instance, "POST /questions 200") for instance in cluster.instances))


@pytest.mark.gen_test(timeout=90)
async def test_an_upload_through_nginx_is_the_same_bytes_from_every_instance(cluster, tmp_path):
    user = (await call(cluster.nginx_url, "POST", "/users", {"name": "uploader"})).json
    form = upload_form(user, make_wav(1.0))
    # The client's own X-Forwarded-Host is replaced by nginx's, which the trusted instances follow.
    reply = await call(
        cluster.nginx_url,
        "POST",
        "/records",
        raw=form[0],
        headers={"Content-Type": form[1], "X-Forwarded-Host": "attacker.example"},
    )
    assert reply.status == 201, reply.body
    record = reply.json
    assert record["url"] == f"{cluster.nginx_url}/record?id={record['id']}&user={user['id']}"
    path = f"/record?id={record['id']}&user={user['id']}"
    downloads = [await call(record["url"], "GET", "")]
    downloads += [await call(instance.base_url, "GET", path) for instance in cluster.instances]
    assert [download.status for download in downloads] == [200] * (INSTANCES + 1)
    assert len({download.body for download in downloads}) == 1
    mp3 = tmp_path / "download.mp3"
    mp3.write_bytes(downloads[0].body)
    assert abs(decode_mp3(mp3).duration_seconds - 1.0) < 0.1


@dataclass
class Outcome:
    """One request of the load: what it was, when it ran, and its answer (status 0: the connection
    to nginx broke)."""

    kind: str
    started: float
    ended: float
    status: int
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Load:
    """Uploads and sign-ups sent through nginx by concurrent clients until told to stop."""

    nginx_url: str
    users: list[dict[str, Any]]
    wav: bytes
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def uploader(self, user: dict[str, Any]) -> None:
        while not self.stop.is_set():
            await self.send("upload", "POST", "/records", form=upload_form(user, self.wav))

    async def signer(self) -> None:
        while not self.stop.is_set():
            await self.send("sign-up", "POST", "/users", body={"name": "under load"})

    async def send(self, kind: str, method: str, path: str, body: Any = None, form: Any = None) -> None:
        started = time.monotonic()
        raw, headers = (form[0], {"Content-Type": form[1]}) if form else (None, None)
        try:
            reply = await fetch(self.nginx_url, method, path, body, raw, headers, timeout=60)
            status, answer = reply.status, reply.body
        except OSError as broken:  # nginx itself stays up: not expected
            status, answer = 0, repr(broken).encode()
        self.outcomes.append(Outcome(kind, started, time.monotonic(), status, answer))

    def stored(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.kind == "upload" and outcome.status == 201]


def instance_scratch(cluster: Cluster, instance: ServerProcess) -> Path:
    """The scratch folder of a running instance (`<host>-<pid>-<random>` under MEDIA_DIR/.tmp)."""
    (folder,) = [
        path
        for path in (cluster.media / ".tmp").glob(f"{socket.gethostname()}-{instance.process.pid}-*")
        if path.is_dir()
    ]
    return folder


def stored_mp3s(media: Path) -> list[str]:
    """The keys of the MP3s in the media directory."""
    return sorted(path.relative_to(media).as_posix() for path in media.glob("??/*.mp3"))


@pytest.mark.gen_test(timeout=150)
async def test_sigkill_of_one_instance_under_load_loses_no_stored_upload(cluster, tmp_path):
    victim, survivor = cluster.instances[0], cluster.instances[1]
    users = [(await call(cluster.nginx_url, "POST", "/users", {"name": f"u{n}"})).json for n in range(5)]
    wav = make_wav(0.5, 22050, 1)

    # An upload half sent to a surviving instance, across the kill, the restart and its sweep.
    held_form = upload_form(users[0], make_wav(1.0))
    release = asyncio.Event()
    held = asyncio.ensure_future(
        post_streaming(f"{survivor.base_url}/records", held_form[1], half_then(held_form[0], release))
    )
    await poll(lambda: scratch_files(instance_scratch(cluster, survivor)), deadline=30)

    load = Load(cluster.nginx_url, users, wav)
    clients = [asyncio.ensure_future(load.uploader(user)) for user in users[1:]]
    clients += [asyncio.ensure_future(load.signer()) for _ in range(2)]
    try:
        # Kill it while it works on an upload of its own (a file in its scratch folder).
        victim_scratch = instance_scratch(cluster, victim)
        await poll(
            lambda: len(load.stored()) >= 6 and scratch_files(victim_scratch), deadline=60, interval=0.005
        )
        # What a kill between storing an MP3 and committing its row leaves (the kill may or may not
        # hit that moment): a stored MP3 without a row, which the sweep must remove.
        stored = cluster.media / stored_mp3s(cluster.media)[0]
        orphan_id = uuid.uuid4()
        planted = cluster.media / f"{orphan_id.hex[:2]}" / f"{orphan_id}.mp3"
        planted.parent.mkdir(exist_ok=True)
        planted.write_bytes(stored.read_bytes())
        kill_sent = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed = time.monotonic()
        restarted = await serve_process(cluster.env, cluster.directory / "restarted.log", cluster.port(0))
        cluster.instances[0] = restarted
        stored_before = len(load.stored())
        await poll(lambda: len(load.stored()) >= stored_before + 6, deadline=60)
    finally:
        load.stop.set()
        await asyncio.gather(*clients)
    release.set()
    held_reply = await held
    assert held_reply.status == 201, held_reply.body

    # Every answer is a success, except nginx's 502 for requests in flight on the killed instance.
    failed = [o for o in load.outcomes if o.status not in (200, 201)]
    in_flight = [o for o in load.outcomes if o.started < killed and o.ended > kill_sent]
    assert all(o.status == 502 for o in failed), [(o.kind, o.status, o.body) for o in failed]
    assert all(o in in_flight for o in failed), [(o.kind, o.started - killed) for o in failed]
    assert len(failed) <= len(in_flight)

    # Every upload that got a 201 has its row, and the same MP3 bytes from two instances.
    records = [o.json for o in load.stored()] + [held_reply.json]
    for record in records:
        path = f"/record?id={record['id']}&user={record['user']}"
        through_nginx = await call(record["url"], "GET", "")
        direct = await call(cluster.instances[2].base_url, "GET", path)
        assert (through_nginx.status, direct.status) == (200, 200)
        assert through_nginx.body == direct.body
        assert sql(cluster.db, "SELECT count(*) FROM records WHERE id = %s", (record["id"],)) == [(1,)]
    mp3 = tmp_path / "last.mp3"
    mp3.write_bytes(through_nginx.body)
    assert abs(decode_mp3(mp3).duration_seconds - 1.0) < 0.1  # the held upload's
    for record in records[:-1:7]:
        mp3.write_bytes((await call(record["url"], "GET", "")).body)
        assert abs(decode_mp3(mp3).duration_seconds - 0.5) < 0.1

    # Once the orphan sweep has run, every stored MP3 has a row; no upload is left in progress.
    def consistent() -> bool:
        rows = sorted(path for (path,) in sql(cluster.db, "SELECT path FROM records"))
        return stored_mp3s(cluster.media) == rows and not scratch_files(cluster.media / ".tmp")

    await poll(consistent, deadline=30, interval=0.2)
    assert not planted.exists()
    assert not victim_scratch.exists()  # the restart's sweep removed the killed instance's folder
    for instance in cluster.instances:
        assert " 500 " not in instance.log
    print(
        f"\nload: {len(load.outcomes)} requests, {len(load.stored())} uploads stored,"
        f" {len(in_flight)} in flight at the kill, {len(failed)} answered 502"
    )
