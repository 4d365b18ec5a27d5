"""The client for a jService-compatible API (`GET /api/random?count=k`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, TypeGuard

import pycurl
from tornado.curl_httpclient import CurlError
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from database import storable_text

MAX_BATCH = 100
MAX_ANSWER_BYTES = 8 * 1024 * 1024
MIN_TIMEOUT_SECONDS = 0.001
UNREACHABLE = frozenset({pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT})
SANE_YEARS = range(1800, 2201)
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

FailureKind = Literal["timeout", "bad_gateway"]


@dataclass(frozen=True)
class Clue:
    """One upstream question, reduced to what we store."""

    jservice_id: int
    question: str
    answer: str
    created_at: datetime | None
    airdate: datetime | None
    value: int | None
    category: str | None


class UpstreamError(Exception):
    """The upstream did not give a usable answer to one call."""

    def __init__(
        self, kind: FailureKind, message: str, *, transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.transient = transient
        self.retry_after = retry_after


class RandomClues(Protocol):
    """Where random clues come from."""

    async def fetch_random(self, count: int, timeout: float) -> list[Clue | None]:
        """Up to `count` random clues, None for each unusable item; raises UpstreamError when the
        answer as a whole is unusable."""
        ...


class JServiceClient:
    """Fetches random clues over one shared libcurl-backed AsyncHTTPClient, which keeps connections
    to the upstream alive between calls (built with max_body_size=MAX_ANSWER_BYTES)."""

    def __init__(self, http: AsyncHTTPClient, base_url: str) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")

    async def fetch_random(self, count: int, timeout: float) -> list[Clue | None]:
        """Ask for `count` random clues: one entry per item of the answer, None where the item is
        unusable. Raises UpstreamError when the answer as a whole is unusable."""
        # libcurl takes whole milliseconds, and reads 0 as "no limit at all".
        timeout = max(timeout, MIN_TIMEOUT_SECONDS)
        request = HTTPRequest(
            f"{self._base_url}/api/random?count={min(count, MAX_BATCH)}",
            headers={"Accept": "application/json"},
            connect_timeout=timeout,
            request_timeout=timeout,
            # A redirect is answered 502: followed, it could lead the service's requests anywhere.
            follow_redirects=False,
        )
        try:
            response = await self._http.fetch(request)
        except HTTPClientError as error:
            raise _http_failure(error) from None
        try:
            payload = json.loads(response.body)
        except (ValueError, RecursionError):
            raise UpstreamError(
                "bad_gateway", "the upstream answered with something that is not JSON", transient=False
            ) from None
        if not isinstance(payload, list):
            raise UpstreamError(
                "bad_gateway", "the upstream answered with JSON that is not a list", transient=False
            )
        return [parse_clue(item) for item in payload[:count]]


def _http_failure(error: HTTPClientError) -> UpstreamError:
    errno = error.errno if isinstance(error, CurlError) else None
    if errno == pycurl.E_OPERATION_TIMEDOUT:
        return UpstreamError(
            "timeout", f"the upstream did not answer in time: {error.message}", transient=True
        )
    if errno == pycurl.E_WRITE_ERROR:  # over the client's max_body_size
        return UpstreamError(
            "bad_gateway", f"the upstream's answer is larger than {MAX_ANSWER_BYTES} bytes", transient=False
        )
    if errno in UNREACHABLE:
        return UpstreamError("bad_gateway", f"cannot reach the upstream: {error.message}", transient=True)
    if error.code == 599:
        return UpstreamError("bad_gateway", f"upstream call failed: {error.message}", transient=True)
    if 300 <= error.code < 400:
        return UpstreamError(
            "bad_gateway",
            f"the upstream answered HTTP {error.code}, a redirect, which the service does not follow"
            " (set JSERVICE_URL to the address it redirects to)",
            transient=False,
        )
    retry_after = None
    if error.code == 429 and error.response is not None:
        retry_after = parse_retry_after(error.response.headers.get("Retry-After"))
    return UpstreamError(
        "bad_gateway",
        f"the upstream answered HTTP {error.code}",
        transient=error.code in TRANSIENT_STATUSES,
        retry_after=retry_after,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with no claim about local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def parse_clue(item: Any) -> Clue | None:
    """Turn one element of the upstream's list into a Clue, or None when it is unusable."""
    if not isinstance(item, dict):
        return None
    jservice_id, question, answer = item.get("id"), item.get("question"), item.get("answer")
    if not _is_int(jservice_id) or not isinstance(question, str) or not isinstance(answer, str):
        return None
    if not question.strip() or not answer.strip() or not 0 < jservice_id < 2**63:
        return None
    if not storable_text(question + answer):
        return None
    category = item.get("category")
    title = category.get("title") if isinstance(category, dict) else None
    value = item.get("value")
    if isinstance(title, str) and not storable_text(title):
        title = None  # pragma: no mutate - equivalent: an empty title is dropped below as well
    return Clue(
        jservice_id=jservice_id,
        question=question.strip(),
        answer=answer.strip(),
        created_at=_parse_time(item.get("created_at")),
        airdate=_parse_time(item.get("airdate")),
        value=value if _is_int(value) and -(2**31) <= value < 2**31 else None,
        category=title.strip() if isinstance(title, str) and title.strip() else None,
    )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time within SANE_YEARS, in UTC; anything else is None (PostgreSQL would store
    a year-1 date that the driver cannot read back)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        utc = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return utc if utc.year in SANE_YEARS else None
