"""The Docker files, checked statically (no Docker engine here), and the server started the way
the image starts it, with the environment the compose file gives it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import VARIABLES, load_settings
from tests.audio import make_wav, multipart
from tests.support import ROOT, call, serve_process

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


def test_every_service_has_a_healthcheck_and_a_restart_policy():
    for name, service in COMPOSE["services"].items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
    assert "pg_isready" in str(COMPOSE["services"]["db"]["healthcheck"]["test"])


def test_app_waits_for_a_healthy_database_and_stand_in():
    depends = COMPOSE["services"]["app"]["depends_on"]
    assert depends["db"]["condition"] == "service_healthy"
    assert depends["jservice"]["condition"] == "service_healthy"


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
    assert settings.jservice_url == "http://jservice:8001"
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
    assert len(re.findall(r"^FROM python:3\.12-slim", DOCKERFILE, re.MULTILINE)) == 2
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.MULTILINE)
    assert "--no-install-recommends ffmpeg" in DOCKERFILE
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\"", DOCKERFILE, re.MULTILINE)
    assert DOCKERFILE.rstrip().endswith('CMD ["python", "server.py"]')


def test_image_requirements_are_pinned_and_need_no_embedded_tools():
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", line) for line in lines)
    assert not any(line.startswith(("pgserver", "imageio-ffmpeg")) for line in lines)


def test_dockerignore_keeps_data_and_environments_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", ".pytest_cache"} <= ignored


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
