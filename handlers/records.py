"""POST /records uploads a WAV and stores it as MP3; GET /record downloads it, DELETE /record deletes
it; GET /users/<id>/records lists a user's records."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import uuid
from datetime import datetime
from typing import Any

from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.web import HTTPError

from handlers.base import BaseHandler
from handlers.filenames import content_disposition, sanitize_filename
from handlers.problems import RETRY_AFTER, ApiError, invalid
from handlers.upload import Upload, stopped_before_conversion, storage_failed
from queries.records import delete_record, find_record, insert_record, list_user_records
from queries.users import check_token
from storage import StorageFull, StorageUnavailable

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


def new_key(record_id: uuid.UUID) -> str:
    """Where a record's MP3 is kept in the store: spread over 256 folders by its id."""
    return f"{record_id.hex[:2]}/{record_id}.mp3"


def audio_missing(key: str) -> ApiError:
    """The 404 for a row whose MP3 the store does not hold; the log says which."""
    log.error("a record's MP3 %s is missing from the store", key)
    return ApiError(404, "this record's audio file is missing")


def store_unreadable(error: OSError) -> ApiError:
    """The 503 for a download the media store cannot serve now; the log has the specifics."""
    log.error("cannot read a record from the media store: %s", error)
    return ApiError(503, "the record cannot be read right now", headers=RETRY_AFTER)


class RecordUploadHandler(BaseHandler):
    """POST /records: the body streams into an Upload (handlers/upload.py), which owns everything
    the upload holds. When the user and token come before the file (as form fields, or the token as
    a Bearer header), the upload is authenticated as soon as the file begins and the conversion
    follows the file while it arrives; otherwise the conversion starts once the whole body is in."""

    upload: Upload | None = None

    @property
    def max_body_bytes(self) -> int:
        """MAX_UPLOAD_BYTES: the whole multipart body, file and fields."""
        return self.config.max_upload_bytes

    def prepare(self) -> None:
        """Refuse early: too large, not multipart, or no conversion capacity."""
        super().prepare()
        if self.request.method != "POST":
            raise HTTPError(405)  # before the body: it may be larger than anything but an upload
        connection: Any = self.request.connection
        connection.set_max_body_size(self.max_body_bytes * TORNADO_CAP_FACTOR + 2**20)
        connection.set_body_timeout(self.config.upload_timeout)
        content_type = self.request.headers.get("Content-Type", "")
        self.upload = Upload(
            content_type, self.conversions, self.scratch, self.io_executor, self.mp3_settings
        )

    async def consume_body(self, chunk: bytes) -> None:
        """Parse the body as it arrives; start the conversion as soon as the file begins after the
        credentials, if a conversion thread is free."""
        upload = self.upload
        assert upload is not None
        await upload.feed(chunk)
        if upload.can_convert_now():
            try:
                user_id, token = self._credentials(upload)
            except ApiError:
                return  # not all in yet, or malformed: judged once the whole body is in
            await authenticate(self, user_id, token)
            upload.convert()

    async def post(self) -> None:
        """Authenticate (unless done already), convert, store, and answer with the download link."""
        upload = self.upload
        assert upload is not None
        try:
            upload.finish_body()
            user_id, token = self._credentials(upload)
            if not upload.converting:
                await authenticate(self, user_id, token)
                upload.convert()
            mp3 = await upload.converted()
            if upload.stopped:  # nobody will ever get the link: keep nothing
                raise stopped_before_conversion()
            record_id = uuid.uuid4()
            key = new_key(record_id)
            await self._put(upload, key)
            try:
                name = sanitize_filename(upload.form.filename)
                await self.run_db(insert_record, record_id, user_id, name, key, mp3.size, mp3.duration)
            except BaseException:
                await self.in_io(self.store.delete, key)
                raise
        finally:
            await upload.close()  # before any answer leaves: a client never sees leftovers
        url = download_url(self, str(record_id), user_id)
        self.set_header("Location", url)
        self.write_json({"id": str(record_id), "user": user_id, "url": url}, status=201)

    async def _put(self, upload: Upload, key: str) -> None:
        """Move the finished MP3 into the store; 503 when the store is full or failing."""
        try:
            await self.in_io(self.store.put, upload.mp3_path, key)
        except (StorageFull, StorageUnavailable, OSError) as error:
            raise storage_failed(error, "the record") from None

    def _credentials(self, upload: Upload) -> tuple[int, str]:
        """The user id and token of the upload; 422 when one is missing, malformed or sent twice."""
        form = upload.form
        if form.repeated:
            raise invalid(min(form.repeated), "must be sent only once")
        user_id = parse_user_id(form.fields.get("user"))
        token = bearer_token(self) or form.fields.get("token")
        if not token:
            raise invalid("token", "is required (a form field, or Authorization: Bearer)")
        return user_id, token.strip()  # a blank token is sent, and is wrong (403)

    async def stop_work(self) -> None:
        """Before an early refusal leaves: stop and free everything the upload holds."""
        if self.upload is not None:
            await self.upload.close()

    def on_connection_close(self) -> None:
        """The client went away: its conversion is stopped at once (nobody will get the link)."""
        if self.upload is not None and self.body_complete:
            self.upload.stop()
        super().on_connection_close()

    def abandoned(self) -> None:
        """The client left mid-body: free the upload once the write under way has ended."""
        upload = self.upload
        if upload is None:
            return super().abandoned()
        upload.stop()
        self._closing = asyncio.ensure_future(upload.close())
        self._closing.add_done_callback(lambda _: self.leave())


