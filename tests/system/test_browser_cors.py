"""CORS in a real browser: a page from another origin uploads, downloads, lists and deletes."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.testing
from tornado.web import Application, RequestHandler

from config import Settings
from tests.audio import make_wav
from tests.support import call

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")

PAGE = """<!DOCTYPE html><html><body><script>
const api = %(api)s, user = %(user)s, auth = {Authorization: "Bearer " + %(token)s};
async function run() {
  const out = {};
  const form = new FormData();
  form.append("user", String(user));
  const wav = Uint8Array.from(atob(%(wav)s), c => c.charCodeAt(0));
  form.append("file", new Blob([wav], {type: "audio/wav"}), "take.wav");
  const upload = await fetch(api + "/records", {method: "POST", headers: auth, body: form});
  out.upload = [upload.status, upload.headers.get("Location")];
  const url = (await upload.json()).url;
  const download = await fetch(url);
  out.download = [download.status, download.headers.get("Content-Disposition")];
  const listed = await fetch(api + "/users/" + user + "/records",
                             {headers: {...auth, "X-Request-ID": "from-the-browser"}});
  out.list = [listed.status, listed.headers.get("X-Request-ID"), (await listed.json()).total];
  out.delete = (await fetch(url, {method: "DELETE", headers: auth})).status;
  const again = await fetch(url, {method: "DELETE", headers: auth});
  out.again = [again.status, (await again.json()).request_id === again.headers.get("X-Request-ID")];
  return out;
}
run().then(out => { document.body.textContent = JSON.stringify(out); },
           error => { document.body.textContent = JSON.stringify({error: String(error)}); });
</script></body></html>"""


class PageHandler(RequestHandler):
    """The test page, from its own origin."""

    def get(self) -> None:
        self.finish(self.settings["page"]["html"])


@pytest.fixture
def pages(io_loop: object) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Two page servers: the first one's origin is in CORS_ORIGINS, the second one's is not."""
    page: dict[str, str] = {}
    application = Application([(r"/", PageHandler)], page=page)
    servers, origins = [], []
    for _ in range(2):
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(application)
        server.add_sockets([sock])
        servers.append(server)
        origins.append(f"http://127.0.0.1:{port}")
    yield page, origins
    for server in servers:
        server.stop()


@pytest.fixture
def settings(settings: Settings, pages: tuple[dict[str, str], list[str]]) -> Settings:
    return replace(settings, cors_origins=(pages[1][0],))


async def run_page(url: str, profile: Path) -> dict[str, Any]:
    """Load the page in headless chromium; what its script wrote into the body."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless=new", "--disable-gpu", f"--user-data-dir={profile}"]
    command += ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium refuses root otherwise
    # The virtual time budget lets the script's requests finish before the DOM is dumped.
    command += ["--virtual-time-budget=60000", "--dump-dom", url]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        dom, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    body = re.search(r"<body>(.*)</body>", dom.decode(), re.DOTALL)
    assert body is not None, dom
    result: dict[str, Any] = json.loads(html.unescape(body.group(1)))
    return result


@pytest.mark.gen_test(timeout=120)
async def test_a_page_of_an_allowed_origin_uses_every_record_call(base_url, db, pages, tmp_path):
    page, (allowed, refused) = pages
    user = (await call(base_url, "POST", "/users", {"name": "browser"})).json
    page["html"] = PAGE % {
        "api": json.dumps(base_url),
        "user": json.dumps(user["id"]),
        "token": json.dumps(user["token"]),
        "wav": json.dumps(base64.b64encode(make_wav(0.2)).decode()),
    }
    result = await run_page(f"{allowed}/", tmp_path / "profile")
    location = f"{base_url}/record?id="
    assert result["upload"][0] == 201 and result["upload"][1].startswith(location), result
    assert result["download"] == [200, 'attachment; filename="take.mp3"'], result
    assert result["list"] == [200, "from-the-browser", 1], result
    assert (result["delete"], result["again"]) == (204, [404, True]), result
    # The same page from an origin CORS_ORIGINS does not name: the browser refuses the call.
    assert "Failed to fetch" in str((await run_page(f"{refused}/", tmp_path / "profile")).get("error"))
