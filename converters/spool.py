"""An upload's file as it is written: a conversion may read it while the rest is still arriving."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from converters.mp3 import FileProgress


class UploadStopped(Exception):
    """The upload ended before its file was complete (client gone, body refused): nothing to convert."""


class Spool:
    """The upload's file part on disk. The upload writes it (`open`, `write`, then `complete`, or
    `abandon` at any time; an abandon from another thread waits for a write under way) while a
    reader on another thread follows it with `wait_for`, which blocks until more bytes are in the
    file and raises UploadStopped once it is abandoned, so a conversion can run while the upload is
    still arriving."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None
        self._written = 0
        self._complete = False
        self._abandoned = False
        self._changed = threading.Condition()

    @property
    def started(self) -> bool:
        """Whether the file part has begun."""
        return self._descriptor is not None or self._complete

    @property
    def ended(self) -> bool:
        """Whether the file part has ended (nothing more will be written)."""
        return self._complete

    def open(self) -> None:
        """Create the file: the file part begins."""
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(self, data: memoryview) -> None:
        """Append bytes (blocking); a reader sees them once they are all in the file."""
        with self._changed:  # so that an abandon never closes the file under a write
            if self._descriptor is None:
                return
            size = len(data)
            while data:
                data = data[os.write(self._descriptor, data) :]
            self._written += size
            self._changed.notify_all()

    def complete(self) -> None:
        """The file part ended: readers get its last bytes, then the end."""
        with self._changed:
            self._close()
            self._complete = True
            self._changed.notify_all()

    def abandon(self) -> None:
        """The upload stopped, or its result is no longer wanted: readers raise UploadStopped."""
        with self._changed:
            self._close()
            self._abandoned = True
            self._changed.notify_all()

    def wait_for(self, size: int, timeout: float | None = None) -> FileProgress:
        """Block until `size` bytes are in the file, it is complete, or `timeout` seconds pass; how
        far it is. Raises UploadStopped once it is abandoned."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._abandoned or self._complete or self._written >= size, timeout
            )
            if self._abandoned:
                raise UploadStopped("the upload stopped before its file was complete")
            return FileProgress(self._written, self._complete)

    def _close(self) -> None:  # under the lock: complete and abandon may come from different threads
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
