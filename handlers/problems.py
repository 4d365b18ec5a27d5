"""Problem documents (RFC 9457): the errors handlers raise, and their building blocks."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from tornado.web import HTTPError

PROBLEM_CONTENT_TYPE = "application/problem+json"
# On 503s where waiting helps: the database, conversion capacity, the disk.
RETRY_AFTER = {"Retry-After": "5"}


class ApiError(HTTPError):
    """An error answered as an RFC 9457 problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, reason=HTTPStatus(status).phrase)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


def invalid(field: str, message: str) -> ApiError:
    """A 422 problem about one field of the request."""
    return ApiError(
        422,
        f"{field}: {message}",
        extra={"errors": [{"field": field, "message": message}]},
    )


def sole_field(body: dict[str, Any], name: str) -> Any:
    """The value of the only field a body may have; 422 for a missing or an unknown field."""
    unknown = sorted(set(body) - {name})
    if unknown:
        raise invalid(unknown[0], f"unknown field; the only field is {name}")
    if name not in body:
        raise invalid(name, "is required")
    return body[name]


def problem_document(status_code: int, detail: str, extra: dict[str, Any] | None = None) -> bytes:
    """The JSON body of an RFC 9457 problem document."""
    problem = {"type": "about:blank", "title": phrase(status_code), "status": status_code, "detail": detail}
    # ASCII escapes, so that even a field name with a lone surrogate can be reported.
    return json.dumps({**problem, **(extra or {})}).encode()


def phrase(status_code: int) -> str:
    """The standard reason phrase of a status code."""
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"
