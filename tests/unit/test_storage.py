"""storage/: the media directory's files and keys, and the sweep's decision about orphans."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from storage import CHUNK_BYTES, SWEEP_BATCH, StorageFull, open_store, sweep_orphans
from storage.local import LocalStore
from storage.s3 import S3Store


def new_key() -> str:
    name = uuid.uuid4()
    return f"{name.hex[:2]}/{name}.mp3"


def stored(store: LocalStore, tmp_path: Path, data: bytes = b"ID3 mp3 bytes", age: float = 0) -> str:
    """Put a file in the store, `age` seconds old; its key."""
    scratch = tmp_path / f"{uuid.uuid4()}.part"
    scratch.write_bytes(data)
    key = new_key()
    store.put(scratch, key)
    if age:
        then = time.time() - age
        os.utime(store.root / key, (then, then))
    return key


def test_put_moves_the_file_into_its_folder(tmp_path):
    store = LocalStore(tmp_path / "media")
    key = stored(store, tmp_path)
    assert (tmp_path / "media" / key).read_bytes() == b"ID3 mp3 bytes"
    assert list(tmp_path.glob("*.part")) == []
    assert store.size(key) == 13
    assert store.root == (tmp_path / "media").resolve()


def test_a_failed_put_leaves_neither_file(tmp_path):
    store = LocalStore(tmp_path / "media")
    key = new_key()
    (store.root / key).mkdir(parents=True)  # a folder where the file should go: the rename fails
    (store.root / key / "x").touch()
    scratch = tmp_path / "a.part"
    scratch.write_bytes(b"x")
    with pytest.raises(OSError):
        store.put(scratch, key)
    assert not scratch.exists()


@pytest.mark.parametrize(
    "key", ["../evil.mp3", "ab/not-a-uuid.mp3", "AB/" + "a" * 36 + ".mp3", "ab/x.mp3/../y"]
)
def test_only_keys_of_the_services_shape_are_used(tmp_path, key):
    store = LocalStore(tmp_path / "media")
    assert store.size(key) is None
    with pytest.raises(ValueError, match=r"^not a media key: "):
        store.delete(key)


def test_size_is_none_for_what_is_missing_or_not_a_file(tmp_path):
    store = LocalStore(tmp_path / "media")
    key = new_key()
    assert store.size(key) is None
    (store.root / key).mkdir(parents=True)
    assert store.size(key) is None


def test_read_gives_exactly_the_range_in_pieces_of_at_most_chunk_bytes(tmp_path):
    store = LocalStore(tmp_path / "media")
    data = os.urandom(CHUNK_BYTES * 2 + 100)
    key = stored(store, tmp_path, data)
    pieces = list(store.read(key, 10, len(data)))
    assert b"".join(pieces) == data[10:]
    assert [len(piece) for piece in pieces] == [CHUNK_BYTES, CHUNK_BYTES, 90]
    assert b"".join(store.read(key, 5, 6)) == data[5:6]
    assert list(store.read(key, 7, 7)) == []
    assert b"".join(store.read(key, len(data) - 3, len(data) + 50)) == data[-3:]  # the file is shorter


def test_delete_is_idempotent(tmp_path):
    store = LocalStore(tmp_path / "media")
    key = stored(store, tmp_path)
    store.delete(key)
    store.delete(key)
    assert store.size(key) is None


def test_keys_older_than_lists_only_old_files_of_the_services_shape(tmp_path):
    store = LocalStore(tmp_path / "media")
    old, new = stored(store, tmp_path, age=120), stored(store, tmp_path)
    (store.root / old[:2] / "stray.mp3").touch()
    os.utime(store.root / old[:2] / "stray.mp3", (0, 0))
    assert list(store.keys_older_than(60)) == [old]
    assert sorted(store.keys_older_than(-60)) == sorted([old, new])


def test_the_sweep_deletes_old_objects_without_a_row(tmp_path, caplog):
    store = LocalStore(tmp_path / "media")
    kept, orphan, young = (
        stored(store, tmp_path, age=120),
        stored(store, tmp_path, age=120),
        stored(store, tmp_path),
    )
    asked: list[list[str]] = []

    def with_rows(keys: list[str]) -> set[str]:
        asked.append(keys)
        return {kept} & set(keys)

    with caplog.at_level(logging.INFO, logger="storage"):
        assert sweep_orphans(store, with_rows, grace=60) == 1
    assert (store.size(kept), store.size(orphan), store.size(young)) == (13, None, 13)
    assert sorted(asked[0]) == sorted([kept, orphan])
    assert caplog.messages == ["removed 1 stored MP3s that no record points at"]
    caplog.clear()
    assert sweep_orphans(store, with_rows, grace=60) == 0
    assert caplog.messages == []


def test_the_sweep_asks_about_keys_in_batches(tmp_path):
    store = LocalStore(tmp_path / "media")
    keys = {new_key() for _ in range(SWEEP_BATCH + 1)}
    for key in keys:  # written in place: a put's fsyncs would make this slow
        (store.root / key).parent.mkdir(exist_ok=True)
        (store.root / key).touch()
        os.utime(store.root / key, (0, 0))
    sizes: list[int] = []

    def with_rows(batch: list[str]) -> set[str]:
        sizes.append(len(batch))
        return set(batch)

    assert sweep_orphans(store, with_rows, grace=60) == 0
    assert sorted(sizes) == [1, SWEEP_BATCH]
    assert all(store.size(key) == 0 for key in keys)


def test_the_media_directory_is_the_default_store(tmp_path):
    store = open_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStore) and store.root == (tmp_path / "media").resolve()
    assert (tmp_path / "media").is_dir()


def test_stores_on_one_new_nested_folder_share_it(tmp_path):
    first = LocalStore(tmp_path / "a" / "b" / "media")
    second = LocalStore(tmp_path / "a" / "b" / "media")
    key = stored(first, tmp_path)
    assert second.size(key) == 13


def test_an_executable_file_is_still_a_regular_file(tmp_path):
    store = LocalStore(tmp_path / "media")
    key = stored(store, tmp_path)
    (store.root / key).chmod(0o755)
    assert store.size(key) == 13


def test_a_file_gone_while_listing_is_skipped(tmp_path):
    store = LocalStore(tmp_path / "media")
    folder = store.root / "ab"
    folder.mkdir()
    keys = set()
    for _ in range(20):
        key = f"ab/{uuid.uuid4()}.mp3"
        (store.root / key).touch()
        os.utime(store.root / key, (0, 0))
        keys.add(key)
    (folder / f"{uuid.uuid4()}.mp3").symlink_to(folder / "gone")  # stat() finds no file behind it
    assert set(store.keys_older_than(60)) == keys


def test_every_orphan_is_counted(tmp_path, caplog):
    store = LocalStore(tmp_path / "media")
    for _ in range(3):
        stored(store, tmp_path, age=120)
    with caplog.at_level(logging.INFO, logger="storage"):
        assert sweep_orphans(store, lambda keys: set(), grace=60) == 3
    assert caplog.messages == ["removed 3 stored MP3s that no record points at"]


def test_a_bucket_is_the_store_media_store_s3_names(tmp_path):
    settings = Settings(
        data_dir=tmp_path, media_store="s3", s3_bucket="quiz-media", s3_endpoint_url="http://127.0.0.1:9"
    )
    store = open_store(settings)
    assert isinstance(store, S3Store) and store.bucket == "quiz-media"


@pytest.fixture
def three_inodes(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs with room for three files or folders (its root counts), unmounted afterwards."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux (CI runs the tests as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=3", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_media_directory_is_storage_full_and_keeps_no_file(three_inodes):
    store = LocalStore(three_inodes / "media")
    scratch = store.root / "upload.part"  # on the same file system, as scratch space is
    scratch.write_bytes(b"mp3")  # the last inode: the key's folder cannot be made
    with pytest.raises(StorageFull) as full:
        store.put(scratch, new_key())
    assert (full.value.errno, full.value.strerror) == (errno.ENOSPC, "the media directory is full")
    assert list(store.root.iterdir()) == []
