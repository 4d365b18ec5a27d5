"""POST /users and GET /users/<id>."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from tests.support import assert_problem, call, sql

pytestmark = pytest.mark.fast  # part of `make test-fast`


@pytest.mark.gen_test
async def test_create_user_returns_id_token_and_location(base_url, db):
    reply = await call(base_url, "POST", "/users", {"name": "  Ada Lovelace  "})
    assert reply.status == 201
    user = reply.json
    assert isinstance(user["id"], int)
    assert uuid.UUID(user["token"]).version == 4
    assert reply.headers["Location"] == f"/users/{user['id']}"
    shown = (await call(base_url, "GET", reply.headers["Location"])).json
    assert shown["id"] == user["id"] and shown["name"] == "Ada Lovelace"
    assert "token" not in shown


@pytest.mark.gen_test
async def test_database_keeps_only_a_digest_of_the_token(base_url, db):
    token = (await call(base_url, "POST", "/users", {"name": "x"})).json["token"]
    (row,) = sql(db, "SELECT * FROM users")
    assert all(token not in str(value) for value in row)
    assert sql(
        db, "SELECT count(*) FROM users WHERE token_sha256 = encode(sha256(%s::bytea), 'hex')", (token,)
    ) == [(1,)]


@pytest.mark.gen_test
async def test_names_need_not_be_unique_and_any_unicode_works(base_url, db):
    first = await call(base_url, "POST", "/users", {"name": "Zoë 🎵 李"})
    second = await call(base_url, "POST", "/users", {"name": "Zoë 🎵 李"})
    assert (first.status, second.status) == (201, 201)
    assert first.json["id"] != second.json["id"]
    assert first.json["token"] != second.json["token"]
    long_name = "n" * 100
    assert (await call(base_url, "POST", "/users", {"name": f"  {long_name}  "})).status == 201


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "n" * 101},
        {"name": 5},
        {"name": None},
        {"name": ["a"]},
        {"name": "a\u0000b"},
        {"name": "\ud800"},
        {"name": "a", "admin": True},
    ],
)
async def test_invalid_name_is_422(base_url, db, body):
    problem = assert_problem(await call(base_url, "POST", "/users", body), 422)
    assert problem["errors"][0]["field"] in ("name", "admin")
    assert sql(db, "SELECT count(*) FROM users") == [(0,)]


@pytest.mark.gen_test
@pytest.mark.parametrize("raw", [b"", b"name=x", b'["x"]', b"{"])
async def test_body_that_is_not_a_json_object_is_400(base_url, db, raw):
    assert_problem(await call(base_url, "POST", "/users", raw=raw), 400)


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/users/999", "/users/abc", "/users/99999999999999999999999"])
async def test_unknown_user_is_404(base_url, db, path):
    assert_problem(await call(base_url, "GET", path), 404)


@pytest.mark.gen_test
async def test_concurrent_sign_ups_each_get_their_own_id_and_working_token(base_url, db):
    replies = await asyncio.gather(*(call(base_url, "POST", "/users", {"name": f"u{n}"}) for n in range(60)))
    users = [reply.json for reply in replies]
    assert all(reply.status == 201 for reply in replies)
    assert len({user["id"] for user in users}) == len({user["token"] for user in users}) == 60
    stored = dict(sql(db, "SELECT id, token_sha256 FROM users"))
    for n, user in enumerate(users):
        assert stored[user["id"]] == hashlib.sha256(user["token"].encode()).hexdigest()
        assert (await call(base_url, "GET", f"/users/{user['id']}")).json["name"] == f"u{n}"
