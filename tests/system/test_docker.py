"""docker-compose.yml run for real on a Docker engine: `make test-docker` (CI runs it after `make test`).

The stack is built and started as its own compose project, on free host ports, with the repository's
compose file unchanged (only variables it documents are set), and everything it created is removed at
the end, on failure too. Without a reachable engine every test here is skipped with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.audio import decode_mp3, make_wav, upload_form
from tests.support import CONNECTION_LOST, ROOT, call, free_port, post_form, post_streaming, sql

pytestmark = pytest.mark.docker

SERVICES = ("db", "jservice", "app")
NAMED_VOLUMES = ("pgdata", "media")
BUILD_TIMEOUT = 1800  # a first build compiles ffmpeg: a few minutes on two cores
HEALTHY_TIMEOUT = 120
GRACE_SECONDS = 3  # SHUTDOWN_GRACE_SECONDS for the test's stack: a stopped upload is cut off soon
# What the engine's client needs from this environment; the rest is left out, so that a developer's
# POSTGRES_PASSWORD, MEDIA_DIR_HOST or .env cannot change the stack under test.
PASSED_ENVIRONMENT = ("PATH", "HOME", "TMPDIR", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT")


def engine_problem() -> str | None:
    """Why this machine cannot run the stack (no docker client, engine or Compose v2), or None."""
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers `docker info`: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if compose.returncode != 0:
        return "no Compose v2 (`docker compose` plugin)"
    return None


def run(command: list[str], timeout: float = 120, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; fail with its output when it fails."""
    capture = "stdout" not in options
    result = subprocess.run(command, capture_output=capture, text=True, timeout=timeout, **options)
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{output}")
    return result


