"""/docs in a real browser (Debian's chromium driven by Playwright): sign up, upload a WAV through
Swagger UI's form, follow the link it answers and download through the form, as a person would."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Download, Locator, Page, sync_playwright

from tests.audio import decode_mp3, make_wav
from tests.support import ServerProcess, serve_process

CHROMIUM = "/usr/bin/chromium"
# No background connections to a network that refuses them (Playwright itself adds --headless and,
# needed as root, --no-sandbox).
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APT_INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
STEP_MS = 30_000  # the deadline of each step in the page
UPLOAD_NAME = "café take.wav"
# Follows a link as a click on it does (a navigation that ends in a download).
CLICK_A_LINK = "url => { const a = document.createElement('a'); a.href = url; a.click(); }"


def install_chromium() -> str | None:
    """Install Debian's chromium when it is missing; the reason it cannot be, else None."""
    if Path(CHROMIUM).exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and only root with apt-get can install it: apt-get install chromium"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (APT_INSTALL, ["apt-get", "update"], APT_INSTALL):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode == 0 and Path(CHROMIUM).exists():
            return None
    return f"cannot install chromium with apt-get: {(result.stderr.strip().splitlines() or ['?'])[-1]}"


@pytest.fixture
def browser(server: ServerProcess) -> Iterator[Browser]:
    """Debian's chromium under Playwright (Playwright's own browser downloads are never used)."""
    reason = install_chromium()
    if reason:
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server process of its own, started before the browser: Playwright's synchronous API
    keeps an event loop running in this thread."""
    env = {"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}
    process = asyncio.run(serve_process(env, tmp_path / "server.log"))
    yield process
    process.stop()


def open_try_it_out(page: Page, operation: str) -> Locator:
    """Expand an operation of Swagger UI and press its "Try it out"; return its block."""
    block = page.locator(f"#operations-{operation}")
    block.locator(".opblock-summary").click()
    block.locator(".try-out__btn").click()
    return block


def execute(block: Locator) -> tuple[str, Locator]:
    """Press Execute and wait for the answer; return its status and the answer's block."""
    block.locator(".execute").click()
    answer = block.locator(".live-responses-table .response").first
    return answer.locator(".response-col_status").inner_text(timeout=STEP_MS).strip(), answer


def body_of(answer: Locator) -> Any:
    """The JSON body of an answer, as Swagger UI shows it."""
    return json.loads(answer.locator(".highlight-code pre").first.inner_text())


def test_docs_sign_up_upload_and_download_a_complete_mp3(browser, server, tmp_path):
    wav = tmp_path / UPLOAD_NAME
    wav.write_bytes(make_wav(1.5))
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(STEP_MS)
    page.goto(server.base_url + "/")
    assert page.url == server.base_url + "/docs"

    sign_up = open_try_it_out(page, "users-createUser")
    status, answer = execute(sign_up)
    assert status == "201"
    user = body_of(answer)

    upload = open_try_it_out(page, "records-uploadRecord")
    fields = upload.locator(".opblock-section-request-body input[type=text]")
    assert fields.count() == 2
    assert [fields.nth(i).input_value() for i in range(2)] == ["", ""], "the form must start empty"
    fields.nth(0).fill(str(user["id"]))
    fields.nth(1).fill(user["token"])
    upload.locator("input[type=file]").set_input_files(wav)
    status, answer = execute(upload)
    assert status == "201", answer.inner_text()
    record = body_of(answer)

    stored = (tmp_path / "media").rglob("*.mp3")
    expected = next(stored).read_bytes()
    with page.expect_download() as followed:
        page.evaluate(CLICK_A_LINK, record["url"])
    check_download(followed.value, expected, tmp_path / "followed.mp3")

    download = open_try_it_out(page, "records-downloadRecord")
    inputs = {
        name: download.locator(f"tr[data-param-name='{name}'] input")
        for name in ("id", "user", "Range", "If-None-Match", "If-Modified-Since")
    }
    assert {name: box.input_value() for name, box in inputs.items()} == dict.fromkeys(inputs, "")
    inputs["id"].fill(record["id"])
    inputs["user"].fill(str(user["id"]))
    status, answer = execute(download)
    assert status == "200"
    with page.expect_download() as through_form:
        answer.get_by_text("Download file").click()
    check_download(through_form.value, expected, tmp_path / "through-form.mp3")
    context.close()


def check_download(download: Download, expected: bytes, path: Path) -> None:
    """The download is the stored MP3, whole, named after the upload, and decodes."""
    assert download.suggested_filename == Path(UPLOAD_NAME).with_suffix(".mp3").name
    download.save_as(path)
    assert path.read_bytes() == expected
    assert abs(decode_mp3(path).duration_seconds - 1.5) < 0.1
