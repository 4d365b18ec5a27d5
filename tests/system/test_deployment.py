"""The Docker files, checked statically (tests/system/test_docker.py runs them on a Docker engine),
the image's healthcheck and the stand-in's signal handling, and the server started the way the image
starts it, with the environment the compose file gives it."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import VARIABLES, load_settings
from tests.audio import make_wav, multipart
from tests.support import ROOT, call, free_port, serve_process, standin_process

BIN = Path(sys.executable).parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """What `docker compose` makes of `${VAR:-default}` with `env` as the shell environment."""
    env = env or {}
    return INTERPOLATION.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value).replace("$$", "$")


def app_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    return {
        name: interpolate(str(value), env)
        for name, value in COMPOSE["services"]["app"]["environment"].items()
    }


def volume_for(service: str, target: str, env: dict[str, str] | None = None) -> str:
    for volume in COMPOSE["services"][service]["volumes"]:
        source, _, mounted = interpolate(volume, env).partition(":")
        if mounted == target:
            return source
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", ROOT / "docker-compose.yml"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version" not in COMPOSE


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [BIN / "hadolint", "--no-color", ROOT / "Dockerfile"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_database_data_is_on_a_volume_that_survives_re_creation():
    assert volume_for("db", "/var/lib/postgresql/data") in COMPOSE["volumes"]
    host_path = volume_for("db", "/var/lib/postgresql/data", {"PGDATA_DIR": "./data/postgres"})
    assert host_path == "./data/postgres"
    assert re.fullmatch(r"postgres:\d+", COMPOSE["services"]["db"]["image"])


def test_media_is_on_its_own_volume_at_media_dir():
    media_dir = app_environment()["MEDIA_DIR"]
    assert volume_for("app", media_dir) in COMPOSE["volumes"]
    assert volume_for("app", media_dir, {"MEDIA_DIR_HOST": "/srv/media"}) == "/srv/media"


def seconds(duration: str) -> float:
    """A Compose duration such as `5s` or `1m30s` in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_every_service_has_a_healthcheck_and_a_restart_policy():
    for name, service in COMPOSE["services"].items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
    assert "pg_isready -h 127.0.0.1" in str(COMPOSE["services"]["db"]["healthcheck"]["test"])


def test_healthchecks_come_early_on_every_engine():
    # Engines before 25 refuse start_interval and run the first check one interval after the start.
    for name, service in COMPOSE["services"].items():
        check = service["healthcheck"]
        assert "start_interval" not in check, name
        assert seconds(check["interval"]) <= 5, name
        assert seconds(check["timeout"]) < seconds(check["interval"]), name


def test_app_starts_beside_the_database_and_the_stand_in():
    # Not after their first healthy check: the server waits for the database itself, and the stand-in
    # is only asked when questions are, and then only if JSERVICE_URL points at it.
    depends = COMPOSE["services"]["app"]["depends_on"]
    assert depends == {"db": {"condition": "service_started"}, "jservice": {"condition": "service_started"}}
    assert load_settings(app_environment()).db_wait_seconds >= 30


def test_one_image_is_built_once_for_both_services():
    app, standin = COMPOSE["services"]["app"], COMPOSE["services"]["jservice"]
    assert app["build"] == "." and "build" not in standin
    assert app["image"] == standin["image"] == "${APP_IMAGE:-quiz-audio:local}"


def test_stand_in_listens_on_the_port_the_image_exposes_and_the_app_calls():
    command = COMPOSE["services"]["jservice"]["command"]
    port = command[command.index("--port") + 1]
    assert re.search(rf"^EXPOSE {port}$", DOCKERFILE, re.MULTILINE)
    assert load_settings(app_environment()).jservice_url == f"http://jservice:{port}"
    assert f'"{command[0]}", "-I", "-S", "/app/docker/health.py"' in str(
        COMPOSE["services"]["jservice"]["healthcheck"]["test"]
    ).replace("'", '"')


def test_requests_in_flight_finish_before_docker_kills_the_app():
    app = COMPOSE["services"]["app"]
    assert load_settings(app_environment()).shutdown_grace_seconds < seconds(app["stop_grace_period"])


def test_app_environment_is_valid_and_complete():
    env = app_environment()
    assert set(env) <= set(VARIABLES), set(env) - set(VARIABLES)
    settings = load_settings(env)
    db = COMPOSE["services"]["db"]["environment"]
    expected_db = (
        f"postgresql://{interpolate(db['POSTGRES_USER'])}:{interpolate(db['POSTGRES_PASSWORD'])}"
        f"@db:5432/{interpolate(db['POSTGRES_DB'])}"
    )
    assert settings.database_url == expected_db
    assert settings.jservice_url == "http://jservice:8000"
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert str(settings.media_root) == "/data/media"


def test_published_ports():
    assert COMPOSE["services"]["db"]["ports"] == ["127.0.0.1:${POSTGRES_PORT:-5432}:5432"]
    assert [interpolate(port) for port in COMPOSE["services"]["app"]["ports"]] == ["8000:8000"]
    assert "ports" not in COMPOSE["services"]["jservice"]