@dataclass
class Stack:
    """One compose project of docker-compose.yml on this engine."""

    project: str
    image: str
    app_port: int
    db_port: int
    env_file: Path
    timings: dict[str, float] = field(default_factory=dict)
    image_bytes: int = 0
    # The compose files, in order (an override after the base file), and variables for them.
    files: tuple[str, ...] = ("docker-compose.yml",)
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://quiz:quiz@127.0.0.1:{self.db_port}/quiz"

    def environment(self, **extra: str) -> dict[str, str]:
        """The variables `docker compose` sees: a few of this process's and the stack's own."""
        passed = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
        return {
            **passed,
            "APP_IMAGE": self.image,
            "APP_PORT": str(self.app_port),
            "POSTGRES_PORT": str(self.db_port),
            "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
            **self.variables,
            **extra,
        }

    def compose(
        self, *args: str, timeout: float = 180, env: dict[str, str] | None = None, **options: Any
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose` on this project: the repository's compose files, no .env file."""
        files = [option for name in self.files for option in ("-f", str(ROOT / name))]
        files += ["--env-file", str(self.env_file)]
        return run(
            ["docker", "compose", *files, "-p", self.project, *args],
            timeout=timeout,
            env=self.environment(**(env or {})),
            **options,
        )

    def line(self, command: str, **options: Any) -> subprocess.CompletedProcess[str]:
        """`docker compose <command>` written as on a command line (as docs/deployment.md has it)."""
        return self.compose(*shlex.split(command), **options)

    def timed(self, name: str, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        """`compose(*args)`, its wall time kept under `name` for the summary line."""
        started = time.monotonic()
        result = self.compose(*args, **options)
        self.timings[name] = time.monotonic() - started
        return result

    def containers(self) -> dict[str, dict[str, Any]]:
        """`docker compose ps --all` by service: state, health, exit code, ports."""
        output = self.compose("ps", "--all", "--format", "json").stdout.strip()
        # One object a line; Compose before 2.21 printed one array.
        rows = json.loads(output) if output.startswith("[") else [json.loads(x) for x in output.splitlines()]
        return {row["Service"]: row for row in rows}

    def inspect(self, service: str) -> dict[str, Any]:
        """`docker inspect` of the service's container."""
        name = self.containers()[service]["Name"]
        document: dict[str, Any] = json.loads(run(["docker", "inspect", name]).stdout)[0]
        return document

    def wait_healthy(self, services: tuple[str, ...] = SERVICES) -> None:
        """Return once every service's container is healthy; fail with their logs after a deadline."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while True:
            states = self.containers()
            if all(states.get(name, {}).get("Health") == "healthy" for name in services):
                return
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--no-color", "--tail", "30").stdout
                raise AssertionError(f"not healthy within {HEALTHY_TIMEOUT}s: {states}\n{logs}")
            time.sleep(0.5)

    def media_files(self) -> set[str]:
        """Every file in the media volume, relative to it (the app may be stopped)."""
        output = run(
            [
                "docker", "run", "--rm", "--network", "none", "-v", f"{self.project}_media:/m:ro",
                "--entrypoint", "find", self.image, "/m", "-type", "f",
            ]
        ).stdout  # fmt: skip
        return {line.removeprefix("/m/") for line in output.splitlines()}

    def labelled(self, kind: str, *filters: str) -> list[str]:
        """Ids of the containers, volumes, networks or images carrying this project's label."""
        command = ["docker", kind, "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"]
        if kind == "container":
            command.append("--all")
        for extra in filters:
            command += ["--filter", extra]
        return run(command).stdout.split()

    def remove(self) -> None:
        """Remove what the project created: containers, networks, volumes and images."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=300)
        images = self.labelled("image")
        if images:
            run(["docker", "image", "rm", "--force", *images])


def new_stack(tmp_path_factory: pytest.TempPathFactory, prefix: str, **options: Any) -> Stack:
    """A Stack with a project and image name of its own (`prefix` and a random token), free host
    ports and an empty env file; skips the test where no engine answers."""
    problem = engine_problem()
    if problem:
        pytest.skip(f"needs a Docker engine with Compose v2: {problem}")
    token = uuid.uuid4().hex[:10]
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    image = f"quiz-audio:test-{token}"
    return Stack(f"{prefix}{token}", image, free_port(), free_port(), env_file, **options)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Stack]:
    """The stack built and started, all healthy; everything it made is removed afterwards."""
    stack = new_stack(tmp_path_factory, "quiztest")
    try:
        stack.timed("build", "build", timeout=BUILD_TIMEOUT)
        stack.image_bytes = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", stack.image]).stdout)
        stack.timed("up", "up", "--detach", "--wait", "--wait-timeout", str(HEALTHY_TIMEOUT))
        yield stack
    finally:
        try:
            stack.remove()
        finally:
            report(pytestconfig, stack)
    leftovers = {kind: stack.labelled(kind) for kind in ("container", "volume", "network", "image")}
    assert not any(leftovers.values()), f"left behind: {leftovers}"


def report(config: pytest.Config, stack: Stack, label: str = "docker stack") -> None:
    """One line of figures in the test run's output (measured, never asserted)."""
    figures = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stack.timings.items())
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if terminal is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # the last test's teardown: its output is captured
            terminal.write_line(f"\n{label}: image {stack.image_bytes / 1e6:.0f} MB; {figures}")


# --- the API through the published port ------------------------------------------------------


@dataclass
class Data:
    """What one round of calls stored: a user, an MP3 and its link, the questions so far."""

    user: dict[str, Any]
    record_id: str
    record_path: str
    mp3: bytes
    questions: int


async def store_data(stack: Stack, tmp_path: Path, seconds: float = 1.5) -> Data:
    """Sign up, upload a WAV, download the MP3 (it must decode to the same length), store questions."""
    base = stack.base_url
    user = (await call(base, "POST", "/users", {"name": "docker"})).json
    record = await post_form(base, upload_form(user, make_wav(seconds)))
    assert record.status == 201, record.body
    path = record.json["url"].removeprefix(base)
    download = await call(base, "GET", path)
    assert download.status == 200 and download.content_type == "audio/mpeg"
    (tmp_path / "download.mp3").write_bytes(download.body)
    assert abs(decode_mp3(tmp_path / "download.mp3").duration_seconds - seconds) < 0.1
    assert (await call(base, "POST", "/questions", {"questions_num": 2})).status == 200
    questions = (await call(base, "GET", "/questions")).json["total"]
    return Data(user, record.json["id"], path, download.body, questions)


async def assert_data_kept(stack: Stack, data: Data) -> None:
    """The user, the MP3 and the questions are all still there."""
    base = stack.base_url
    assert (await call(base, "GET", f"/users/{data.user['id']}")).status == 200
    download = await call(base, "GET", data.record_path)
    assert download.status == 200 and download.body == data.mp3
    assert (await call(base, "GET", "/questions")).json["total"] >= data.questions


async def wait_for(check: Any, deadline: float) -> Any:
    """Await `check()` until it is truthy; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not (result := await check()):
        assert time.monotonic() < end, f"not within {deadline}s"
        await asyncio.sleep(0.25)
    return result


async def health_is(stack: Stack, status: int) -> bool:
    """Whether GET /health answers `status` now."""
    try:
        return (await call(stack.base_url, "GET", "/health", timeout=3)).status == status
    except CONNECTION_LOST:
        return False


# --- the tests --------------------------------------------------------------------------------


def test_stack_is_what_the_files_say(stack: Stack):
    states = stack.containers()
    assert set(states) == set(SERVICES) and all(s["Health"] == "healthy" for s in states.values())
    # `docker compose ps` shows the port the stand-in listens on, and publishes none.
    ports = {p["TargetPort"] for p in states["jservice"]["Publishers"]}
    assert ports, states["jservice"]
    assert not any(p["PublishedPort"] for p in states["jservice"]["Publishers"])
    for port in ports:
        stack.line(f"exec -T -e PORT={port} jservice python -I -S /app/docker/health.py /api/random?count=0")
    # Only the two named volumes: no anonymous volume from the image for `down` to leave behind.
    mounts = [mount for name in SERVICES for mount in stack.inspect(name)["Mounts"]]
    assert sorted(m["Name"] for m in mounts if m["Type"] == "volume") == sorted(
        f"{stack.project}_{name}" for name in NAMED_VOLUMES
    )
    # One build for both services: no image of the project left dangling by a second one.
    assert stack.labelled("image", "dangling=true") == []


def test_image_holds_only_the_source(stack: Stack):
    listing = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "find", stack.image, "/app"])
    files = {line.removeprefix("/app/") for line in listing.stdout.splitlines()[1:]}
    assert {"server.py", "openapi.yaml", "docker/entrypoint.sh", "docker/health.py"} <= files
    assert not {".venv", "data", "backups", "tests", ".git", ".env"} & files
    if shutil.which("git") and (ROOT / ".git").exists():
        tracked = set(run(["git", "-C", str(ROOT), "ls-files"]).stdout.splitlines())
        tracked |= {str(folder) for name in tracked for folder in Path(name).parents}  # and their folders
        assert files <= tracked, f"not from the repository: {sorted(files - tracked)}"


@pytest.mark.gen_test(timeout=300)
async def test_api_through_the_published_port(stack: Stack, tmp_path):
    data = await store_data(stack, tmp_path)
    # psql from the host, on the loopback port, and inside the db container
    assert sql(stack.database_url, "SELECT count(*) FROM users WHERE id = %s", (data.user["id"],)) == [(1,)]
    inside = stack.line("exec -T db psql -U quiz quiz -tAc 'SELECT count(*) FROM records'")
    assert int(inside.stdout) >= 1


@pytest.mark.gen_test(timeout=600)
async def test_data_survives_stop_restart_and_down_up(stack: Stack, tmp_path):
    data = await store_data(stack, tmp_path)

    stack.timed("stop", "stop")
    # Every process stops on SIGTERM by itself (a process Docker has to kill exits 137).
    assert {name: s["ExitCode"] for name, s in stack.containers().items()} == dict.fromkeys(SERVICES, 0)
    stack.compose("start")
    stack.wait_healthy()
    await assert_data_kept(stack, data)

    stack.timed("restart", "restart")
    stack.wait_healthy()
    await assert_data_kept(stack, data)

    unused_volumes = set(run(["docker", "volume", "ls", "-q", "--filter", "dangling=true"]).stdout.split())
    stack.timed("down", "down")
    assert stack.labelled("container") == []
    # `down` leaves the two named volumes and nothing else (an image VOLUME would leave one per container)
    left = set(run(["docker", "volume", "ls", "-q", "--filter", "dangling=true"]).stdout.split())
    assert left - unused_volumes == {f"{stack.project}_{name}" for name in NAMED_VOLUMES}
    stack.timed("up again", "up", "--detach", "--wait", "--wait-timeout", str(HEALTHY_TIMEOUT))
    await assert_data_kept(stack, data)


@pytest.mark.gen_test(timeout=300)
async def test_database_killed_and_started_again_without_restarting_the_app(stack: Stack, tmp_path):
    data = await store_data(stack, tmp_path)
    before = stack.inspect("app")
    stack.compose("kill", "db")
    await wait_for(lambda: health_is(stack, 503), deadline=30)  # the app sees the database gone
    stack.compose("start", "db")
    await wait_for(lambda: health_is(stack, 200), deadline=60)
    await assert_data_kept(stack, data)
    assert (await call(stack.base_url, "POST", "/users", {"name": "after"})).status == 201
    after = stack.inspect("app")
    assert (after["Id"], after["State"]["StartedAt"], after["RestartCount"]) == (
        before["Id"],
        before["State"]["StartedAt"],
        before["RestartCount"],
    )
    stack.wait_healthy()


@pytest.mark.gen_test(timeout=300)
async def test_stopping_the_app_during_an_upload_leaves_nothing_half_done(stack: Stack):
    user = (await call(stack.base_url, "POST", "/users", {"name": "cut"})).json
    body, content_type = upload_form(user, make_wav(30.0))
    half = len(body) // 2
    halfway = asyncio.Event()

    async def produce(write: Any) -> None:
        await write(body[:half])
        halfway.set()
        for start in range(half, len(body), 64 * 1024):  # the rest, slowly: it is still arriving
            await write(body[start : start + 64 * 1024])
            await asyncio.sleep(0.25)

    upload = asyncio.ensure_future(post_streaming(f"{stack.base_url}/records", content_type, produce))
    await halfway.wait()
    await asyncio.to_thread(stack.compose, "stop", "app")
    try:
        status = (await asyncio.wait_for(upload, 60)).status
    except CONNECTION_LOST:
        status = 0
    assert stack.containers()["app"]["ExitCode"] == 0

    files = stack.media_files()
    rows = [row[0] for row in sql(stack.database_url, "SELECT path FROM records")]
    mine = sql(stack.database_url, "SELECT count(*) FROM records WHERE user_id = %s", (user["id"],))
    assert [name for name in files if name.startswith(".tmp/")] == []
    assert set(rows) == {name for name in files if name.endswith(".mp3")}  # no row without its file
    assert mine == [(1 if status == 201 else 0,)], status
    stack.compose("start", "app")
    stack.wait_healthy()


@pytest.mark.gen_test(timeout=300)
async def test_backups_as_documented(stack: Stack, tmp_path):
    kept = await store_data(stack, tmp_path)
    backups = tmp_path / "backups"
    backups.mkdir()
    with (backups / "quiz.dump").open("wb") as dump:
        stack.line("exec -T db pg_dump -U quiz -Fc quiz", stdout=dump)
    with (backups / "media.tgz").open("wb") as media:
        stack.line("exec -T app tar -czf - -C /data/media --exclude ./.tmp .", stdout=media)
    later = (await call(stack.base_url, "POST", "/users", {"name": "after the backup"})).json

    stack.compose("stop", "app")
    with (backups / "quiz.dump").open("rb") as dump:
        stack.line("exec -T db pg_restore -U quiz -d quiz --clean --if-exists", stdin=dump)
    with (backups / "media.tgz").open("rb") as media:
        stack.line("run --rm --no-deps -T app tar -xzf - -C /data/media", stdin=media)
    stack.compose("start", "app")
    stack.wait_healthy()
    await assert_data_kept(stack, kept)
    assert (await call(stack.base_url, "GET", f"/users/{later['id']}")).status == 404
    [(path,)] = sql(stack.database_url, "SELECT path FROM records WHERE id = %s", (kept.record_id,))
    with tarfile.open(backups / "media.tgz") as archive:
        assert f"./{path}" in archive.getnames()


@pytest.mark.gen_test(timeout=300)
async def test_changing_the_database_password_as_documented(stack: Stack, tmp_path):
    data = await store_data(stack, tmp_path)
    changed = {"POSTGRES_PASSWORD": "changed-later"}
    try:
        stack.line("""exec -T db psql -U quiz -d quiz -c "ALTER USER quiz PASSWORD 'changed-later'" """)
        stack.compose("up", "--detach", "--wait", "--wait-timeout", str(HEALTHY_TIMEOUT), env=changed)
        await assert_data_kept(stack, data)
        assert sql(stack.database_url.replace("quiz:quiz@", "quiz:changed-later@"), "SELECT 1") == [(1,)]
    finally:
        stack.line("""exec -T db psql -U quiz -d quiz -c "ALTER USER quiz PASSWORD 'quiz'" """, env=changed)
        stack.compose("up", "--detach", "--wait", "--wait-timeout", str(HEALTHY_TIMEOUT))
    await assert_data_kept(stack, data)


@pytest.mark.gen_test(timeout=300)
async def test_a_media_folder_docker_created_says_what_to_do(stack: Stack, tmp_path):
    host_media = tmp_path / "media"  # not there: Docker creates it, owned by root
    bound = {"MEDIA_DIR_HOST": str(host_media)}
    as_root = ["docker", "run", "--rm", "--network", "none", "--user", "0", "-v", f"{host_media}:/m"]
    try:
        stack.compose("up", "--detach", "app", env=bound)

        async def told() -> bool:
            logs = stack.compose("logs", "--no-color", "app", env=bound).stdout
            return "sudo chown 10001:10001" in logs

        await wait_for(told, deadline=60)
        run([*as_root, "--entrypoint", "chown", stack.image, "10001:10001", "/m"])
        stack.compose("restart", "app", env=bound)
        stack.wait_healthy()
        data = await store_data(stack, tmp_path)
        assert [path.read_bytes() for path in host_media.rglob("*.mp3")] == [data.mp3]
    finally:
        stack.compose("up", "--detach", "--wait", "--wait-timeout", str(HEALTHY_TIMEOUT), "app")
        if host_media.exists():  # the MP3s belong to uid 10001: remove them as the container's root
            run([*as_root, "--entrypoint", "find", stack.image, "/m", "-mindepth", "1", "-delete"])
