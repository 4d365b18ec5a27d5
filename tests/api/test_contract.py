"""openapi.yaml itself: a valid OpenAPI 3.1 document that the checks on every test response enforce."""

from __future__ import annotations

import json

import pytest
import yaml
from openapi_core.exceptions import OpenAPIError
from openapi_spec_validator import validate

from tests.contract import OPENAPI_FILE, check_response
from tests.support import call

JSON = {"Content-Type": "application/json; charset=utf-8"}


def test_openapi_document_is_valid():
    validate(yaml.safe_load(OPENAPI_FILE.read_text()))


def test_contract_check_accepts_a_right_answer():
    check_response("GET", "http://localhost/health", None, 200, JSON, b'{"status": "ok", "version": "1.0"}')


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"status": "ok", "version": "1.0", "extra": 1}'),
        (200, b'{"status": "ok"}'),
        (200, b'{"state": "ok"}'),
        (200, b"[]"),
        (418, b'{"status": "ok"}'),
    ],
)
def test_contract_check_rejects_a_wrong_answer(status, body):
    with pytest.raises(OpenAPIError):
        check_response("GET", "http://localhost/health", None, status, JSON, body)


@pytest.mark.gen_test
async def test_served_documents_are_the_repository_file(base_url):
    as_yaml = await call(base_url, "GET", "/openapi.yaml")
    as_json = await call(base_url, "GET", "/openapi.json")
    assert as_yaml.body.decode() == OPENAPI_FILE.read_text()
    assert as_yaml.content_type.startswith("application/yaml")
    assert json.loads(as_json.body) == yaml.safe_load(OPENAPI_FILE.read_text())


@pytest.mark.gen_test
async def test_docs_page_loads_swagger_ui_from_this_service(base_url):
    page = await call(base_url, "GET", "/docs")
    assert page.content_type.startswith("text/html")
    html = page.body.decode()
    assert "/openapi.json" in html and "http" not in html.replace("/openapi.json", "")
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        assert asset in html
        reply = await call(base_url, "GET", asset)
        assert reply.status == 200 and len(reply.body) > 1000, asset
    missing = await call(base_url, "GET", "/docs/static/nope.js")
    assert missing.status == 404 and missing.content_type == "application/problem+json"
