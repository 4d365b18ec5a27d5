"""Generated inputs: schemathesis against openapi.yaml, and hypothesis over WAV headers."""

from __future__ import annotations

import asyncio
import http.client
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audio import make_wav, upload_form
from tests.support import ROOT, ServerProcess, call, scratch_files, serve_process, sql, standin_process

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    """A server process with its own stand-in process, shared by this module's tests."""
    directory = tmp_path_factory.mktemp("fuzz")
    standin, standin_url = standin_process(directory / "standin.log")
    env = {"DATABASE_URL": database_url, "JSERVICE_URL": standin_url, "DATA_DIR": str(directory)}
    server = asyncio.run(serve_process(env, directory / "server.log"))
    yield server, directory / "media"
    server.stop()
    standin.terminate()
    standin.wait()


def test_schemathesis_finds_no_failure(stack):
    server, _ = stack
    user = asyncio.run(call(server.base_url, "POST", "/users", {"name": "schemathesis"})).json
    assert post_upload(server.base_url, upload_form(user, make_wav(0.2))) == 201
    env = {**os.environ, "SCHEMATHESIS_USER": str(user["id"]), "SCHEMATHESIS_TOKEN": user["token"]}
    config = ROOT / "tests" / "schemathesis.toml"
    command = [str(BIN / "schemathesis"), "--config-file", str(config), "run", str(ROOT / "openapi.yaml")]
    command += ["--url", server.base_url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=170, env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert " 500 " not in server.log


FORMAT_TAGS = st.one_of(st.sampled_from([1, 3, 6, 7, 0xFFFE, 0x55, 2, 0]), st.integers(0, 0xFFFF))
RATES = st.one_of(
    st.sampled_from([0, 1, 7999, 8000, 11025, 44100, 48000, 96000, 192000, 192001]), st.integers(0, 2**32 - 1)
)


@st.composite
def wav_files(draw: st.DrawFn) -> bytes:
    """A WAV whose every header field, declared size and truncation point is drawn."""
    tag = draw(FORMAT_TAGS)
    channels = draw(st.integers(0, 10))
    rate = draw(RATES)
    bits = draw(st.sampled_from([0, 4, 8, 12, 16, 20, 24, 32, 64]))
    align = draw(st.one_of(st.just(channels * bits // 8), st.integers(0, 80)))
    byte_rate = (rate * align) % 2**32
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, align, bits)
    if tag == 0xFFFE:
        sub_format = draw(st.sampled_from([1, 3, 0x55]))
        fmt += struct.pack("<HHIH", 22, bits, 3, sub_format) + bytes(14)
    data = bytes(range(256)) * draw(st.integers(0, 64))
    declared = draw(st.one_of(st.just(len(data)), st.integers(0, 2**32 - 1)))
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared) + data
    wav = b"RIFF" + struct.pack("<I", (4 + len(chunks)) % 2**32) + b"WAVE" + chunks
    boundaries = [0, 4, 8, 12, 16, 20, 20 + len(fmt), 28 + len(fmt), len(wav)]
    cut = draw(st.one_of(st.sampled_from(boundaries), st.integers(0, len(wav))))
    return wav[:cut]


def post_upload(base_url: str, form: tuple[bytes, str]) -> int:
    """A blocking POST /records (hypothesis drives plain functions); returns the status."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", "/records", body=form[0], headers={"Content-Type": form[1]})
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture(scope="module")
def uploader(stack) -> dict[str, object]:
    server, _ = stack
    reply = asyncio.run(call(server.base_url, "POST", "/users", {"name": "hypothesis"}))
    user: dict[str, object] = reply.json
    return user


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wav=wav_files())
def test_any_wav_header_gets_201_or_a_4xx_and_leaves_nothing_behind(stack, uploader, database_url, wav):
    server, media = stack
    rows_before = sql(database_url, "SELECT count(*) FROM records WHERE user_id = %s", (uploader["id"],))[0][
        0
    ]
    files_before = set(media.glob("*/*.mp3"))
    status = post_upload(server.base_url, upload_form(uploader, wav))
    assert status in (201, 400, 415, 422), status
    rows_after = sql(database_url, "SELECT count(*) FROM records WHERE user_id = %s", (uploader["id"],))[0][0]
    new_files = set(media.glob("*/*.mp3")) - files_before
    assert (rows_after - rows_before, len(new_files)) == ((1, 1) if status == 201 else (0, 0))
    assert not scratch_files(media / ".tmp")
    assert not psutil.Process(server.process.pid).children(recursive=True)
