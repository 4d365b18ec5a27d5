"""POST /records uploads a WAV and stores it as MP3; GET /record downloads it, DELETE /record deletes
it; GET /users/<id>/records lists a user's records."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import logging
import re
import uuid
from asyncio import Future
from typing import Any

from tornado import httputil
from tornado.web import HTTPError

from converters.mp3 import ConversionFailed, ConversionInterrupted, GaveWay
from converters.spool import Spool, UploadStopped
from converters.wav import InvalidWav, NotWav
from handlers.base import BaseHandler
from handlers.filenames import content_disposition, sanitize_filename
from handlers.multipart import MalformedForm, StreamingForm
from handlers.problems import RETRY_AFTER, ApiError, invalid
from handlers.static import StaticBaseHandler
from queries.records import delete_record, find_record, insert_record, list_user_records
from queries.users import check_token
from records.storage import StoredAudio, convert_into_store

log = logging.getLogger(__name__)

# Tornado's own cap sits well above ours, so that our 413 answers first even for chunked bodies.
TORNADO_CAP_FACTOR = 2
BEARER = re.compile(r"Bearer\s+(\S+)\s*$", re.IGNORECASE)
USER_ID = re.compile(r"[1-9][0-9]{0,17}")
WWW_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


def parse_user_id(raw: str | None, field: str = "user") -> int:
    """A user id from a form field or query argument; 422 when missing or not a positive integer
    written canonically (no sign, spaces or leading zeros)."""
    if raw is None or raw == "":
        raise invalid(field, "is required")
    if not USER_ID.fullmatch(raw):
        raise invalid(field, "must be a positive integer")
    return int(raw)


def bearer_token(handler: BaseHandler) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None (no header, another scheme)."""
    header = BEARER.match(handler.request.headers.get("Authorization", ""))
    return header.group(1) if header else None


async def authenticate(handler: BaseHandler, user_id: int, token: str) -> None:
    """Check that the token is the user's: 404 for an unknown user, 403 for another token."""
    check = await handler.run_db(check_token, user_id, token)
    if check == "unknown_user":
        raise ApiError(404, f"there is no user {user_id}")
    if check == "wrong_token":
        raise ApiError(403, "the token does not belong to this user")


def required_bearer_token(handler: BaseHandler) -> str:
    """The Bearer token a call needs; 401 (with WWW-Authenticate) without one."""
    token = bearer_token(handler)
    if token is None:
        raise ApiError(
            401, "send the user's token as Authorization: Bearer <token>", headers=WWW_AUTHENTICATE
        )
    return token


def download_url(handler: BaseHandler, record_id: str, user_id: int) -> str:
    """The link GET /record downloads a record from."""
    return f"{handler.public_base()}/record?id={record_id}&user={user_id}"


