"""Every response the tests receive is checked against openapi.yaml, so code and contract cannot
drift apart."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse

UNDESCRIBED_PREFIX = "/docs/static/"
OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"


@cache
def contract() -> OpenAPI:
    """openapi.yaml, validated as an OpenAPI 3.1 document while it loads."""
    config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
    return OpenAPI.from_file_path(str(OPENAPI_FILE), config=config)


def check_response(
    method: str,
    url: str,
    headers: Mapping[str, Any] | None,
    status: int,
    reply_headers: Mapping[str, str],
    body: bytes,
) -> None:
    """Raise when the reply is not what openapi.yaml promises for this request. What the document
    leaves out by design (404 and 405 answers, Swagger UI's static files) is not checked."""
    parts = urlsplit(url)
    if parts.path.startswith(UNDESCRIBED_PREFIX):
        return
    request = MockRequest(
        f"{parts.scheme}://{parts.netloc}",
        method,
        parts.path,
        args=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=dict(headers or {}),
    )
    content_type = reply_headers.get("Content-Type", "").split(";")[0].strip()
    response = MockResponse(body, status, dict(reply_headers), content_type=content_type)
    try:
        contract().validate_response(request, response)
    except (PathNotFound, OperationNotFound):
        assert status in (404, 405), f"{method} {parts.path} is not in openapi.yaml"
