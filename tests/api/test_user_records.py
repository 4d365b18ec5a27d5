"""GET /users/<id>/records and DELETE /record: real uploads, real PostgreSQL, the contract checked,
against each media store (the media directory and a real S3 server)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import psycopg2
import pytest

from tests.audio import make_wav, upload_form
from tests.support import assert_problem, call, poll, post_form, sql, store_of

# Every test runs against both media stores, unless it is marked LOCAL_ONLY: those check
# authentication and links, which never reach the store, or the media directory itself.
pytestmark = pytest.mark.stores("local", "s3")
LOCAL_ONLY = pytest.mark.stores("local")


async def new_user(base_url: str, name: str = "lister") -> dict[str, object]:
    user: dict[str, object] = (await call(base_url, "POST", "/users", {"name": name})).json
    return user


def bearer(user: dict[str, object]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['token']}"}


async def upload(base_url: str, user: dict[str, object], filename: str = "take.wav") -> dict[str, str]:
    reply = await post_form(base_url, upload_form(user, make_wav(0.2), filename))
    assert reply.status == 201, reply.body
    record: dict[str, str] = reply.json
    return record


def stored_path(db: str, record_id: str) -> str | None:
    rows = sql(db, "SELECT path FROM records WHERE id = %s", (record_id,))
    return rows[0][0] if rows else None


@pytest.mark.gen_test(timeout=60)
async def test_a_users_records_newest_first_with_their_links(base_url, db):
    user, other = await new_user(base_url), await new_user(base_url, "other")
    uploaded = [await upload(base_url, user, f"take {n}.wav") for n in range(3)]
    await upload(base_url, other)
    reply = await call(base_url, "GET", f"/users/{user['id']}/records", headers=bearer(user))
    assert reply.status == 200
    page = reply.json
    assert page["total"] == 3
    assert [item["id"] for item in page["items"]] == [record["id"] for record in reversed(uploaded)]
    newest = page["items"][0]
    assert newest["file_name"] == "take 2.wav"
    assert newest["url"] == uploaded[2]["url"]
    ((size, duration, created_at),) = sql(
        db, "SELECT size, duration, created_at FROM records WHERE id = %s", (newest["id"],)
    )
    assert (newest["size"], newest["duration"]) == (size, duration)
    assert datetime.fromisoformat(newest["created_at"]) == created_at.replace(
        microsecond=created_at.microsecond // 1000 * 1000
    )
    download = await call(newest["url"], "GET", "")
    assert download.status == 200 and len(download.body) == newest["size"]


@pytest.mark.gen_test(timeout=60)
async def test_the_list_pages_like_get_questions(base_url, db):
    user = await new_user(base_url)
    ids = [(await upload(base_url, user))["id"] for _ in range(3)][::-1]
    path = f"/users/{user['id']}/records"
    first = (await call(base_url, "GET", f"{path}?limit=2", headers=bearer(user))).json
    rest = (await call(base_url, "GET", f"{path}?limit=2&offset=2", headers=bearer(user))).json
    beyond = (await call(base_url, "GET", f"{path}?offset=5", headers=bearer(user))).json
    assert [item["id"] for item in first["items"] + rest["items"]] == ids
    assert (first["total"], rest["total"], beyond) == (3, 3, {"items": [], "total": 3})
    for query in ("limit=0", "limit=1001", "offset=-1", "limit=abc", "limit="):
        problem = assert_problem(await call(base_url, "GET", f"{path}?{query}", headers=bearer(user)), 422)
        assert problem["errors"][0]["field"] == query.split("=")[0]


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_listing_needs_the_users_bearer_token(base_url, db):
    user, other = await new_user(base_url), await new_user(base_url, "other")
    path = f"/users/{user['id']}/records"
    for headers in ({}, {"Authorization": f"Basic {user['token']}"}, {"Authorization": "Bearer"}):
        refused = await call(base_url, "GET", path, headers=headers)
        assert_problem(refused, 401)
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert_problem(await call(base_url, "GET", path, headers=bearer(other)), 403)
    assert_problem(await call(base_url, "GET", path, headers={"Authorization": "Bearer nope"}), 403)
    assert_problem(await call(base_url, "GET", "/users/987654/records", headers=bearer(user)), 404)
    assert_problem(await call(base_url, "GET", f"/users/{'9' * 19}/records", headers=bearer(user)), 404)


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(public_url="https://audio.example.org")
async def test_listed_links_use_the_public_url(base_url, db):
    user = await new_user(base_url)
    record = await upload(base_url, user)
    page = (await call(base_url, "GET", f"/users/{user['id']}/records", headers=bearer(user))).json
    assert page["items"][0]["url"] == record["url"]
    assert record["url"].startswith("https://audio.example.org/record?id=")


@pytest.mark.gen_test(timeout=60)
async def test_delete_removes_the_row_and_the_file(base_url, db, app):
    user = await new_user(base_url)
    record, kept = await upload(base_url, user), await upload(base_url, user)
    key = str(stored_path(db, record["id"]))
    assert store_of(app).size(key)
    path = f"/record?id={record['id']}&user={user['id']}"
    reply = await call(base_url, "DELETE", path, headers=bearer(user))
    assert (reply.status, reply.body) == (204, b"")
    assert stored_path(db, record["id"]) is None
    assert store_of(app).size(key) is None
    assert_problem(await call(record["url"], "GET", ""), 404)
    assert_problem(await call(base_url, "DELETE", path, headers=bearer(user)), 404)
    page = (await call(base_url, "GET", f"/users/{user['id']}/records", headers=bearer(user))).json
    assert [item["id"] for item in page["items"]] == [kept["id"]]
    assert (await call(kept["url"], "GET", "")).status == 200


@pytest.mark.gen_test(timeout=60)
async def test_delete_refuses_and_keeps_everything(base_url, db, app):
    user, other = await new_user(base_url), await new_user(base_url, "other")
    record = await upload(base_url, user)
    path = f"/record?id={record['id']}&user={user['id']}"
    refused = await call(base_url, "DELETE", path)
    assert_problem(refused, 401)
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert_problem(await call(base_url, "DELETE", path, headers=bearer(other)), 403)
    # The record of another user, asked for with that user's own valid token: no such record.
    theirs = f"/record?id={record['id']}&user={other['id']}"
    assert_problem(await call(base_url, "DELETE", theirs, headers=bearer(other)), 404)
    unknown = f"/record?id={record['id']}&user=987654"
    assert_problem(await call(base_url, "DELETE", unknown, headers=bearer(user)), 404)
    for query in (f"id=nope&user={user['id']}", f"id={record['id']}&user=0", f"id={record['id']}"):
        assert_problem(await call(base_url, "DELETE", f"/record?{query}", headers=bearer(user)), 422)
    assert store_of(app).size(str(stored_path(db, record["id"])))
    assert (await call(record["url"], "GET", "")).status == 200


@pytest.mark.gen_test(timeout=60)
async def test_delete_removes_the_row_before_the_file(base_url, db, app):
    user = await new_user(base_url)
    record = await upload(base_url, user)
    key = str(stored_path(db, record["id"]))
    # A lock on the row holds the server's DELETE: until the row is gone, the file must stay.
    blocker = psycopg2.connect(db)
    try:
        blocker.cursor().execute("SELECT 1 FROM records WHERE id = %s FOR UPDATE", (record["id"],))
        deleting = asyncio.ensure_future(
            call(base_url, "DELETE", f"/record?id={record['id']}&user={user['id']}", headers=bearer(user))
        )
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE%%'"
        )
        await poll(lambda: sql(db, waiting) == [(1,)])
        assert store_of(app).size(key)
    finally:
        blocker.rollback()
        blocker.close()
    assert (await deleting).status == 204
    assert store_of(app).size(key) is None


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY  # a folder in the file's place; for S3, a store that is down: test_records.py
async def test_a_file_that_cannot_be_removed_still_deletes_the_record(base_url, db, settings, caplog):
    user = await new_user(base_url)
    record = await upload(base_url, user)
    file = settings.media_root / str(stored_path(db, record["id"]))
    file.unlink()
    file.mkdir()  # unlink(2) fails on it: the file stays behind, as after a crash, for the sweep
    reply = await call(
        base_url, "DELETE", f"/record?id={record['id']}&user={user['id']}", headers=bearer(user)
    )
    assert reply.status == 204
    assert stored_path(db, record["id"]) is None
    assert "cannot delete the file of a deleted record" in caplog.text


@pytest.mark.gen_test
@LOCAL_ONLY
async def test_record_path_allows_get_head_and_delete(base_url, db):
    reply = await call(base_url, "POST", "/record", raw=b"{}")
    assert_problem(reply, 405)
    assert reply.headers["Allow"] == "GET, HEAD, DELETE"
