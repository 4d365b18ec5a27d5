"""The default media store: MP3 files in a directory (a Docker volume, or one shared by instances)."""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Generator, Iterator
from pathlib import Path

from storage import CHUNK_BYTES, StorageFull

FULL = (errno.ENOSPC, errno.EDQUOT)
KEY = re.compile(r"[0-9a-f]{2}/[0-9a-f-]{36}\.mp3")


class LocalStore:
    """Files at `root/<key>`; a put is a rename from scratch space on the same file system, so a
    file appears whole or not at all, and is fsynced with its folder before the row is written."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, scratch: Path, key: str) -> None:
        """Make `scratch` durable and rename it to `key`; on failure neither file is left."""
        final = self._path(key)
        try:
            with scratch.open("rb+") as handle:
                os.fsync(handle.fileno())
            if not final.parent.exists():
                final.parent.mkdir(exist_ok=True)
                _fsync(self.root)  # the new folder must survive a power loss with its file
            os.replace(scratch, final)
            try:
                _fsync(final.parent)
            except OSError:
                final.unlink(missing_ok=True)  # no row will point at it: do not keep it
                raise
        except OSError as error:
            scratch.unlink(missing_ok=True)
            if error.errno in FULL:
                raise StorageFull(error.errno, "the media directory is full") from error
            raise

    def size(self, key: str) -> int | None:
        """The file's size, or None when it is missing (or not a regular file)."""
        try:
            stat = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return stat.st_size if stat.st_mode & 0o170000 == 0o100000 else None

    def read(self, key: str, start: int, end: int) -> Generator[bytes, None, None]:
        """The file's bytes from `start` to `end`, a piece at a time."""
        with self._path(key).open("rb", buffering=0) as file:
            file.seek(start)
            while start < end:
                piece = file.read(min(CHUNK_BYTES, end - start))
                if not piece:
                    return
                start += len(piece)
                yield piece

    def delete(self, key: str) -> None:
        """Remove the file if it is there."""
        self._path(key).unlink(missing_ok=True)

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Keys of files last changed more than `seconds` ago."""
        cutoff = time.time() - seconds
        for path in self.root.glob("??/*.mp3"):
            key = path.relative_to(self.root).as_posix()
            try:
                if KEY.fullmatch(key) and path.stat().st_mtime < cutoff:
                    yield key
            except FileNotFoundError:
                continue  # deleted meanwhile

    def _path(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise ValueError(f"not a media key: {key!r}")
        return self.root / key


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
