"""Audio for the conversion scenarios: WAVs made by ffmpeg, raw ffmpeg conversions to compare with,
and uploads (streamed from the file) and downloads (streamed to a file) through the service."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.client import Connection
from bench.processes import HOST, die_with_parent
from converters.ffmpeg import find_ffmpeg
from converters.scheduling import schedule_as_batch_work

MP3_BITRATE = "192k"
FFMPEG_TIMEOUT_SECONDS = 600
# The ffmpeg the image ships, copied out of it by `make image-ffmpeg` (which `make bench` runs where a
# Docker engine answers): a static binary, so it runs here as it runs in the container.
IMAGE_FFMPEG = Path(sys.prefix) / "image-ffmpeg"


def measured_ffmpeg() -> tuple[str, str]:
    """The ffmpeg whose conversions the bench measures (the service's and the raw ones), and where it
    comes from: FFMPEG_BINARY if set, else the image's, else the one the service finds on this machine."""
    configured = os.environ.get("FFMPEG_BINARY")
    if configured:
        return find_ffmpeg(configured), "FFMPEG_BINARY"
    if IMAGE_FFMPEG.is_file():
        return str(IMAGE_FFMPEG), "the image's, copied out by `make image-ffmpeg`"
    return find_ffmpeg(None), "this machine's, NOT the image's (no Docker engine to copy it from)"


def ffmpeg_version(ffmpeg: str) -> str:
    """The first line of `ffmpeg -version`."""
    result = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, timeout=30)
    return (result.stdout.splitlines() or ["?"])[0]


def make_wav(ffmpeg: str, seconds: float, path: Path) -> Path:
    """A 44.1 kHz stereo 16-bit sine WAV of `seconds`, made by ffmpeg."""
    source = f"sine=frequency=440:sample_rate=44100:duration={seconds:g}"
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source]
    command += ["-ac", "2", "-c:a", "pcm_s16le", "-y", str(path)]
    subprocess.run(command, check=True, timeout=FFMPEG_TIMEOUT_SECONDS)
    return path


async def raw_convert(ffmpeg: str, source: Path, target: Path, as_batch_work: bool = False) -> float:
    """`ffmpeg -i in.wav -codec:a libmp3lame -b:a 192k out.mp3`; returns its wall time in seconds.
    `as_batch_work`: scheduled as the service schedules its ffmpeg (SCHED_BATCH)."""
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source)]
    command += ["-codec:a", "libmp3lame", "-b:a", MP3_BITRATE, str(target)]
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent_as_batch if as_batch_work else die_with_parent,
    )
    try:
        code = await asyncio.wait_for(process.wait(), FFMPEG_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if code != 0:
        raise RuntimeError(f"ffmpeg exited with {code} converting {source}")
    return time.perf_counter() - start


def _die_with_parent_as_batch() -> None:
    die_with_parent()
    schedule_as_batch_work()


@dataclass(frozen=True)
class User:
    """The user uploads are made as."""

    id: int
    token: str


async def create_user(port: int) -> User:
    """POST /users {"name": "bench"}."""
    connection = Connection(HOST, port)
    try:
        response = await connection.request(
            "POST", "/users", b'{"name": "bench"}', {"Content-Type": "application/json"}
        )
    finally:
        await connection.close()
    if response.status != 201:
        raise RuntimeError(f"POST /users answered {response.status}: {response.body[:300]!r}")
    body = json.loads(response.body)
    return User(int(body["id"]), str(body["token"]))


def upload_body(user_id: int, token: str, wav: Path) -> tuple[tuple[bytes, Path, bytes], dict[str, str]]:
    """A POST /records multipart body (the WAV streamed from disk between its head and tail) and
    its headers."""
    boundary = uuid.uuid4().hex
    fields = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("user", str(user_id)), ("token", token))
    )
    head = (
        f'{fields}--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{wav.name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    tail = f"\r\n--{boundary}--\r\n"
    return (head.encode(), wav, tail.encode()), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def upload(port: int, user: User, wav: Path, timeout: float) -> dict[str, Any]:
    """POST /records as multipart/form-data, the file part sent from disk; returns the 201 body."""
    body, headers = upload_body(user.id, user.token, wav)
    connection = Connection(HOST, port)
    try:
        response = await asyncio.wait_for(connection.request("POST", "/records", body, headers), timeout)
    finally:
        await connection.close()
    if response.status != 201:
        raise RuntimeError(f"POST /records answered {response.status}: {response.body[:300]!r}")
    record: dict[str, Any] = json.loads(response.body)
    return record


def url_target(url: str) -> str:
    """The path and query of a URL."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def download(port: int, target: str, destination: Path, timeout: float) -> int:
    """GET `target` into `destination`, streamed; returns the byte count."""
    connection = Connection(HOST, port)
    try:
        with destination.open("wb") as sink:
            response = await asyncio.wait_for(
                connection.request("GET", target, keep_body=False, sink=sink), timeout
            )
    finally:
        await connection.close()
    if response.status != 200 or response.size == 0:
        raise RuntimeError(f"GET {target} answered {response.status} with {response.size} bytes")
    return response.size
