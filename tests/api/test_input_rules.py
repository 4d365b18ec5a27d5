"""One rule for every input: a field or parameter given twice is 422 naming it, and whole numbers are
written canonically (ASCII digits, no sign, spaces or leading zeros); JSON numbers as JSON Schema
reads them; a content-coded JSON body is 415."""

from __future__ import annotations

import gzip
import json
import uuid
from urllib.parse import quote

import pytest

from tests.audio import make_wav
from tests.support import assert_problem, call, post_form, sql

pytestmark = pytest.mark.fast  # part of `make test-fast`

TOKEN = "11111111-2222-4333-8444-555555555555"


def count(db: str, table: str) -> int:
    return int(sql(db, f"SELECT count(*) FROM {table}")[0][0])


def form(pairs: list[tuple[str, str]], wav: bytes) -> tuple[bytes, str]:
    """An upload body with these fields, in this order (names may repeat), and a file."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in pairs
    )
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    body += wav + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/users", b'{"name": "Ada", "name": "Bob"}', "name"),
        ("/questions", b'{"questions_num": 1, "questions_num": 2}', "questions_num"),
    ],
)
async def test_a_json_key_given_twice_is_422_naming_it(base_url, db, standin, path, raw, field):
    problem = assert_problem(await call(base_url, "POST", path, raw=raw), 422)
    assert problem["errors"] == [{"field": field, "message": "must be given only once"}]
    assert count(db, "users") == count(db, "questions") == 0
    assert standin.behaviour.requested_counts == []


@pytest.mark.gen_test
@pytest.mark.parametrize("repeated", ["user", "token"])
async def test_a_form_field_sent_twice_is_422_naming_it(base_url, db, repeated):
    user = (await call(base_url, "POST", "/users", {"name": "twice"})).json
    fields = [("user", str(user["id"])), ("token", user["token"])]
    fields.append((repeated, dict(fields)[repeated]))  # even the same value twice
    problem = assert_problem(await post_form(base_url, form(fields, make_wav(0.2))), 422)
    assert problem["errors"][0]["field"] == repeated
    assert count(db, "records") == 0


@pytest.mark.gen_test
@pytest.mark.parametrize("written", [" 1", "1 ", "+1", "01", "1.0", "\uff11"])
async def test_a_user_id_must_be_written_canonically(base_url, db, written):
    user = (await call(base_url, "POST", "/users", {"name": "canonical"})).json
    assert user["id"] == 1
    upload = form([("user", written), ("token", user["token"])], make_wav(0.2))
    assert assert_problem(await post_form(base_url, upload), 422)["errors"][0]["field"] == "user"
    reply = await call(base_url, "GET", f"/record?id={uuid.uuid4()}&user={quote(written, safe='')}")
    assert assert_problem(reply, 422)["errors"][0]["field"] == "user"
    assert (
        await post_form(base_url, form([("user", "1"), ("token", user["token"])], make_wav(0.2)))
    ).status == 201


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query", ["limit=+5", "limit=%2B5", "limit=05", "limit=%205", "limit=5%20", "offset=00", "offset=-0"]
)
async def test_paging_must_be_written_canonically(base_url, db, query):
    assert (
        assert_problem(await call(base_url, "GET", f"/questions?{query}"), 422)["errors"][0]["field"] in query
    )
    assert (await call(base_url, "GET", "/questions?limit=5&offset=0")).status == 200


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=1&limit=2", "limit"), ("offset=0&offset=0", "offset")],
)
async def test_a_query_parameter_given_twice_is_422_naming_it(base_url, db, query, field):
    problem = assert_problem(await call(base_url, "GET", f"/questions?{query}"), 422)
    assert problem["errors"] == [{"field": field, "message": "must be given only once"}]


@pytest.mark.gen_test
async def test_a_download_parameter_given_twice_is_422_naming_it(base_url, db):
    record = uuid.uuid4()
    for query, field in ((f"id={record}&id={record}&user=1", "id"), (f"id={record}&user=1&user=1", "user")):
        assert (
            assert_problem(await call(base_url, "GET", f"/record?{query}"), 422)["errors"][0]["field"]
            == field
        )


@pytest.mark.gen_test
async def test_a_user_path_id_must_be_written_canonically(base_url, db):
    await call(base_url, "POST", "/users", {"name": "path"})
    assert (await call(base_url, "GET", "/users/1")).status == 200
    for path in ("/users/01", "/users/0", "/users/001"):
        assert_problem(await call(base_url, "GET", path), 404)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "raw", [b'{"questions_num": 3.0}', b'{"questions_num": 3e0}', b'{"questions_num": 0.3e1}']
)
async def test_questions_num_as_a_number_without_fraction_is_taken(base_url, db, raw):
    # JSON Schema's `integer`, which openapi.yaml uses, is any number without a fraction.
    reply = await call(base_url, "POST", "/questions", raw=raw)
    assert reply.status == 200
    assert count(db, "questions") == 3


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "number", [b"9" * 5001, b"-" + b"9" * 5001, b"1" + b"0" * 4300, b"1e400", b"-1e400", b"3.5"]
)
async def test_questions_num_out_of_range_in_any_spelling_is_422(base_url, db, standin, number):
    reply = await call(base_url, "POST", "/questions", raw=b'{"questions_num": ' + number + b"}")
    assert assert_problem(reply, 422)["errors"][0]["field"] == "questions_num"
    assert standin.behaviour.requested_counts == []


@pytest.mark.gen_test
@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip"])
async def test_a_content_coded_json_body_is_415(base_url, db, standin, coding):
    for path, body in (("/users", {"name": "zipped"}), ("/questions", {"questions_num": 1})):
        raw = json.dumps(body).encode()
        headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
        packed = gzip.compress(raw) if coding == "gzip" else raw
        reply = await call(base_url, "POST", path, raw=packed, headers=headers)
        assert coding in assert_problem(reply, 415)["detail"]
        assert reply.headers["Accept-Encoding"] == "identity"
    assert count(db, "users") == count(db, "questions") == 0
    assert standin.behaviour.requested_counts == []
    identity = {"Content-Encoding": "identity"}
    assert (await call(base_url, "POST", "/users", {"name": "plain"}, headers=identity)).status == 201
