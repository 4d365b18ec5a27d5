"""The base handler: JSON bodies in and out, problem+json errors, typed access to shared resources."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import uuid
from asyncio import Future
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from peewee import PeeweeException
from playhouse.pool import MaxConnectionsExceeded
from tornado.web import Finish, HTTPError, RequestHandler, stream_request_body

from batching import Batcher
from config import Settings
from converters.mp3 import Mp3Settings
from converters.pool import ConversionPool
from database import DatabaseUnavailable
from handlers.forwarded import Client, client_of
from handlers.problems import PROBLEM_CONTENT_TYPE, RETRY_AFTER, ApiError, invalid, phrase, problem_document
from queries.questions import QuestionDict
from runtime import InFlight, first_line
from storage import MediaStore
from storage.scratch import Scratch
from upstream.client import Clue
from upstream.sharing import SharedUpstream

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("api")

MAX_JSON_BYTES = 64 * 1024
MAX_PAGE = 1000
# A client's X-Request-ID is kept when it looks like an id (it goes into logs as it is).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
# What browser pages of CORS_ORIGINS may send, and read, beyond what CORS always allows.
CORS_REQUEST_HEADERS = "Authorization, Content-Type, If-Modified-Since, If-None-Match, Range, X-Request-ID"
CORS_EXPOSED_HEADERS = "Content-Disposition, Location, Retry-After, X-Request-ID"
CORS_MAX_AGE_SECONDS = 600
# A whole number as the service takes it everywhere (query parameters, form fields, path ids): ASCII
# digits without sign, spaces or leading zeros. 19 digits are more than any bound it checks.
CANONICAL_INTEGER = re.compile(r"0|[1-9][0-9]{0,18}")
# JSON integers longer than this are out of every range (Python refuses to read 4,300 digits and
# more); they are read as this number, out of range too.
MAX_JSON_DIGITS = 30
JSON_OUT_OF_RANGE = int("1" + "0" * MAX_JSON_DIGITS)


@stream_request_body
class BaseHandler(RequestHandler):
    """What every handler shares. Bodies stream in so that a size cap holds before they are read."""

    def initialize(self) -> None:
        """Start each request with an empty body buffer."""
        self._body = bytearray()
        self._received = 0
        self._counted = False

    @property
    def max_body_bytes(self) -> int:
        """The largest request body this handler takes."""
        return MAX_JSON_BYTES

    @property
    def config(self) -> Settings:
        """The service settings."""
        settings: Settings = self.application.settings["config"]
        return settings

    @property
    def db_executor(self) -> ThreadPoolExecutor:
        """The threads that talk to the database; no more of them than pooled connections."""
        executor: ThreadPoolExecutor = self.application.settings["db_executor"]
        return executor

    @property
    def user_batches(self) -> Batcher[str, tuple[int, str]]:
        """Creates users: concurrent sign-ups share one INSERT (name -> (id, token))."""
        batcher: Batcher[str, tuple[int, str]] = self.application.settings["user_batches"]
        return batcher

    @property
    def question_batches(self) -> Batcher[list[Clue], tuple[int, QuestionDict | None]]:
        """Stores question batches: those of concurrent requests share one INSERT."""
        batcher: Batcher[list[Clue], tuple[int, QuestionDict | None]] = self.application.settings[
            "question_batches"
        ]
        return batcher

    @property
    def jservice(self) -> SharedUpstream:
        """The quiz upstream client."""
        client: SharedUpstream = self.application.settings["jservice"]
        return client

    @property
    def conversions(self) -> ConversionPool:
        """The bounded conversion pool."""
        pool: ConversionPool = self.application.settings["conversions"]
        return pool

    @property
    def io_executor(self) -> ThreadPoolExecutor:
        """Threads for file and store I/O, so the event loop never waits on a disk or a store."""
        executor: ThreadPoolExecutor = self.application.settings["io_executor"]
        return executor

    @property
    def store(self) -> MediaStore:
        """Where finished MP3s live: the media directory or an S3 bucket."""
        store: MediaStore = self.application.settings["store"]
        return store

    @property
    def scratch(self) -> Scratch:
        """This instance's folder for uploads and MP3s in progress."""
        scratch: Scratch = self.application.settings["scratch"]
        return scratch

    async def in_io(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking file or store work on the I/O executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io_executor, lambda: work(*args, **kwargs))

    @property
    def mp3_settings(self) -> Mp3Settings:
        """How MP3s are made."""
        settings: Mp3Settings = self.application.settings["mp3"]
        return settings

    @property
    def in_flight(self) -> InFlight:
        """Counts requests being served, so a shutdown can wait for them."""
        tracker: InFlight = self.application.settings["in_flight"]
        return tracker

    def set_default_headers(self) -> None:
        """API answers are never sniffed nor cached, and carry the request id (errors too: Tornado
        sets these again when it clears an answer to send an error)."""
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Request-ID", self.request_id)
        self.set_cors_headers()

    @cached_property
    def request_id(self) -> str:
        """The client's X-Request-ID when it is well-formed, else a fresh one."""
        sent = self.request.headers.get("X-Request-ID", "")
        return sent if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex

    @cached_property
    def client(self) -> Client:
        """Who sent the request and what scheme and host it asked for (TRUSTED_PROXIES' word for it)."""
        return client_of(self.request, self.config.trusted_proxies)

    def public_base(self) -> str:
        """scheme://host[:port] of the links the service hands out: PUBLIC_URL, else the client's."""
        return self.config.public_url or f"{self.client.protocol}://{self.client.host}"

    def cors_origin(self) -> str | None:
        """The Access-Control-Allow-Origin for this request, or None when CORS_ORIGINS does not allow it."""
        origin = self.request.headers.get("Origin")
        allowed = self.config.cors_origins
        if origin is None or not allowed:
            return None
        return "*" if "*" in allowed else origin if origin.lower() in allowed else None

    def set_cors_headers(self) -> None:
        """Let pages of CORS_ORIGINS read the answer, its errors and the headers they need."""
        if self.config.cors_origins and "*" not in self.config.cors_origins:
            self.set_header("Vary", "Origin")  # caches must not hand one origin's answer to another
        origin = self.cors_origin()
        if origin is not None:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS)

    def answer_preflight(self) -> None:
        """Answer a CORS preflight from an allowed origin for a method this path takes with 204;
        any other OPTIONS request goes on to its 405 (or 404) problem."""
        asked = self.request.headers.get("Access-Control-Request-Method")
        if self.request.method != "OPTIONS" or asked not in self.allowed_methods() or not self.cors_origin():
            return
        self.set_header("Access-Control-Allow-Methods", ", ".join(self.allowed_methods()))
        self.set_header("Access-Control-Allow-Headers", CORS_REQUEST_HEADERS)
        self.set_header("Access-Control-Max-Age", str(CORS_MAX_AGE_SECONDS))
        self.set_status(204)
        raise Finish()

    def prepare(self) -> None:
        """Count the request, answer a CORS preflight, and refuse a declared body over the cap
        before reading it."""
        self.in_flight.enter()
        self._counted = True
        self.answer_preflight()
        declared = self.request.headers.get("Content-Length", "")
        # Only decimal digits get here (connections.RequestGuard); any number of them.
        if declared.isdecimal() and (len(declared) > 19 or int(declared) > self.max_body_bytes):
            raise self.body_too_large()

    async def data_received(self, chunk: bytes) -> None:
        """Take the body up to the cap; past it, answer 413 and drop the connection. Tornado waits
        for this before it reads on, so a slow consumer slows the client down, not the server."""
        if self._finished:
            return
        self._received += len(chunk)
        try:
            if self._received > self.max_body_bytes:
                raise self.body_too_large()
            await self.consume_body(chunk)
        except ApiError as error:
            if not self._finished:
                await self.stop_work()
                self.send_error(error.status_code, exc_info=(type(error), error, None))
        except Exception:
            # A bug: answered with 500 like one in a handler method, not by dropping the connection.
            log.exception("error while reading the body of %s", self._request_summary())
            if not self._finished:
                await self.stop_work()
                self.send_error(500, exc_info=sys.exc_info())

    async def consume_body(self, chunk: bytes) -> None:
        """Take a piece of the body (raising ApiError refuses the request); JSON handlers buffer it."""
        self._body.extend(chunk)

    async def stop_work(self) -> None:
        """Stop work started for this request before its error answer leaves; handlers that start
        work while the body arrives extend it."""

    def body_too_large(self) -> ApiError:
        """The 413 problem for a body over this handler's cap."""
        return ApiError(413, f"the request body is larger than {self.max_body_bytes} bytes")

    def on_finish(self) -> None:
        """The request was answered."""
        self.leave()

    def on_connection_close(self) -> None:
        """The client went away. Before its body was in, the handler method will never run."""
        body_in = self.body_complete
        super().on_connection_close()
        if not body_in:
            self.abandoned()

    @property
    def body_complete(self) -> bool:
        """Whether the whole request body has arrived (Tornado resolves this future then)."""
        body_read: Future[None] | None = getattr(self.request, "_body_future", None)
        return body_read is None or body_read.done()

    def abandoned(self) -> None:
        """The client left before its body was in; handlers with work under way extend this."""
        self.leave()

    def leave(self) -> None:
        """The request no longer counts as in flight (idempotent)."""
        if self._counted:
            self._counted = False
            self.in_flight.leave()

    def compute_etag(self) -> str | None:
        """No ETags: API answers are live data, sent with no-store."""
        return None

    def _request_summary(self) -> str:
        # Tornado puts this in its warning and error lines; the query string may hold secrets.
        return f"{self.request.method} {self.request.path} ({self.client.address} {self.request_id})"

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        """A refused request (4xx) is the client's doing: its reason is logged at INFO, not WARNING."""
        if isinstance(value, HTTPError) and value.status_code < 500:
            if value.log_message:
                log.info("%d %s: %s", value.status_code, self._request_summary(), value.get_message())
            return
        super().log_exception(typ, value, tb)

    def json_object(self) -> dict[str, Any]:
        """The request body as a JSON object: 415 when it comes with a content coding, 400 when it
        is not a JSON object, 422 naming a key that appears twice in one object."""
        coding = self.request.headers.get("Content-Encoding", "").strip()
        if coding.lower() not in ("", "identity"):
            raise ApiError(
                415,
                f"the request body is {coding}-coded; send it as plain JSON, with no Content-Encoding",
                headers={"Accept-Encoding": "identity"},
            )
        try:
            body = json.loads(self._body, object_pairs_hook=_unique_keys, parse_int=_json_integer)
        except DuplicateKey as duplicate:
            raise invalid(duplicate.key, "must be given only once") from None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def query_text(self, name: str) -> str | None:
        """The value of a query parameter (undecodable bytes replaced), or None; 422 when it is
        given more than once."""
        values = self.request.query_arguments.get(name)
        if values and len(values) > 1:
            raise invalid(name, "must be given only once")
        return values[0].decode("utf-8", "replace") if values else None

    def query_int(self, name: str, default: int, minimum: int, maximum: int) -> int:
        """An integer query parameter within bounds, written canonically; 422 otherwise."""
        raw = self.query_text(name)
        if raw is None:
            return default
        if not CANONICAL_INTEGER.fullmatch(raw) or not minimum <= int(raw) <= maximum:
            raise invalid(name, f"must be an integer from {minimum} to {maximum}")
        return int(raw)

    def page_query(self) -> tuple[int, int]:
        """The `limit` (1 to MAX_PAGE, default 50) and `offset` (default 0) of a paged list; 422 otherwise."""
        limit = self.query_int("limit", default=50, minimum=1, maximum=MAX_PAGE)
        return limit, self.query_int("offset", default=0, minimum=0, maximum=2**62)

    def write_json(self, payload: Any, status: int = 200) -> None:
        """Finish with a JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload, ensure_ascii=False).encode())

    async def run_db(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a database function on the DB executor; 503 when the database cannot answer."""
        loop = asyncio.get_running_loop()
        return await self.db_result(loop.run_in_executor(self.db_executor, lambda: work(*args, **kwargs)))

    async def db_result(self, work: Awaitable[R]) -> R:
        """Await database work (a `run_db` call, a batched write); 503 when the database cannot answer."""
        try:
            return await work
        except (*DatabaseUnavailable, MaxConnectionsExceeded) as error:
            log.warning("database unavailable: %s", first_line(error))
            raise ApiError(
                503, "the database is unavailable, try again shortly", headers=RETRY_AFTER
            ) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error leaves as a problem document; a traceback never does."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        extra: dict[str, Any] = {}
        if isinstance(error, ApiError):
            extra = error.extra
            for name, value in error.headers.items():
                self.set_header(name, value)
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.write_problem(status_code, self._problem_detail(status_code, error), extra)

    def write_problem(self, status_code: int, detail: str, extra: dict[str, Any] | None = None) -> None:
        """Finish with an RFC 9457 problem document."""
        self.set_status(status_code)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", PROBLEM_CONTENT_TYPE)
        if not self.body_complete:
            # Answered before the body is in: the connection is closed after this answer (the
            # rest of the body is read and dropped first: connections.py), so say so (RFC 9112
            # 9.6), or a keep-alive client would send its next request into a closing socket.
            self.set_header("Connection", "close")
        self.finish(problem_document(status_code, detail, {"request_id": self.request_id, **(extra or {})}))

    def _problem_detail(self, status_code: int, error: BaseException | None) -> str:
        if isinstance(error, ApiError):
            return error.detail
        if status_code == 405:
            return f"{self.request.method} is not allowed here; use {', '.join(self.allowed_methods())}"
        if isinstance(error, HTTPError) and error.log_message and status_code < 500:
            return error.log_message % error.args if error.args else error.log_message
        if isinstance(error, PeeweeException):
            return "the database failed to answer this request"
        return phrase(status_code)

    def allowed_methods(self) -> list[str]:
        """The HTTP methods this handler implements, for Allow headers."""
        return [
            method
            for method in self.SUPPORTED_METHODS
            if getattr(type(self), method.lower()) is not getattr(RequestHandler, method.lower())
        ]


class DuplicateKey(Exception):
    """A JSON object has the same key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object from its key-value pairs; raises DuplicateKey (json.loads keeps the last)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


def _json_integer(digits: str) -> int:
    """A JSON integer; one too long to be in any range stands for a number out of range, so it is
    answered with 422 rather than Python's refusal to read it (which would be a 400)."""
    if len(digits.lstrip("-")) <= MAX_JSON_DIGITS:
        return int(digits)
    return -JSON_OUT_OF_RANGE if digits.startswith("-") else JSON_OUT_OF_RANGE


class NotFoundHandler(BaseHandler):
    """Answers every path no route matches with a 404 problem."""

    def prepare(self) -> None:
        """Refuse whatever was asked for."""
        super().prepare()
        raise ApiError(404, f"there is nothing at {self.request.path}")