class RecordHandler(BaseHandler):
    """GET/HEAD /record?id=&user= downloads a record (Range, 304, HEAD), streamed from the store a
    piece at a time on the I/O executor; DELETE removes it."""

    async def get(self, include_body: bool = True) -> None:
        """Send the MP3, or the part a Range asks for."""
        record_id, user_id = self.record_and_user()
        record = await self.run_db(find_record, record_id, user_id)
        if record is None:
            raise ApiError(404, "there is no such record for this user")
        size = await self._size(record)
        self._set_file_headers(record)
        if self._not_modified(record["created_at"]):
            self.set_status(304)
            return
        start, end = self._byte_range(size)
        self.set_header("Content-Length", end - start)
        if include_body:
            await self._send(record["path"], start, end)

    async def head(self) -> None:
        """The headers of GET, without the body."""
        await self.get(include_body=False)

    async def _size(self, record: dict[str, Any]) -> int:
        """The stored MP3's size; 404 (the log says why) when the store has no such file."""
        try:
            size = await self.in_io(self.store.size, record["path"])
        except OSError as error:
            raise store_unreadable(error) from None
        if size is None:
            raise audio_missing(record["path"])
        return size

    def _set_file_headers(self, record: dict[str, Any]) -> None:
        """An MP3 named after the upload; it never changes, so it may be cached for good."""
        self.set_header("Content-Type", "audio/mpeg")
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("ETag", f'"{record["id"]}"')
        self.set_header("Last-Modified", record["created_at"])
        self.set_header("Content-Disposition", content_disposition(record["original_name"]))
        self.set_header("Cache-Control", "private, max-age=31536000, immutable")

    def _not_modified(self, created_at: datetime) -> bool:
        """Whether the client's copy is current (If-None-Match, else If-Modified-Since)."""
        if self.request.headers.get("If-None-Match"):
            return self.check_etag_header()
        since = self.request.headers.get("If-Modified-Since")
        if since:
            try:
                when = email.utils.parsedate_to_datetime(since)
            except (TypeError, ValueError):
                return False
            return when.tzinfo is not None and when >= created_at.replace(microsecond=0)
        return False

    def _byte_range(self, size: int) -> tuple[int, int]:
        """The bytes to send, [start, end): all of them, or a satisfiable Range (206); else 416."""
        header = self.request.headers.get("Range")
        asked = httputil._parse_request_range(header) if header else None  # as StaticFileHandler
        if asked is None:
            return 0, size
        start, end = asked
        if start is not None and start < 0:
            start = max(0, size + start)
        start = start or 0
        end = size if end is None else min(end, size)
        if start >= end:
            raise ApiError(
                416, "the requested range is not satisfiable", headers={"Content-Range": f"bytes */{size}"}
            )
        if (start, end) != (0, size):
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        return start, end

    async def _send(self, key: str, start: int, end: int) -> None:
        """Stream the bytes from the store, never more than a piece in memory; a store that fails
        before the first piece is a 503 (404 for a file deleted since its size was read)."""
        pieces = self.store.read(key, start, end)
        sent = False
        try:
            while (piece := await self.in_io(next, pieces, None)) is not None:
                self.write(piece)
                await self.flush()
                sent = True
        except StreamClosedError:
            return  # the client left
        except OSError as error:
            if sent:
                raise  # the status has left: the connection is cut short instead
            if isinstance(error, FileNotFoundError):
                raise audio_missing(key) from None
            raise store_unreadable(error) from None
        finally:
            await self.in_io(pieces.close)

    def compute_etag(self) -> str | None:
        """The ETag is set from the record id (the file never changes)."""
        return None

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
        key = await self.run_db(delete_record, record_id, user_id)
        if key is None:
            raise ApiError(404, "there is no such record for this user")
        try:
            await self.in_io(self.store.delete, key)
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
