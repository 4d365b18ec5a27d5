"""What every call shares: request ids, the access log, CORS, clients behind trusted proxies, /health."""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from handlers.forwarded import forwarded_client
from tests.audio import make_wav, upload_form
from tests.nginx import find_nginx, nginx_command, write_config
from tests.support import ROOT, assert_problem, call, fetch, free_port, poll

APP = "https://app.example.org"
LOCAL = (ipaddress.ip_network("127.0.0.1/32"),)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "tornado.access"]


@pytest.mark.gen_test
async def test_health_names_the_version_of_pyproject(base_url):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (await call(base_url, "GET", "/health")).json == {"status": "ok", "version": version}


@pytest.mark.gen_test
async def test_a_request_id_is_generated_or_taken_from_the_request(base_url):
    generated = (await call(base_url, "GET", "/health")).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert (await call(base_url, "GET", "/health")).headers["X-Request-ID"] != generated
    sent = "client-7f3c:2d8a/9e10=+_."
    assert (await call(base_url, "GET", "/health", headers={"X-Request-ID": sent})).headers[
        "X-Request-ID"
    ] == sent
    for malformed in ("two words", "x" * 129, "semi;colon", "é"):
        echoed = (await call(base_url, "GET", "/health", headers={"X-Request-ID": malformed})).headers
        assert re.fullmatch(r"[0-9a-f]{32}", echoed["X-Request-ID"]), malformed


@pytest.mark.gen_test
async def test_problem_documents_carry_the_request_id(base_url, db):
    reply = await call(base_url, "GET", "/questions?limit=0", headers={"X-Request-ID": "abc-123"})
    assert assert_problem(reply, 422)["request_id"] == "abc-123"
    assert reply.headers["X-Request-ID"] == "abc-123"
    generated = await call(base_url, "GET", "/no/such/thing")
    assert assert_problem(generated, 404)["request_id"] == generated.headers["X-Request-ID"]


@pytest.mark.gen_test
async def test_the_access_log_line(base_url, db, caplog):
    caplog.set_level(logging.INFO)
    await call(base_url, "GET", "/questions?limit=2&secret=s3cr3t", headers={"X-Request-ID": "line-1"})
    await call(base_url, "GET", "/questions?limit=0", headers={"X-Request-ID": "line-2"})
    ok, refused = access_lines(caplog)[-2:]
    assert re.fullmatch(
        r"GET /questions 200 [0-9.]+ms client=127\.0\.0\.1 request_id=line-1", ok.getMessage()
    )
    assert "s3cr3t" not in caplog.text and "limit" not in ok.getMessage()
    assert refused.getMessage().startswith("GET /questions 422 ")
    assert refused.levelno == logging.INFO


@pytest.mark.gen_test
async def test_refused_requests_log_at_info_and_failures_at_error(base_url, db, caplog):
    caplog.set_level(logging.INFO)
    # A static file handler's refusal comes with a reason Tornado would log as a WARNING.
    assert_problem(await call(base_url, "GET", "/docs/static/."), 403)
    assert_problem(await call(base_url, "GET", "/health/nothing"), 404)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.levelno for record in access_lines(caplog)] == [logging.INFO, logging.INFO]


@pytest.mark.gen_test
@pytest.mark.settings(database_url="postgresql://postgres@127.0.0.1:1/nothing")
async def test_server_side_failures_log_at_error(base_url, caplog):
    assert_problem(await call(base_url, "GET", "/health"), 503)
    (line,) = access_lines(caplog)
    assert line.levelno == logging.ERROR and line.getMessage().startswith("GET /health 503 ")


# CORS


