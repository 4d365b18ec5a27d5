"""Where finished MP3s live: one small interface, a local directory or an S3-compatible bucket.

Every method blocks (disk or network): handlers call them on the I/O executor. Keys look like
`<2 hex>/<record uuid>.mp3`; the database row holds the key, and a row is inserted only after
`put` returned, so a row never points at a missing object. An object without a row (a crash
between `put` and the insert, or a delete that removed the row first) is an orphan, which
`sweep_orphans` deletes once it is older than a grace period, so that another instance's upload
that has just been stored and is about to get its row is never touched."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)

# Downloads are read and sent in pieces of this size: large enough that the per-piece overhead
# (an executor hop, a write) is small, small enough that a download never holds much memory.
CHUNK_BYTES = 256 * 1024
SWEEP_BATCH = 500


class StorageFull(OSError):
    """The store has no room (ENOSPC, EDQUOT, a quota): the service's problem, answered with 503."""


class StorageUnavailable(OSError):
    """The store cannot be reached or failed: answered with 503, nothing is committed."""


class MediaStore(Protocol):
    """A place for finished MP3s, shared by every instance of the service."""

    def put(self, scratch: Path, key: str) -> None:
        """Store the finished file `scratch` under `key`, durably before returning; the scratch file
        is consumed (moved or deleted) either way. Raises StorageFull or StorageUnavailable."""
        ...

    def size(self, key: str) -> int | None:
        """The stored object's size in bytes, or None when there is no such object."""
        ...

    def read(self, key: str, start: int, end: int) -> Generator[bytes, None, None]:
        """The bytes from `start` up to, not including, `end`, in pieces of at most CHUNK_BYTES;
        closing the generator early lets go of the file or connection."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; nothing happens when it is absent."""
        ...

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Every key stored more than `seconds` ago."""
        ...


def open_store(settings: Settings) -> MediaStore:
    """The store MEDIA_STORE names: the media directory (the default) or an S3 bucket."""
    if settings.media_store == "s3":
        from storage.s3 import S3Store  # imported here: boto3 is needed only for S3

        return S3Store.from_settings(settings)
    from storage.local import LocalStore

    return LocalStore(settings.media_root)


def sweep_orphans(store: MediaStore, with_rows: Callable[[list[str]], set[str]], grace: float) -> int:
    """Delete objects older than `grace` seconds that no row points at (`with_rows` tells which of
    the keys have one); returns how many were deleted."""
    removed = 0
    for keys in _batches(store.keys_older_than(grace), SWEEP_BATCH):
        for key in set(keys) - with_rows(keys):
            store.delete(key)
            removed += 1
    if removed:
        log.info("removed %d stored MP3s that no record points at", removed)
    return removed


def _batches(keys: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
