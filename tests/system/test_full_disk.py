"""A full disk under MEDIA_DIR: a real tmpfs of a few MiB, mounted by the test (as root, as CI runs),
filled so that the upload finds only so much room, with the real service, ffmpeg and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from config import Settings
from tests.audio import decode_mp3, make_wav, upload_form
from tests.support import Reply, assert_problem, call, post_form, sql

KIB = 1024
DISK_BYTES = 8 * 1024 * KIB
WAV = make_wav(8.0, 44100, 2, 2)  # 1.4 MB; its MP3 at 192 kbit/s is 189 KiB
# Room left on the disk beyond the WAV's own pages: too little even for the WAV, then from a few
# KiB to more than the MP3 needs.
HEADROOM_KIB = [-64, 8, 40, 96, 160, 188, 192, 196, 200, 256, 512]
SURE_FAIL_KIB, SURE_FIT_KIB = 160, 256  # at or below: no room for the MP3; at or above: room


def mount_tmpfs(directory: Path, options: str) -> None:
    """Mount a tmpfs on `directory`, or skip the test where that cannot be done."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux (CI runs the tests as root)")
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {mounted.stderr}")


@pytest.fixture
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of its own (with at most `inodes` files and folders, when the test is
    parametrized so), unmounted after the test."""
    disk = tmp_path / "disk"
    inodes = getattr(request, "param", None)
    mount_tmpfs(disk, f"size={DISK_BYTES}" + (f",nr_inodes={inodes}" if inodes else ""))
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def settings(settings: Settings, small_disk: Path) -> Settings:
    """The service with MEDIA_DIR on the small disk."""
    return replace(settings, media_dir=small_disk / "media")


@pytest.fixture
def user(base_url, db, io_loop) -> dict[str, object]:
    return io_loop.run_sync(lambda: call(base_url, "POST", "/users", {"name": "uploader"})).json


def free_bytes(disk: Path) -> int:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


def pages(size: int) -> int:
    """The bytes a file of `size` bytes takes on tmpfs: whole pages."""
    return -(-size // 4096) * 4096


def leave_free(disk: Path, room: int) -> Path:
    """Fill the disk with a file of zeros (tmpfs keeps no holes then) until `room` bytes are free."""
    filler = disk / "filler"
    with filler.open("ab") as file:
        file.write(bytes(free_bytes(disk) - room))
    assert free_bytes(disk) == room
    return filler


def media_files(settings: Settings) -> list[Path]:
    """Every file in MEDIA_DIR, temporary ones included (not the lock)."""
    return [path for path in settings.media_root.rglob("*") if path.is_file() and path.suffix != ".lock"]


def assert_storage_full(reply: Reply, settings: Settings, db: str) -> None:
    """A 503 that says storage is full, with Retry-After, and nothing left behind."""
    problem = assert_problem(reply, 503)
    assert "storage is full" in problem["detail"]
    assert int(reply.headers["Retry-After"]) > 0
    assert sql(db, "SELECT count(*) FROM records") == [(0,)]
    assert media_files(settings) == []


async def download(reply: Reply, tmp_path: Path) -> bytes:
    """The MP3 behind a 201, checked against its row and its file; it decodes to the WAV's length."""
    assert reply.status == 201, reply.body
    mp3 = (await call(reply.json["url"], "GET", "")).body
    path = tmp_path / "download.mp3"
    path.write_bytes(mp3)
    assert abs(decode_mp3(path).duration_seconds - 8.0) < 0.1
    return mp3


def fields_last(form: tuple[bytes, str]) -> tuple[bytes, str]:
    """The same upload with the user and token after the file: ffmpeg then reads the whole file
    itself, where with them first it follows the upload through a pipe."""
    body, content_type = form
    boundary = content_type.split("boundary=")[1].encode()
    file_part = body.index(b'name="file"')
    first = body.rindex(b"--" + boundary, 0, file_part)
    end = body.rindex(b"--" + boundary + b"--")
    return body[first:end] + body[:first] + body[end:], content_type


@pytest.mark.gen_test(timeout=240)
@pytest.mark.parametrize("order", ["fields first", "fields last"])
async def test_an_upload_on_a_full_disk_is_complete_or_refused_with_503(
    base_url, db, user, settings, small_disk, tmp_path, order
):
    form = upload_form(user, WAV) if order == "fields first" else fields_last(upload_form(user, WAV))
    outcomes: dict[int, bytes | None] = {}
    for headroom in HEADROOM_KIB:
        filler = leave_free(small_disk, pages(len(WAV)) + headroom * KIB)
        reply = await post_form(base_url, form)
        filler.unlink()
        if reply.status == 201:
            mp3 = await download(reply, tmp_path)
            outcomes[headroom] = mp3
            sql(db, "DELETE FROM records")
            for path in media_files(settings):
                path.unlink()
        else:
            assert_storage_full(reply, settings, db)
            outcomes[headroom] = None
    # With room, the same upload works at once, and every MP3 stored on the way is that one.
    reference = await download(await post_form(base_url, form), tmp_path)
    assert all(mp3 in (None, reference) for mp3 in outcomes.values()), {
        headroom: len(mp3) for headroom, mp3 in outcomes.items() if mp3
    }
    assert all(outcomes[headroom] is None for headroom in HEADROOM_KIB if headroom <= SURE_FAIL_KIB)
    assert all(outcomes[headroom] is not None for headroom in HEADROOM_KIB if headroom >= SURE_FIT_KIB)


def leave_free_inodes(disk: Path, room: int) -> None:
    """Create empty files (after deleting those of a previous call) until only `room` more files or
    folders fit on the disk."""
    for filler in disk.glob("filler-*"):
        filler.unlink()
    for number in range(os.statvfs(disk).f_favail - room):
        (disk / f"filler-{number}").touch()
    assert os.statvfs(disk).f_favail == room


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("small_disk", [64], indirect=True)
async def test_files_and_folders_that_cannot_be_created_are_a_full_disk_too(
    base_url, db, user, settings, small_disk, tmp_path
):
    # An upload creates three: its WAV, its MP3 under a temporary name, the MP3's folder; with one
    # fewer, it fails at the WAV, at ffmpeg's output or at the folder, never blaming the WAV.
    form = upload_form(user, WAV)
    for room in (0, 1, 2):
        leave_free_inodes(small_disk, room)
        assert_storage_full(await post_form(base_url, form), settings, db)
    leave_free_inodes(small_disk, 3)
    await download(await post_form(base_url, form), tmp_path)
