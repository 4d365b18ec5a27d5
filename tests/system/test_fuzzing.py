"""Generated inputs: schemathesis against openapi.yaml, and hypothesis over WAV headers."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
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
    assert post_upload(server.base_url, upload_form(user, make_wav(0.2)))[0] == 201
    env = {**os.environ, "SCHEMATHESIS_USER": str(user["id"]), "SCHEMATHESIS_TOKEN": user["token"]}
    config = ROOT / "tests" / "schemathesis.toml"
    command = [str(BIN / "schemathesis"), "--config-file", str(config), "run", str(ROOT / "openapi.yaml")]
    command += ["--url", server.base_url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=170, env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert " 500 " not in server.log


# The end of every standard extensible sub-format GUID, after its 2-byte format tag.
KSDATAFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")
FORMAT_TAGS = st.one_of(st.sampled_from([1, 3, 6, 7, 0xFFFE, 0x55, 2, 0]), st.integers(0, 0xFFFF))
RATES = st.one_of(
    st.sampled_from([0, 1, 7999, 8000, 11025, 44100, 48000, 96000, 192000, 192001]), st.integers(0, 2**32 - 1)
)


@dataclass(frozen=True)
class GeneratedWav:
    """A generated upload and the fields it was drawn from."""

    data: bytes = field(repr=False)
    tag: int
    sub_format: int | None
    channels: int
    rate: int
    bits: int
    align: int
    declared: int
    data_start: int  # where the sample bytes begin, after the data chunk's header
    standard_guid: bool = True  # an extensible header's sub-format GUID ends as KSDATAFORMAT's do

    def expected_status(self) -> int:
        """What the service must answer: the oracle of what a usable WAV is (README: PCM 8-32 bit,
        float 32/64, A-law, mu-law; 1 to 8 channels; 8 to 192 kHz; whole frames of audio)."""
        if len(self.data) < 12:
            return 415  # not even RIFF....WAVE
        if len(self.data) < self.data_start:
            return 422  # cut before the data chunk's header ends
        codec = self.tag if self.sub_format is None else self.sub_format
        usable = (
            self.bits in {1: {8, 16, 24, 32}, 3: {32, 64}, 6: {8}, 7: {8}}.get(codec, set())
            and 1 <= self.channels <= 8
            and 8000 <= self.rate <= 192000
            and self.align == self.channels * self.bits // 8
            and self.standard_guid
        )
        held = len(self.data) - self.data_start
        size = held if self.declared == 0xFFFFFFFF else min(self.declared, held)
        return 201 if usable and size // self.align > 0 else 422


@st.composite
def wav_files(draw: st.DrawFn) -> GeneratedWav:
    """A WAV whose every header field, declared size and truncation point is drawn."""
    tag = draw(FORMAT_TAGS)
    channels = draw(st.integers(0, 10))
    rate = draw(RATES)
    bits = draw(st.sampled_from([0, 4, 8, 12, 16, 20, 24, 32, 64]))
    align = draw(st.one_of(st.just(channels * bits // 8), st.integers(0, 80)))
    sub_format, guid_tail = None, KSDATAFORMAT_TAIL
    if tag == 0xFFFE:
        sub_format = draw(st.sampled_from([1, 3, 0x55]))
        guid_tail = draw(st.sampled_from([KSDATAFORMAT_TAIL, bytes(14)]))
    data = bytes(range(256)) * draw(st.integers(0, 64))
    if (tag if sub_format is None else sub_format) == 3 and bits in (32, 64):
        # Float samples are sound, not bytes: NaN, infinities and values near the float maximum
        # make LAME abort, which the service answers 422 ("the audio could not be converted").
        count = len(data) * 8 // bits
        data = struct.pack(f"<{count}{'f' if bits == 32 else 'd'}", *(math.sin(i / 7) for i in range(count)))
    declared = draw(st.one_of(st.just(len(data)), st.just(0xFFFFFFFF), st.integers(0, 2**32 - 1)))
    wav = build_wav(tag, channels, rate, bits, align, sub_format, guid_tail, declared, data)
    fmt_end = wav.data_start - 8
    boundaries = [0, 4, 8, 12, 16, 20, fmt_end, wav.data_start, wav.data_start + 1, len(wav.data)]
    cut = draw(st.one_of(st.sampled_from(boundaries), st.integers(0, len(wav.data))))
    return replace(wav, data=wav.data[:cut])


def build_wav(
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    align: int,
    sub_format: int | None,
    guid_tail: bytes,
    declared: int,
    data: bytes,
) -> GeneratedWav:
    """A WAV of exactly these header fields and sample bytes (an extensible one when `sub_format`)."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * align) % 2**32, align, bits)
    if sub_format is not None:
        fmt += struct.pack("<HHIH", 22, bits, 3, sub_format) + guid_tail
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared) + data
    wav = b"RIFF" + struct.pack("<I", (4 + len(chunks)) % 2**32) + b"WAVE" + chunks
    standard = guid_tail == KSDATAFORMAT_TAIL
    return GeneratedWav(wav, tag, sub_format, channels, rate, bits, align, declared, 28 + len(fmt), standard)


def post_upload(base_url: str, form: tuple[bytes, str]) -> tuple[int, str]:
    """A blocking POST /records (hypothesis drives plain functions); the status and the body."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", "/records", body=form[0], headers={"Content-Type": form[1]})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
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
def test_every_wav_header_gets_the_status_it_must_and_leaves_nothing_behind(
    stack, uploader, database_url, wav
):
    upload_as_the_oracle_says(stack, uploader, database_url, wav)


@pytest.mark.parametrize(
    ("guid_tail", "detail"),
    [
        (KSDATAFORMAT_TAIL, None),
        (bytes(14), "the extensible fmt chunk names an unknown sub-format GUID"),
    ],
    ids=["standard-guid", "unknown-guid"],
)
def test_an_extensible_wav_is_converted_only_with_a_standard_sub_format_guid(
    stack, uploader, database_url, guid_tail, detail
):
    # One sample of 8-bit mono: the smallest audio there is. ffmpeg cannot decode a sub-format
    # whose GUID does not end as the standard ones do, so the service refuses it up front.
    wav = build_wav(0xFFFE, 1, 8000, 8, 1, 1, guid_tail, 1, b"\x80")
    answer = upload_as_the_oracle_says(stack, uploader, database_url, wav)
    assert detail is None or json.loads(answer)["detail"] == detail


def upload_as_the_oracle_says(stack, uploader, database_url, wav: GeneratedWav) -> str:
    """Upload `wav`, check it got the oracle's status and left exactly what that status means; the body."""
    server, media = stack
    rows_before = sql(database_url, "SELECT count(*) FROM records WHERE user_id = %s", (uploader["id"],))[0][
        0
    ]
    files_before = set(media.glob("*/*.mp3"))
    status, answer = post_upload(server.base_url, upload_form(uploader, wav.data))
    assert status == wav.expected_status(), (wav, len(wav.data), answer)
    rows_after = sql(database_url, "SELECT count(*) FROM records WHERE user_id = %s", (uploader["id"],))[0][0]
    new_files = set(media.glob("*/*.mp3")) - files_before
    assert (rows_after - rows_before, len(new_files)) == ((1, 1) if status == 201 else (0, 0))
    assert not scratch_files(media / ".tmp")
    assert not psutil.Process(server.process.pid).children(recursive=True)
    return answer