@pytest.mark.gen_test
@pytest.mark.settings(cors_origins=(APP,))
async def test_answers_to_an_allowed_origin_can_be_read_by_its_pages(base_url, db):
    reply = await call(base_url, "GET", "/health", headers={"Origin": APP})
    assert reply.headers["Access-Control-Allow-Origin"] == APP
    exposed = {name.strip() for name in reply.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "Content-Disposition", "X-Request-ID"} <= exposed
    assert reply.headers["Vary"] == "Origin"
    error = await call(base_url, "GET", "/questions?limit=0", headers={"Origin": APP})
    assert_problem(error, 422)
    assert error.headers["Access-Control-Allow-Origin"] == APP
    other = await call(base_url, "GET", "/health", headers={"Origin": "https://evil.example.org"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert other.headers["Vary"] == "Origin"


PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "DELETE",
    "Access-Control-Request-Headers": "authorization",
}


@pytest.mark.gen_test
@pytest.mark.settings(cors_origins=(APP,))
async def test_preflights_are_answered_for_what_a_path_takes(base_url, db):
    # Not described in openapi.yaml (a browser's question, not an API call): fetched unchecked.
    reply = await fetch(base_url, "OPTIONS", "/record", headers=PREFLIGHT)
    assert (reply.status, reply.body) == (204, b"")
    assert reply.headers["Access-Control-Allow-Origin"] == APP
    assert reply.headers["Access-Control-Allow-Methods"] == "GET, HEAD, DELETE"
    assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
    assert int(reply.headers["Access-Control-Max-Age"]) > 0
    upload = await fetch(
        base_url, "OPTIONS", "/records", headers={**PREFLIGHT, "Access-Control-Request-Method": "POST"}
    )
    assert upload.status == 204 and upload.headers["Access-Control-Allow-Methods"] == "POST"
    listing = await fetch(
        base_url, "OPTIONS", "/users/1/records", headers={**PREFLIGHT, "Access-Control-Request-Method": "GET"}
    )
    assert listing.status == 204
    assert_problem(await call(base_url, "OPTIONS", "/records", headers=PREFLIGHT), 405)  # DELETE: no
    assert_problem(await call(base_url, "OPTIONS", "/nothing", headers=PREFLIGHT), 404)
    assert_problem(
        await call(base_url, "OPTIONS", "/record", headers={**PREFLIGHT, "Origin": "https://x.org"}), 405
    )
    assert_problem(await call(base_url, "OPTIONS", "/record"), 405)  # not a preflight


@pytest.mark.gen_test
async def test_no_cors_by_default(base_url, db):
    assert_problem(await call(base_url, "OPTIONS", "/record", headers=PREFLIGHT), 405)
    reply = await call(base_url, "GET", "/health", headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in reply.headers and "Vary" not in reply.headers


@pytest.mark.gen_test
@pytest.mark.settings(cors_origins=("*",))
async def test_any_origin_with_a_star(base_url, db):
    reply = await call(base_url, "GET", "/health", headers={"Origin": "https://anywhere.example"})
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in reply.headers


def test_cors_origins_and_trusted_proxies_are_checked_at_start_up():
    settings = load_settings(
        {
            "CORS_ORIGINS": " https://App.example.org/ , http://localhost:3000",
            "TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        }
    )
    assert settings.cors_origins == ("https://app.example.org", "http://localhost:3000")
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))
    assert load_settings({}).cors_origins == () and load_settings({}).trusted_proxies == ()
    for origin in ("app.example.org", "https://app.example.org/path", "ftp://x.org", "https://u@x.org"):
        with pytest.raises(ConfigError, match="CORS_ORIGINS"):
            load_settings({"CORS_ORIGINS": origin})
    for proxies in ("proxy.local", "10.0.0.0/33", "127.0.0.1,x"):
        with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
            load_settings({"TRUSTED_PROXIES": proxies})


# Clients behind trusted proxies

FORWARDED = {
    "X-Forwarded-For": "198.51.100.9, 203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "audio.example.org",
}


async def upload_with(base_url: str, headers: dict[str, str]) -> str:
    user = (await call(base_url, "POST", "/users", {"name": "proxied"})).json
    body, content_type = upload_form(user, make_wav(0.2))
    reply = await call(
        base_url, "POST", "/records", raw=body, headers={"Content-Type": content_type, **headers}
    )
    assert reply.status == 201
    listed = await call(
        base_url,
        "GET",
        f"/users/{user['id']}/records",
        headers={"Authorization": f"Bearer {user['token']}", **headers},
    )
    assert listed.json["items"][0]["url"] == reply.json["url"]
    url: str = reply.json["url"]
    return url


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(trusted_proxies=LOCAL)
async def test_behind_a_trusted_proxy_its_headers_name_the_client_and_the_links(base_url, db, caplog):
    caplog.set_level(logging.INFO)
    url = await upload_with(base_url, FORWARDED)
    assert url.startswith("https://audio.example.org/record?id=")
    assert re.search(r" client=203\.0\.113\.7 request_id=\w+$", access_lines(caplog)[-1].getMessage())


@pytest.mark.gen_test(timeout=60)
async def test_without_trusted_proxies_forwarded_headers_are_ignored(base_url, db, caplog):
    caplog.set_level(logging.INFO)
    url = await upload_with(base_url, FORWARDED)
    assert url.startswith(f"{base_url}/record?id=")
    assert " client=127.0.0.1 " in access_lines(caplog)[-1].getMessage()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(trusted_proxies=LOCAL, public_url="https://cdn.example.net")
async def test_public_url_wins_over_forwarded_headers(base_url, db):
    assert (await upload_with(base_url, FORWARDED)).startswith("https://cdn.example.net/record?id=")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(trusted_proxies=LOCAL)
async def test_malformed_forwarded_headers_fall_back_to_the_request(base_url, db):
    headers = {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "evil.org/path?", "X-Forwarded-For": "junk"}
    assert (await upload_with(base_url, headers)).startswith(f"{base_url}/record?id=")


@pytest.mark.parametrize(
    ("hops", "trusted", "client"),
    [
        ("203.0.113.7", ["127.0.0.1/32"], "203.0.113.7"),
        ("198.51.100.9, 203.0.113.7", ["127.0.0.1/32"], "203.0.113.7"),  # the left one may be forged
        ("198.51.100.9, 10.0.0.2", ["127.0.0.1/32", "10.0.0.0/8"], "198.51.100.9"),
        ("10.0.0.3, 10.0.0.2", ["127.0.0.1/32", "10.0.0.0/8"], "10.0.0.3"),  # all proxies: the first
        ("junk, 10.0.0.2", ["127.0.0.1/32", "10.0.0.0/8"], "10.0.0.2"),
        ("", ["127.0.0.1/32"], "127.0.0.1"),
        ("2001:db8::1", ["127.0.0.1/32"], "2001:db8::1"),
    ],
)
def test_the_client_is_the_right_most_untrusted_hop(hops, trusted, client):
    networks = [ipaddress.ip_network(network) for network in trusted]
    found = forwarded_client(hops.split(","), ipaddress.ip_address("127.0.0.1"), networks)
    assert str(found) == client


@pytest.fixture
def nginx(http_port: int, tmp_path: Path) -> Iterator[str]:
    """nginx in front of the app, configured with deploy/nginx/quiz.conf; its base URL."""
    binary = find_nginx()
    if binary is None:
        pytest.skip("needs nginx (apt-get install nginx-light)")
    port = free_port()
    conf = write_config(tmp_path, port, [f"127.0.0.1:{http_port}"])
    process = subprocess.Popen(
        nginx_command(binary, conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(trusted_proxies=LOCAL)
async def test_behind_nginx_as_the_docs_configure_it(nginx, base_url, db, caplog):
    caplog.set_level(logging.INFO)

    async def healthy() -> bool:
        try:
            return (await fetch(nginx, "GET", "/health", timeout=2)).status == 200
        except OSError:
            return False

    await poll(healthy, deadline=15)
    public = {"Host": "audio.example.org:8080"}
    user = (await call(nginx, "POST", "/users", {"name": "proxied"}, headers=public)).json
    body, content_type = upload_form(user, make_wav(0.2))
    reply = await call(nginx, "POST", "/records", raw=body, headers={"Content-Type": content_type, **public})
    assert reply.json["url"].startswith("http://audio.example.org:8080/record?id=")
    # nginx's own request id reaches the service, and comes back.
    request_id = reply.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    line = next(r.getMessage() for r in access_lines(caplog) if r.getMessage().startswith("POST /records"))
    assert line.endswith(f" client=127.0.0.1 request_id={request_id}")