def storage_failed(error: OSError, what: str) -> ApiError:
    """The 503 for a failed disk operation: "storage is full" for ENOSPC and EDQUOT; the log has
    the specifics, the client never sees a path."""
    log.error("cannot store %s: %s", what, error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(503, "storage is full, try again later", headers=RETRY_AFTER)
    return ApiError(503, f"{what} cannot be stored right now", headers=RETRY_AFTER)


def stopped_before_conversion() -> ApiError:
    """The 503 for an upload whose client left before its conversion began."""
    return ApiError(503, "the upload stopped before its conversion began", headers=RETRY_AFTER)


class RecordUploadHandler(BaseHandler):
    """Streams the multipart body to a temporary file and converts it on the conversion pool. When
    the user and token come before the file (as form fields, or the token as a Bearer header), the
    upload is authenticated as soon as the file begins and the conversion follows the file while it
    arrives (giving its thread to queued conversions whenever it has to wait for the upload, and
    starting over once the body is in); otherwise the conversion starts once the whole body is in."""

    @property
    def max_body_bytes(self) -> int:
        """MAX_UPLOAD_BYTES: the whole multipart body, file and fields."""
        return self.config.max_upload_bytes

    def prepare(self) -> None:
        """Refuse early: too large, not multipart, or no conversion capacity."""
        self._form: StreamingForm | None = None
        self._reserved = False
        self._conversion: asyncio.Task[StoredAudio] | None = None
        self._job: concurrent.futures.Future[StoredAudio] | None = None
        self._claimed = False
        super().prepare()
        if self.request.method != "POST":
            raise HTTPError(405)  # before the body: it may be larger than anything but an upload
        connection: Any = self.request.connection
        connection.set_max_body_size(self.max_body_bytes * TORNADO_CAP_FACTOR + 2**20)
        connection.set_body_timeout(self.config.upload_timeout)
        # Whatever has arrived, up to a body piece at a time: the server reads other requests in
        # small pieces (server.ServiceHTTPServer), as this connection's next requests once answered.
        self._small_reads = connection.stream.read_chunk_size
        connection.stream.read_chunk_size = connection.params.chunk_size
        try:
            self._form = StreamingForm(
                self.request.headers.get("Content-Type", ""),
                "file",
                Spool(self.media.new_temp_path(".wav")),
                fields=("user", "token"),
            )
        except MalformedForm as error:
            raise ApiError(400, str(error)) from None
        if not self.conversions.try_reserve():
            raise ApiError(503, "conversion capacity is full, try again shortly", headers=RETRY_AFTER)
        self._reserved = True

    async def consume_body(self, chunk: bytes) -> None:
        """Parse the body as it arrives, on an I/O thread (the file part goes to disk); start the
        conversion as soon as the file begins after the credentials, if a conversion thread is free
        (else it starts once the body is in, and a queued conversion is always ready to run)."""
        form = self._form
        if form is None:
            return await super().consume_body(chunk)
        with self.busy():
            try:
                await asyncio.get_running_loop().run_in_executor(self.io_executor, form.feed, chunk)
            except MalformedForm as error:
                raise ApiError(400, str(error)) from None
            except OSError as error:
                raise storage_failed(error, "the upload") from None
            if self._conversion is None and form.spool.started and self.conversions.has_idle_thread():
                try:
                    user_id, token = self._credentials(form)
                except ApiError:
                    return  # not all in yet, or malformed: judged once the whole body is in
                await self._authenticate_and_convert(user_id, token, form.spool)

    async def post(self) -> None:
        """Authenticate (unless done already), convert, store, and answer with the download link."""
        try:
            await self._store_upload()
        except BaseException:
            await self.stop_work()
            raise

    async def stop_work(self) -> None:
        """Stop a conversion under way and wait until it has ended."""
        conversion = self._conversion
        if conversion is not None and not self._claimed:
            self._stop_conversion()
            await asyncio.wait({conversion})

    def _stop_conversion(self) -> None:
        """Take the conversion out of the queue, or abandon its input so that its ffmpeg is killed."""
        assert self._job is not None and self._form is not None
        if not self._job.cancel():
            self._form.spool.abandon()

    async def _store_upload(self) -> None:
        form = self._form
        if form is None or self._gone:  # it left while its body was read from the buffer: freed
            raise stopped_before_conversion()
        with self.busy():
            try:
                form.finish()
            except MalformedForm as error:
                raise ApiError(400, str(error)) from None
            user_id, token = self._credentials(form)
            if form.file_parts != 1:
                raise invalid("file", "is required" if form.file_parts == 0 else "send exactly one file")
            conversion = self._conversion or await self._authenticate_and_convert(user_id, token, form.spool)
            try:
                audio = await conversion
            except GaveWay:  # it stopped following the upload to free its thread; the file is all in now
                if self._gone:
                    return
                audio = await self._convert_later(form.spool)
            self._claimed = True
            if self._gone:  # nobody will ever get the link: keep nothing
                self.media.remove(audio.path)
                return
            try:
                await self.run_db(insert_record, audio, user_id, sanitize_filename(form.filename))
            except BaseException:
                self.media.remove(audio.path)
                raise
        url = download_url(self, str(audio.record_id), user_id)
        self.set_header("Location", url)
        self.write_json({"id": str(audio.record_id), "user": user_id, "url": url}, status=201)

    def _credentials(self, form: StreamingForm) -> tuple[int, str]:
        """The user id and token of the upload; 422 when one is missing, malformed or sent twice."""
        if form.repeated:
            raise invalid(min(form.repeated), "must be sent only once")
        user_id = parse_user_id(form.fields.get("user"))
        token = bearer_token(self) or form.fields.get("token")
        if not token:
            raise invalid("token", "is required (a form field, or Authorization: Bearer)")
        return user_id, token.strip()  # a blank token is sent, and is wrong (403)

    async def _authenticate_and_convert(
        self, user_id: int, token: str, spool: Spool
    ) -> asyncio.Task[StoredAudio]:
        """Check the credentials (404, 403), then hand the file to the conversion pool."""
        await authenticate(self, user_id, token)
        return self._convert_later(spool)

    def _convert_later(self, spool: Spool) -> asyncio.Task[StoredAudio]:
        if self._gone:  # the client left while its credentials were checked: nobody wants the MP3
            raise stopped_before_conversion()
        self._job = self.conversions.submit(
            functools.partial(
                convert_into_store, self.media, self.mp3_settings, spool, self.conversions.should_give_way
            )
        )
        self._conversion = asyncio.ensure_future(self._converted(self._job))
        return self._conversion

    async def _converted(self, job: concurrent.futures.Future[StoredAudio]) -> StoredAudio:
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

    def on_connection_close(self) -> None:
        """The client went away: stop its conversion at once (nobody will get the link). While the
        file still arrives, that waits for the write under way: `release` does it then."""
        conversion = getattr(self, "_conversion", None)
        if conversion is not None and not conversion.done() and not self._claimed:
            assert self._form is not None
            if self._form.spool.ended:
                self._stop_conversion()
        super().on_connection_close()

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        """Free the slot and delete the uploaded WAV before any answer leaves, whatever happened,
        so a client that has its answer never sees the upload's leftovers."""
        self._free_upload()
        small_reads: int | None = getattr(self, "_small_reads", None)  # None: refused before prepare
        if small_reads is not None:
            connection: Any = self.request.connection
            connection.stream.read_chunk_size = small_reads
        return super().finish(chunk)

    def release(self) -> None:
        """The same clean-up when the client went away, once no work on the upload is under way."""
        self._free_upload()
        super().release()

    @staticmethod
    def _made_an_mp3(conversion: asyncio.Task[StoredAudio]) -> bool:
        """Whether a finished conversion made an MP3."""
        return not conversion.cancelled() and conversion.exception() is None

    def _free_upload(self) -> None:
        conversion: asyncio.Task[StoredAudio] | None = getattr(self, "_conversion", None)
        if conversion is not None and not conversion.done():
            # The client went away: stop it, and free what it uses once it has ended.
            self._stop_conversion()
            conversion.add_done_callback(lambda _: self._free_upload())
            return
        self._conversion = None
        try:
            # An MP3 no request took: the request failed meanwhile.
            if conversion is not None and not self._claimed and self._made_an_mp3(conversion):
                self.media.remove(conversion.result().path)
        finally:
            if getattr(self, "_reserved", False):
                self._reserved = False
                self.conversions.release()
            form: StreamingForm | None = getattr(self, "_form", None)
            if form is not None:
                self._form = None
                form.close()
                with contextlib.suppress(FileNotFoundError):
                    form.spool.path.unlink()


class RecordDownloadHandler(StaticBaseHandler):
    """GET/HEAD /record?id=&user=: Tornado's static file serving (Range, 304, HEAD) for one record."""

    def initialize(self) -> None:  # type: ignore[override]
        """Serve from the media directory."""
        super().initialize(str(self.media.root))
        self._record: dict[str, Any] = {}

    async def get(self, include_body: bool = True) -> None:  # type: ignore[override]
        """Look the record up, then let StaticFileHandler send it."""
        record_id, user_id = self.record_and_user()
        record = await self.run_db(find_record, record_id, user_id)
        if record is None:
            raise ApiError(404, "there is no such record for this user")
        self._record = record
        self.set_etag_header()  # StaticFileHandler sets it too; a 304 needs no bytes read
        if include_body and not self.check_etag_header():
            # StaticFileHandler reads the file on the event loop: from memory that takes microseconds,
            # but an MP3 evicted from the page cache would stall every request while the disk answers.
            start, end = self.requested_range()
            await asyncio.get_running_loop().run_in_executor(
                self.io_executor, self.media.load_into_memory, record["path"], start, end
            )
        await super().get(record["path"], include_body)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        """StaticFileHandler's checks, with a plain 404 when the record's file is missing or is
        not a regular file: the log names the path, the client never does."""
        try:
            return super().validate_absolute_path(root, absolute_path)
        except HTTPError as error:
            log.error("record %s: cannot serve %s: %s", self._record["id"], absolute_path, error)
            raise ApiError(404, "this record's audio file is missing") from None

    def requested_range(self) -> tuple[int | None, int | None]:
        """The byte range the Range header asks for, as StaticFileHandler reads it; (None, None) for all."""
        header = self.request.headers.get("Range")
        return (httputil._parse_request_range(header) if header else None) or (None, None)

    async def head(self) -> None:  # type: ignore[override]
        """The headers of GET, without the body."""
        await self.get(include_body=False)

    def compute_etag(self) -> str:
        """The record id: the file never changes, so there is no need to hash it."""
        return f'"{self._record["id"]}"'

    def get_content_type(self) -> str:
        """Always MP3."""
        return "audio/mpeg"

    def set_extra_headers(self, path: str) -> None:
        """Download as a file named after the upload; immutable, so caching is safe."""
        self.set_header("Content-Disposition", content_disposition(self._record["original_name"]))
        self.set_header("Cache-Control", "private, max-age=31536000, immutable")

    def record_and_user(self) -> tuple[uuid.UUID, int]:
        """The `id` and `user` query parameters; 422 when one is missing or malformed."""
        try:
            record_id = uuid.UUID(self.query_text("id") or "")
        except ValueError:
            raise invalid("id", "must be a record UUID") from None
        return record_id, parse_user_id(self.query_text("user"))

    async def delete(self) -> None:
        """Delete the record (the user's Bearer token): its row, then its file; 204."""
        record_id, user_id = self.record_and_user()
        await authenticate(self, user_id, required_bearer_token(self))
        with self.busy():  # once the row is gone, the file goes too, even if the client does not wait
            path = await self.run_db(delete_record, record_id, user_id)
            if path is None:
                raise ApiError(404, "there is no such record for this user")
            try:
                await asyncio.get_running_loop().run_in_executor(self.io_executor, self.media.remove, path)
            except OSError as error:
                # The record is gone all the same; its file is an orphan, which the sweep removes.
                log.error("cannot delete the file of a deleted record: %s", error)
        self.set_status(204)
        self.finish()


class UserRecordsHandler(BaseHandler):
    """GET /users/<id>/records: the user's records, newest first, with their download links."""

    async def get(self, user_id: str) -> None:
        """One page of the user's records (the user's Bearer token)."""
        limit, offset = self.page_query()
        token = required_bearer_token(self)
        if len(user_id) > 18:  # as GET /users/<id>: no such user
            raise ApiError(404, f"there is no user {user_id}")
        await authenticate(self, int(user_id), token)
        items, total = await self.run_db(list_user_records, int(user_id), limit, offset)
        for item in items:
            item["url"] = download_url(self, item["id"], int(user_id))
        self.write_json({"items": items, "total": total})