def test_app_runs_read_only_with_limits():
    app = COMPOSE["services"]["app"]
    assert app["read_only"] is True and app["tmpfs"] == ["/tmp"]
    assert app["mem_limit"] and app["pids_limit"]


def test_dockerfile_is_multi_stage_non_root_and_runs_server_py():
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", DOCKERFILE, re.MULTILINE)
    assert stages == [("python:3.12-slim", "ffmpeg"), ("python:3.12-slim", "venv"), ("python:3.12-slim", "")]
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"-I\", \"-S\"", DOCKERFILE, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["/app/docker/entrypoint.sh"\]$', DOCKERFILE, re.MULTILINE)
    assert DOCKERFILE.rstrip().endswith('CMD ["python", "server.py"]')


def test_dockerfile_needs_no_registry_but_the_base_images_and_leaves_no_anonymous_volume():
    # A `# syntax=` line makes BuildKit fetch a frontend image; a VOLUME gives every container of the
    # image (the stand-in too) an anonymous volume that `docker compose down` leaves behind.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.MULTILINE | re.IGNORECASE)
    assert not re.search(r"^VOLUME\b", DOCKERFILE, re.MULTILINE)


def test_image_ffmpeg_is_the_lean_static_build():
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "apt-get" not in final_stage  # no Debian ffmpeg and its 450 MB of libraries
    assert "COPY --from=ffmpeg /opt/ffmpeg/ffmpeg /usr/local/bin/ffmpeg" in final_stage
    for needed in ("--extra-ldflags=-static", "--enable-libmp3lame", "--enable-demuxer=wav", "pcm_alaw"):
        assert needed in DOCKERFILE, needed


def test_image_requirements_are_pinned_and_need_no_embedded_tools():
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", line) for line in lines)
    assert not any(line.startswith(("pgserver", "imageio-ffmpeg")) for line in lines)


def test_dockerignore_keeps_data_backups_and_environments_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "backups", "**/*.dump", "**/*.tgz", ".env", ".pytest_cache"} <= ignored
    assert {"backups/", "*.dump", "*.tgz", ".env"} <= set((ROOT / ".gitignore").read_text().split())


def test_documented_backups_go_to_the_excluded_folder():
    doc = (ROOT / "docs" / "deployment.md").read_text()
    written = re.findall(r"^docker compose .* > (\S+)$", doc, re.MULTILINE)
    assert written == ["backups/quiz.dump", "backups/media.tgz"], written


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, re.MULTILINE))
    assert set(VARIABLES) <= documented, set(VARIABLES) - documented


@pytest.mark.gen_test(timeout=120)
async def test_server_runs_with_the_compose_environment(database_url, standin, tmp_path):
    env = {
        **app_environment(),
        # What only the containers can reach is pointed at this machine's equivalents.
        "DATABASE_URL": database_url,
        "JSERVICE_URL": standin.url,
        "MEDIA_DIR": str(tmp_path / "media"),
        "DATA_DIR": str(tmp_path),
    }
    server = await serve_process(env, tmp_path / "server.log")
    base = server.base_url
    try:
        assert (await call(base, "POST", "/questions", {"questions_num": 2})).status == 200
        assert (await call(base, "GET", "/questions")).json["total"] >= 2
        user = (await call(base, "POST", "/users", {"name": "compose"})).json
        assert (await call(base, "GET", f"/users/{user['id']}")).status == 200
        body, content_type = multipart(
            {"user": str(user["id"]), "token": user["token"]}, {"file": ("a.wav", make_wav(0.5))}
        )
        record = await call(base, "POST", "/records", raw=body, headers={"Content-Type": content_type})
        assert record.status == 201
        path = record.json["url"].removeprefix(base)
        assert (await call(base, "GET", path)).headers["Content-Type"] == "audio/mpeg"
        assert (await call(base, "HEAD", path)).status == 200
        for extra in ("/openapi.yaml", "/openapi.json", "/docs"):
            assert (await call(base, "GET", extra)).status == 200, extra
    finally:
        server.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stand_in_stops_cleanly_on_signal(tmp_path, signum):
    # In a container the stand-in is PID 1, which has no default action for SIGTERM: without its own
    # handler Docker waits 10 s and kills it (exit 137). Here, without a handler, SIGTERM kills it (-15).
    process, _url = standin_process(tmp_path / "standin.log")
    try:
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0, (tmp_path / "standin.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def run_health(port: int, path: str) -> tuple[int, bytes]:
    """docker/health.py as the containers run it: its exit status and what it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(ROOT / "docker" / "health.py"),
        path,
        env={"PORT": str(port)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output


@pytest.mark.gen_test(timeout=30)
async def test_healthcheck_script_says_healthy_only_on_200(standin):
    port = int(standin.url.rsplit(":", 1)[1])
    assert await run_health(port, "/api/random?count=0") == (0, b"")
    code, output = await run_health(port, "/nowhere")
    assert code == 1 and b"404" in output
    code, output = await run_health(free_port(), "/health")
    assert code == 1 and b"unhealthy" in output
