"""deploy/nginx/quiz.conf under Debian's nginx: it passes `nginx -t`, and a running nginx with it
spreads requests round-robin over keep-alive HTTP/1.1 connections, sets the X-Forwarded-* headers,
and refuses bodies over MAX_UPLOAD_BYTES with a problem document."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from tests.nginx import NGINX_DIR, SITE, find_nginx, nginx_command, nginx_size, write_config
from tests.support import free_port

SITE_TEXT = (NGINX_DIR / SITE).read_text()
DEFAULTS = Settings()


@pytest.fixture
def nginx() -> str:
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return binary


def directive(name: str) -> str:
    """The value of a directive the site file sets once."""
    values = re.findall(rf"^\s*{name}\s+([^;]+);", SITE_TEXT, re.MULTILINE)
    assert len(values) == 1, f"{name}: {values}"
    return str(values[0])


def wait_for(check: Callable[[], bool], deadline: float = 10.0) -> None:
    """Return once `check()` is true; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"condition not met within {deadline}s"
        time.sleep(0.02)


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    try:
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
    except OSError:
        return False
    return True


class Echo(BaseHTTPRequestHandler):
    """An instance stand-in: answers what it received, and on which connection."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.echo()

    def do_POST(self) -> None:
        self.echo()

    def echo(self) -> None:
        body = json.dumps(
            {
                "instance": self.connection.getsockname()[1],
                "version": self.request_version,
                "connection_port": self.client_address[1],
                "headers": {name.lower(): value for name, value in self.headers.items()},
            }
        ).encode()
        # A body this handler never reads would be taken for the next request.
        self.close_connection = self.headers.get("Content-Length", "0") != "0"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def instances() -> Iterator[list[int]]:
    """Two echoing instances on loopback; their ports."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Echo) for _ in range(2)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    yield [server.server_address[1] for server in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(nginx: str, instances: list[int], tmp_path: Path) -> Iterator[int]:
    """nginx running the site file in front of the instances; its port."""
    port = free_port()
    conf = write_config(tmp_path, port, [f"127.0.0.1:{instance}" for instance in instances])
    process = subprocess.Popen(nginx_command(nginx, conf), stderr=subprocess.PIPE)
    try:
        wait_for(lambda: process.poll() is not None or accepts(port))
        assert process.poll() is None, process.communicate()[1].decode()
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=10)


def request(port: int, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """Send headers only (any Content-Length they name goes unsent); status, type and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = headers or {}
        connection.putrequest(method, "/records", skip_host="Host" in headers)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def test_site_passes_nginx_t_as_shipped(nginx, tmp_path):
    conf = write_config(tmp_path, free_port())
    result = subprocess.run(nginx_command(nginx, conf, "-t"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_limits_match_the_service():
    assert nginx_size(directive("client_max_body_size")) == DEFAULTS.max_upload_bytes
    assert f"larger than {DEFAULTS.max_upload_bytes} bytes" in SITE_TEXT
    assert directive("proxy_request_buffering") == "off"
    assert directive("proxy_http_version") == "1.1"
    assert directive("proxy_set_header Connection") == '""'
    # Uploads get their whole send time and conversion time before nginx gives up on the answer.
    read_timeout = int(directive("proxy_read_timeout").removesuffix("s"))
    assert read_timeout >= DEFAULTS.upload_timeout + DEFAULTS.convert_timeout
    assert int(directive("keepalive_timeout").removesuffix("s")) < DEFAULTS.http_idle_timeout


def test_requests_go_round_robin_over_kept_alive_connections(proxy, instances):
    answers = []
    for _ in range(6):
        status, _, body = request(proxy)
        assert status == 200
        answers.append(json.loads(body))
    assert [answer["instance"] for answer in answers] == [instances[0], instances[1]] * 3 or [
        answer["instance"] for answer in answers
    ] == [instances[1], instances[0]] * 3
    for instance in instances:
        seen = [answer for answer in answers if answer["instance"] == instance]
        assert {answer["version"] for answer in seen} == {"HTTP/1.1"}
        assert all("connection" not in answer["headers"] for answer in seen)
        # Three requests, one connection: nginx kept it open between them.
        assert len({answer["connection_port"] for answer in seen}) == 1


def test_forwarded_headers_name_the_client_and_the_address_it_used(proxy):
    _, _, body = request(proxy, headers={"Host": f"quiz.test:{proxy}"})
    headers = json.loads(body)["headers"]
    assert headers["host"] == f"quiz.test:{proxy}"
    assert headers["x-forwarded-host"] == f"quiz.test:{proxy}"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"


def test_bodies_up_to_max_upload_bytes_pass_and_larger_get_a_problem_document(proxy):
    limit = DEFAULTS.max_upload_bytes
    status, _, body = request(proxy, "POST", {"Content-Length": str(limit)})
    assert status == 200 and json.loads(body)["headers"]["content-length"] == str(limit)
    status, content_type, body = request(proxy, "POST", {"Content-Length": str(limit + 1)})
    assert (status, content_type) == (413, "application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == 413 and str(limit) in problem["detail"]
