"""One upload's life in one place: its conversion slot, its body parsed into a spool in this
instance's scratch space, its conversion (following the file while it arrives, or once it is in),
and the clean-up that frees all of it, whatever happened."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import logging
from concurrent.futures import Executor
from pathlib import Path

from converters.mp3 import (
    ConversionFailed,
    ConversionInterrupted,
    Converted,
    GaveWay,
    Mp3Settings,
    convert_upload,
)
from converters.pool import ConversionPool
from converters.spool import Spool, UploadStopped
from converters.wav import InvalidWav, NotWav
from handlers.multipart import MalformedForm, StreamingForm
from handlers.problems import RETRY_AFTER, ApiError, invalid
from storage import StorageFull
from storage.scratch import Scratch

log = logging.getLogger(__name__)

FIELDS = ("user", "token")


def storage_failed(error: OSError, what: str) -> ApiError:
    """The 503 for a failed write: "storage is full" for ENOSPC, EDQUOT or a full store; the log has
    the specifics, the client never sees a path."""
    log.error("cannot store %s: %s", what, error)
    if isinstance(error, StorageFull) or error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(503, "storage is full, try again later", headers=RETRY_AFTER)
    return ApiError(503, f"{what} cannot be stored right now", headers=RETRY_AFTER)


def stopped_before_conversion() -> ApiError:
    """The 503 for an upload whose client left before its conversion began."""
    return ApiError(503, "the upload stopped before its conversion began", headers=RETRY_AFTER)


class Upload:
    """Reserves a conversion slot (503 when there is none) and parses the multipart body as it is
    fed (400 when it is not multipart). `close` frees everything; it is idempotent, and waits for
    the write and the conversion under way, so it may be called from anywhere at any time."""

    def __init__(
        self, content_type: str, pool: ConversionPool, scratch: Scratch, io: Executor, mp3: Mp3Settings
    ) -> None:
        try:
            self.form = StreamingForm(content_type, "file", Spool(scratch.new_path(".wav")), FIELDS)
        except MalformedForm as error:
            raise ApiError(400, str(error)) from None
        if not pool.try_reserve():
            raise ApiError(503, "conversion capacity is full, try again shortly", headers=RETRY_AFTER)
        self.mp3_path: Path = scratch.new_path(".mp3")
        self.stopped = False  # the client left: nobody will get a link
        self._pool = pool
        self._io = io
        self._mp3 = mp3
        self._feeding: asyncio.Future[None] | None = None
        self._job: concurrent.futures.Future[Converted] | None = None
        self._conversion: asyncio.Task[Converted] | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def converting(self) -> bool:
        """Whether the conversion has been started."""
        return self._conversion is not None

    def can_convert_now(self) -> bool:
        """Whether a conversion could follow the file part now: it has begun and a thread is idle
        (else it waits for the whole body, so that queued work is always ready to run)."""
        return self._conversion is None and self.form.spool.started and self._pool.has_idle_thread()

    async def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body on an I/O thread (the file part goes to scratch)."""
        self._feeding = asyncio.get_running_loop().run_in_executor(self._io, self.form.feed, chunk)
        try:
            await self._feeding
        except MalformedForm as error:
            raise ApiError(400, str(error)) from None
        except OSError as error:
            raise storage_failed(error, "the upload") from None

    def finish_body(self) -> None:
        """The body is in: 400 when it is malformed, 422 without exactly one file."""
        try:
            self.form.finish()
        except MalformedForm as error:
            raise ApiError(400, str(error)) from None
        if self.form.file_parts != 1:
            raise invalid("file", "is required" if self.form.file_parts == 0 else "send exactly one file")

    def convert(self) -> None:
        """Queue the conversion; it follows the file part while that still arrives."""
        if self.stopped:  # the client left while its credentials were checked: nobody wants the MP3
            raise stopped_before_conversion()
        work = functools.partial(
            convert_upload, self._mp3, self.form.spool, self.mp3_path, self._pool.should_give_way
        )
        self._job = self._pool.submit(work)
        self._conversion = asyncio.ensure_future(self._converted(self._job))

    async def converted(self) -> Converted:
        """The finished MP3 at `mp3_path`, started over once the body is in if the conversion gave
        its thread to queued work meanwhile."""
        assert self._conversion is not None
        try:
            return await self._conversion
        except GaveWay:
            self.convert()
            return await self._conversion

    def stop(self) -> None:
        """The client left: take the conversion out of the queue, or kill its ffmpeg."""
        self.stopped = True
        if self._job is not None and not self._job.cancel() and self.form.spool.ended:
            self.form.spool.abandon()

    async def close(self) -> None:
        """Stop what still runs, wait for it, free the slot and delete the scratch files."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._feeding is not None:
            await asyncio.wait({self._feeding})  # a write under way ends before its file goes
        conversion = self._conversion
        if conversion is not None and not conversion.done():
            if self._job is not None and not self._job.cancel():
                self.form.spool.abandon()
            await asyncio.wait({conversion})
        self.form.close()
        await asyncio.get_running_loop().run_in_executor(self._io, self._delete_scratch)
        self._pool.release()

    def _delete_scratch(self) -> None:
        self.form.spool.path.unlink(missing_ok=True)
        self.mp3_path.unlink(missing_ok=True)

    async def _converted(self, job: concurrent.futures.Future[Converted]) -> Converted:
        """The conversion's outcome, its failures as the problems a client gets."""
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this task itself is being cancelled
                raise
            raise stopped_before_conversion() from None
        except NotWav as error:
            raise ApiError(415, f"{error}; upload a WAV file") from None
        except (InvalidWav, ConversionFailed) as error:
            raise ApiError(422, str(error)) from None
        except (ConversionInterrupted, UploadStopped) as error:
            raise ApiError(503, str(error), headers=RETRY_AFTER) from None
        except OSError as error:
            raise storage_failed(error, "the record") from None
