"""POST /records and GET /record: real uploads, real ffmpeg, real PostgreSQL, and each media store
(the media directory and a real S3 server)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest

from storage import CHUNK_BYTES
from tests.audio import decode_mp3, make_wav, multipart, silent_wav, upload_form, wav_with_fmt
from tests.support import (
    assert_problem,
    call,
    fetch,
    leftovers,
    poll,
    port_of,
    post_streaming,
    scratch_files,
    send_partial,
    sql,
    stall_body,
    store_of,
    stored_keys,
    upload_head,
)

# Every test runs against both media stores, unless it is marked LOCAL_ONLY: those are about input
# checks, authentication, links, ffmpeg's output and the conversion pool's scheduling, which answer
# before the store is reached or work the same whichever store follows; on the media directory only,
# they keep the suite's time.
pytestmark = pytest.mark.stores("local", "s3")
LOCAL_ONLY = pytest.mark.stores("local")


async def new_user(base_url, name="uploader"):
    user = (await call(base_url, "POST", "/users", {"name": name})).json
    return user["id"], user["token"]


async def upload(base_url, user, token, content, filename="take.wav", headers=None, fields=None):
    """POST /records with a multipart body; `content` None sends no file part."""
    form = {"user": str(user), "token": token} if fields is None else fields
    body, content_type = multipart(form, {"file": (filename, content)} if content is not None else {})
    return await call(
        base_url, "POST", "/records", raw=body, headers={"Content-Type": content_type, **(headers or {})}
    )


def record_count(db: str) -> int:
    return sql(db, "SELECT count(*) FROM records")[0][0]


@pytest.fixture
def user(base_url, db, io_loop) -> tuple[int, str]:
    return io_loop.run_sync(lambda: new_user(base_url))


@pytest.mark.gen_test(timeout=120)
# The MP3's shape is ffmpeg's work, the same whichever store keeps it; the round trip through each
# store is test_download_headers_range_head_and_304's and test_concurrent_uploads_all_succeed's.
@LOCAL_ONLY
@pytest.mark.parametrize(
    ("channels", "rate", "sample_bytes"),
    [
        (1, 8000, 1),
        (2, 8000, 2),
        (1, 16000, 2),
        (2, 22050, 3),
        (1, 32000, 2),
        (2, 44100, 2),
        (2, 48000, 3),
        (1, 11025, 1),
    ],
)
async def test_upload_converts_to_mp3_of_the_same_shape(
    base_url, db, user, app, settings, tmp_path, channels, rate, sample_bytes
):
    user_id, token = user
    reply = await upload(base_url, user_id, token, make_wav(1.5, rate, channels, sample_bytes))
    assert reply.status == 201, reply.body
    record = reply.json
    assert record["user"] == user_id
    assert record["url"] == f"{base_url}/record?id={record['id']}&user={user_id}"
    assert reply.headers["Location"] == record["url"]
    download = await call(record["url"], "GET", "")
    assert download.status == 200
    assert download.headers["Content-Type"] == "audio/mpeg"
    assert int(download.headers["Content-Length"]) == len(download.body)
    mp3 = tmp_path / "out.mp3"
    mp3.write_bytes(download.body)
    audio = decode_mp3(mp3)
    assert (audio.channels, audio.frame_rate) == (channels, rate)
    assert abs(audio.duration_seconds - 1.5) < 0.1
    ((size, duration, path),) = sql(db, "SELECT size, duration, path FROM records")
    assert size == len(download.body) and abs(duration - 1.5) < 1e-3
    assert b"".join(store_of(app).read(path, 0, size)) == download.body  # what the store holds
    assert scratch_files(settings.scratch_root) == []


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_token_may_come_as_bearer_header(base_url, db, user):
    user_id, token = user
    reply = await upload(
        base_url,
        user_id,
        "",
        make_wav(0.2),
        headers={"Authorization": f"Bearer {token}"},
        fields={"user": str(user_id)},
    )
    assert reply.status == 201


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(public_url="https://audio.example.org")
async def test_public_url_sets_the_link_base(base_url, db, user):
    reply = await upload(base_url, user[0], user[1], make_wav(0.2))
    assert reply.json["url"].startswith("https://audio.example.org/record?id=")


@pytest.mark.gen_test(timeout=60)
async def test_download_headers_range_head_and_304(base_url, db, user, app, tmp_path):
    user_id, token = user
    # Long enough for an MP3 of more than one piece, so that a download is streamed in several.
    wav = silent_wav(15.0, 44100, 2)
    url = (await upload(base_url, user_id, token, wav, filename="../../évian take.wav")).json["url"]
    full = await call(url, "GET", "")
    assert full.status == 200
    ((key, size),) = sql(db, "SELECT path, size FROM records")
    assert len(full.body) == size > CHUNK_BYTES
    assert full.body == b"".join(store_of(app).read(key, 0, size))  # what the store holds, whole
    record_id = parse_qs(urlsplit(url).query)["id"][0]
    assert full.headers["ETag"] == f'"{record_id}"'
    assert full.headers["Accept-Ranges"] == "bytes"
    assert full.headers["X-Content-Type-Options"] == "nosniff"
    disposition = full.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="_vian take.mp3"')
    assert "filename*=UTF-8''%C3%A9vian%20take.mp3" in disposition
    head = await call(url, "HEAD", "")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(full.body))
    partial = await call(url, "GET", "", headers={"Range": "bytes=10-109"})
    assert partial.status == 206
    assert partial.body == full.body[10:110]
    assert partial.headers["Content-Range"] == f"bytes 10-109/{len(full.body)}"
    across = await call(url, "GET", "", headers={"Range": f"bytes={CHUNK_BYTES - 5}-{CHUNK_BYTES + 4}"})
    assert across.status == 206 and across.body == full.body[CHUNK_BYTES - 5 : CHUNK_BYTES + 5]
    tail = await call(url, "GET", "", headers={"Range": "bytes=-100"})
    assert tail.status == 206 and tail.body == full.body[-100:]
    unsatisfiable = await call(url, "GET", "", headers={"Range": f"bytes={len(full.body) + 10}-"})
    assert_problem(unsatisfiable, 416)
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(full.body)}"
    cached = await call(url, "GET", "", headers={"If-None-Match": full.headers["ETag"]})
    assert cached.status == 304 and cached.body == b""
    path = tmp_path / "download.mp3"
    path.write_bytes(full.body)
    assert abs(decode_mp3(path).duration_seconds - 15.0) < 0.1


@pytest.mark.gen_test(timeout=60)
async def test_record_of_another_user_or_unknown_is_404(base_url, db, user):
    user_id, token = user
    other_id, _ = await new_user(base_url, "other")
    record_id = (await upload(base_url, user_id, token, make_wav(0.2))).json["id"]
    assert_problem(await call(base_url, "GET", f"/record?id={record_id}&user={other_id}"), 404)
    assert_problem(
        await call(base_url, "GET", f"/record?id=00000000-0000-4000-8000-000000000000&user={user_id}"), 404
    )


@pytest.mark.gen_test
@LOCAL_ONLY
@pytest.mark.parametrize(
    "query",
    [
        "",
        "?id=abc&user=1",
        "?user=1",
        "?id=00000000-0000-4000-8000-000000000000",
        "?id=00000000-0000-4000-8000-000000000000&user=x",
    ],
)
async def test_malformed_download_query_is_422(base_url, db, query):
    assert_problem(await call(base_url, "GET", f"/record{query}"), 422)


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.parametrize(
    ("name", "content", "status"),
    [
        ("text file", b"hello, this is not audio at all", 415),
        ("empty file", b"", 415),
        ("RIFF but not WAVE", b"RIFF\x10\x00\x00\x00AVI LIST", 415),
        ("zero channels", wav_with_fmt(channels=0, block_align=2), 422),
        ("zero rate", wav_with_fmt(rate=0), 422),
        ("zero bits", wav_with_fmt(bits=0, block_align=2), 422),
        ("block align mismatch", wav_with_fmt(block_align=3), 422),
        ("mp3 inside wav", wav_with_fmt(tag=0x0055), 422),
        ("no audio data", wav_with_fmt(data=b""), 422),
        ("data size zero", wav_with_fmt(declared_data=0), 422),
        ("truncated fmt", b"RIFF\x20\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", 422),
        ("no data chunk", wav_with_fmt()[:36], 422),
        ("absurd rate", wav_with_fmt(rate=4_000_000), 422),
    ],
)
async def test_bad_audio_is_refused_and_leaves_nothing(base_url, db, user, app, name, content, status):
    problem = assert_problem(await upload(base_url, user[0], user[1], content), status)
    assert problem["detail"]
    assert leftovers(app) == []
    assert record_count(db) == 0


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_header_claiming_more_data_than_sent_uses_the_real_size(base_url, db, user):
    wav = make_wav(1.0, 8000, 1, 2)
    patched = wav[:40] + (10**9).to_bytes(4, "little") + wav[44:]
    assert (await upload(base_url, user[0], user[1], patched)).status == 201
    ((duration,),) = sql(db, "SELECT duration FROM records")
    assert abs(duration - 1.0) < 1e-6


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_form_errors(base_url, db, user, app):
    user_id, token = user
    wav = make_wav(0.2)
    cases = [
        (await upload(base_url, user_id, token, wav, fields={"token": token}), 422, "user"),
        (await upload(base_url, user_id, token, wav, fields={"user": "abc", "token": token}), 422, "user"),
        (await upload(base_url, user_id, token, wav, fields={"user": "-3", "token": token}), 422, "user"),
        (await upload(base_url, user_id, token, wav, fields={"user": str(user_id)}), 422, "token"),
        (await upload(base_url, user_id, token, None), 422, "file"),
        (await upload(base_url, 987654, token, wav), 404, None),
        (await upload(base_url, user_id, "00000000-0000-4000-8000-000000000000", wav), 403, None),
        (await upload(base_url, user_id, "not-a-token", wav), 403, None),
        (await upload(base_url, user_id, "\x0c ", wav), 403, None),
    ]
    for reply, status, field in cases:
        problem = assert_problem(reply, status)
        if field:
            assert problem["errors"][0]["field"] == field
    assert leftovers(app) == []
    assert record_count(db) == 0


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_body_that_is_not_multipart_is_400(base_url, db, user, app):
    assert_problem(await call(base_url, "POST", "/records", {"user": 1}), 400)
    body, content_type = multipart(
        {"user": str(user[0]), "token": user[1]}, {"file": ("a.wav", make_wav(0.2))}
    )
    truncated = body[: len(body) // 2]
    assert_problem(
        await call(base_url, "POST", "/records", raw=truncated, headers={"Content-Type": content_type}), 400
    )
    garbage = b"--nope\r\nthis is not a part\r\n"
    assert_problem(
        await call(base_url, "POST", "/records", raw=garbage, headers={"Content-Type": content_type}), 400
    )
    assert leftovers(app) == []


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(max_upload_bytes=100_000)
async def test_too_large_upload_is_413_by_content_length(base_url, db, user, app):
    problem = assert_problem(await upload(base_url, user[0], user[1], make_wav(2.0)), 413)
    assert "100000" in problem["detail"]
    assert leftovers(app) == []
    assert record_count(db) == 0


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(max_upload_bytes=100_000)
async def test_too_large_chunked_upload_is_413(base_url, db, user, app):
    body, content_type = multipart(
        {"user": str(user[0]), "token": user[1]}, {"file": ("a.wav", make_wav(2.0))}
    )

    async def produce(write):
        for start in range(0, len(body), 16_384):
            await write(body[start : start + 16_384])

    assert_problem(await post_streaming(f"{base_url}/records", content_type, produce), 413)
    assert leftovers(app) == []


@pytest.mark.gen_test(timeout=120)
@pytest.mark.settings(convert_workers=2, convert_queue=8)
async def test_concurrent_uploads_all_succeed(base_url, db, user, app):
    replies = await asyncio.gather(*(upload(base_url, user[0], user[1], make_wav(1.0)) for _ in range(8)))
    assert [reply.status for reply in replies] == [201] * 8
    assert len({reply.json["id"] for reply in replies}) == 8
    rows = dict(sql(db, "SELECT path, size FROM records"))
    assert len(rows) == 8
    assert {key: store_of(app).size(key) for key in stored_keys(app)} == rows  # one object per row
    for reply in replies:
        ((key,),) = sql(db, "SELECT path FROM records WHERE id = %s", (reply.json["id"],))
        download = await call(reply.json["url"], "GET", "")
        assert download.body == b"".join(store_of(app).read(key, 0, rows[key]))


# A store that fails. The media directory's failures (a full disk) are tests/system/test_full_disk.py's.


@pytest.mark.gen_test(timeout=60)
@pytest.mark.stores("s3")
async def test_a_put_into_a_removed_bucket_is_503_and_keeps_nothing(base_url, db, user, settings, s3_server):
    s3_server.client.delete_bucket(Bucket=settings.s3_bucket)
    try:
        reply = await upload(base_url, user[0], user[1], make_wav(0.5))
        assert "cannot be stored" in assert_problem(reply, 503)["detail"]
        assert reply.headers["Retry-After"]
        assert record_count(db) == 0
        assert scratch_files(settings.scratch_root) == []
    finally:
        s3_server.client.create_bucket(Bucket=settings.s3_bucket)  # the fixture deletes it afterwards


@pytest.mark.gen_test(timeout=60)
@pytest.mark.stores("s3")
async def test_a_store_that_lost_the_bytes_but_not_the_object_is_503(base_url, db, user, s3_server, settings):
    url = (await upload(base_url, user[0], user[1], make_wav(0.5))).json["url"]
    # SeaweedFS keeps an object's name and size in its filer and its bytes on volume servers: with
    # the bucket's volumes gone (as with a volume server down), HEAD still answers and GET fails.
    master = next(arg for arg in s3_server.process.args if arg.startswith("-master.port="))
    delete_volumes = f"http://127.0.0.1:{master.split('=')[1]}/col/delete?collection={settings.s3_bucket}"
    assert (await fetch(delete_volumes, "GET", "")).status in (200, 204)
    reply = await call(url, "GET", "")
    assert assert_problem(reply, 503)["detail"] == "the record cannot be read right now"
    assert reply.headers["Retry-After"]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.stores("s3")
@pytest.mark.settings(s3_endpoint_url="http://127.0.0.1:9")  # nothing listens there: the store is down
async def test_an_unreachable_store_is_503_for_uploads_and_downloads(base_url, db, user, settings, caplog):
    reply = await upload(base_url, user[0], user[1], make_wav(0.5))
    assert "cannot be stored" in assert_problem(reply, 503)["detail"]
    assert reply.headers["Retry-After"]
    assert record_count(db) == 0
    assert scratch_files(settings.scratch_root) == []
    # A record stored while the store was up: its download waits for the store, its delete does not.
    record_id = "00000000-0000-4000-8000-000000000001"
    sql(
        db,
        "INSERT INTO records (id, user_id, original_name, path, size, duration)"
        " VALUES (%s, %s, 'a.wav', %s, 3, 1)",
        (record_id, user[0], f"00/{record_id}.mp3"),
    )
    path = f"/record?id={record_id}&user={user[0]}"
    assert (
        assert_problem(await call(base_url, "GET", path), 503)["detail"]
        == "the record cannot be read right now"
    )
    deleted = await call(base_url, "DELETE", path, headers={"Authorization": f"Bearer {user[1]}"})
    assert deleted.status == 204  # the object is left to the orphan sweep
    assert record_count(db) == 0
    assert "cannot delete the file of a deleted record" in caplog.text


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(convert_workers=1, convert_queue=0)
async def test_full_conversion_capacity_is_503_with_retry_after(base_url, db, user, app):
    body, content_type = multipart(
        {"user": str(user[0]), "token": user[1]}, {"file": ("a.wav", make_wav(0.5))}
    )
    release = asyncio.Event()

    async def slow_producer(write):
        await write(body[:1000])
        await release.wait()
        await write(body[1000:])

    first = asyncio.ensure_future(post_streaming(f"{base_url}/records", content_type, slow_producer))
    try:
        # The first upload holds the only slot while its body trickles in.
        await poll(lambda: app.settings["conversions"].reserved == 1)
        refused = await upload(base_url, user[0], user[1], make_wav(0.2))
        problem = assert_problem(refused, 503)
        assert refused.headers["Retry-After"]
        assert "capacity" in problem["detail"]
        release.set()
        assert (await first).status == 201
    finally:
        release.set()


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(convert_timeout=0.05)
async def test_conversion_over_its_time_limit_is_killed_and_refused(base_url, db, user, app):
    problem = assert_problem(await upload(base_url, user[0], user[1], make_wav(30.0, 48000, 2, 2)), 503)
    assert "longer than" in problem["detail"]
    assert leftovers(app) == []
    assert record_count(db) == 0


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_unusable_multipart_framing_is_400(base_url, db, user, app):
    long_boundary = "b" * 300
    reply = await call(
        base_url,
        "POST",
        "/records",
        raw=f"--{long_boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={long_boundary}"},
    )
    assert_problem(reply, 400)
    fields = {f"extra{number}": "x" for number in range(20)}
    body, content_type = multipart(
        {"user": str(user[0]), "token": user[1], **fields}, {"file": ("a.wav", make_wav(0.2))}
    )
    assert_problem(
        await call(base_url, "POST", "/records", raw=body, headers={"Content-Type": content_type}), 400
    )
    assert leftovers(app) == []


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_fields_the_service_does_not_read_are_ignored(base_url, db, user):
    fields = {"user": str(user[0]), "token": user[1], "comment": "y" * 5000, "name": "take"}
    body, content_type = multipart(fields, {"file": ("a.wav", make_wav(0.2))})
    assert (
        await call(base_url, "POST", "/records", raw=body, headers={"Content-Type": content_type})
    ).status == 201


@pytest.mark.gen_test
@LOCAL_ONLY
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_on_records_are_405(base_url, db, method):
    reply = await call(base_url, method, "/records", raw=b"x" if method == "PUT" else None)
    assert_problem(reply, 405)
    assert reply.headers["Allow"] == "POST"


@pytest.mark.gen_test
@LOCAL_ONLY
async def test_undecodable_query_values_are_422(base_url, db):
    reply = await call(base_url, "GET", "/record?id=00000000-0000-4000-8000-000000000000&user=%FF")
    assert_problem(reply, 422)


def ffmpegs() -> set[int]:
    """The ffmpeg processes this process (the app runs in it) has running now, as the OS sees them."""
    running = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in child.name() and child.status() != psutil.STATUS_ZOMBIE:
                running.add(child.pid)
        except psutil.NoSuchProcess:
            continue  # it ended meanwhile
    return running


def ffmpeg_running() -> bool:
    return bool(ffmpegs())


@pytest.mark.gen_test(timeout=120)
@pytest.mark.settings(convert_workers=1, convert_queue=0)
async def test_a_client_that_leaves_during_conversion_stops_it(base_url, db, user, app, caplog):
    form = upload_form({"id": user[0], "token": user[1]}, silent_wav(480.0, 44100, 2))
    _, client = await send_partial(port_of(base_url), upload_head(form), form[0])
    await poll(lambda: ffmpeg_running())
    client.close()  # the client gives up while ffmpeg is at work: nobody will get the link
    await poll(lambda: app.settings["conversions"].reserved == 0 and not ffmpeg_running())
    # Stopped, not converted to the end and thrown away; the answer is logged a moment later.
    await poll(lambda: "POST /records 503" in caplog.text)
    assert record_count(db) == 0
    assert leftovers(app) == []


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_conversion_follows_the_upload_while_it_arrives(base_url, db, user, app, tmp_path):
    body, content_type = upload_form({"id": user[0], "token": user[1]}, make_wav(3.0, 44100, 2, 2))
    first = len(body) // 3

    async def produce(write):
        await write(body[:first])
        # Authenticated from the fields that came first, ffmpeg is at work before the rest is sent.
        await poll(lambda: ffmpeg_running())
        await write(body[first:])

    reply = await post_streaming(f"{base_url}/records", content_type, produce)
    assert reply.status == 201
    path = tmp_path / "take.mp3"
    path.write_bytes((await call(reply.json["url"], "GET", "")).body)
    assert abs(decode_mp3(path).duration_seconds - 3.0) < 0.1
    ((duration,),) = sql(db, "SELECT duration FROM records")
    assert abs(duration - 3.0) < 1e-6


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_wrong_credentials_before_the_file_are_refused_before_the_body_ends(base_url, db, user, app):
    form = upload_form({"id": user[0], "token": "00000000-0000-4000-8000-000000000000"}, make_wav(3.0))
    # A small start of the body, which the server reads whole: unread bytes would turn its close into a reset.
    answer = await stall_body(port_of(base_url), upload_head(form), form[0][:2000])
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in answer
    assert leftovers(app) == []


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_leaves_mid_upload_stops_its_conversion(base_url, db, user, app):
    form = upload_form({"id": user[0], "token": user[1]}, make_wav(30.0))
    _, client = await send_partial(port_of(base_url), upload_head(form), form[0][: len(form[0]) // 2])
    await poll(lambda: ffmpeg_running())
    client.close()
    await poll(lambda: app.settings["conversions"].reserved == 0 and not ffmpeg_running())
    assert leftovers(app) == []
    assert record_count(db) == 0


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
async def test_a_second_file_after_a_converted_one_keeps_nothing(base_url, db, user, app):
    body, content_type = upload_form({"id": user[0], "token": user[1]}, make_wav(1.0))
    boundary = content_type.split("boundary=")[1]
    second = (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.wav"\r\n\r\n').encode()
        + make_wav(0.5)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    body = body.removesuffix(f"--{boundary}--\r\n".encode()) + second
    reply = await call(base_url, "POST", "/records", raw=body, headers={"Content-Type": content_type})
    assert assert_problem(reply, 422)["errors"][0]["field"] == "file"
    assert leftovers(app) == []
    assert record_count(db) == 0


@pytest.mark.gen_test
@LOCAL_ONLY
async def test_a_large_body_with_the_wrong_method_still_gets_a_405_problem(base_url, db):
    reply = await call(base_url, "PUT", "/records", raw=b"x" * 2_000_000)
    assert_problem(reply, 405)
    assert reply.headers["Allow"] == "POST"


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(convert_workers=1, convert_queue=1)
@pytest.mark.parametrize("stalled_at", ["the WAV header", "the middle of the audio"])
async def test_a_conversion_waiting_for_a_slow_upload_gives_way(
    base_url, db, user, app, tmp_path, stalled_at
):
    body, content_type = upload_form({"id": user[0], "token": user[1]}, make_wav(2.0))
    sent = 2000 if stalled_at == "the WAV header" else len(body) // 2
    release = asyncio.Event()

    async def stalling(write):
        await write(body[:sent])
        await release.wait()
        await write(body[sent:])

    slow = asyncio.ensure_future(post_streaming(f"{base_url}/records", content_type, stalling))
    try:
        # The only conversion thread follows the slow upload.
        await poll(lambda: app.settings["conversions"].converting == 1)
        # A complete upload does not wait for the slow one: the waiting conversion gives way.
        assert (await upload(base_url, user[0], user[1], make_wav(0.5))).status == 201
        assert not slow.done()
        release.set()
        reply = await slow  # converted again from the start once its body is in
        assert reply.status == 201
    finally:
        release.set()
    path = tmp_path / "slow.mp3"
    path.write_bytes((await call(reply.json["url"], "GET", "")).body)
    assert abs(decode_mp3(path).duration_seconds - 2.0) < 0.1
    assert record_count(db) == 2


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(convert_workers=1, convert_queue=1)
async def test_a_queued_conversion_whose_client_leaves_is_dropped(base_url, db, user, app, settings):
    long = asyncio.ensure_future(upload(base_url, user[0], user[1], silent_wav(480.0, 44100, 2)))
    try:
        (long_ffmpeg,) = await poll(lambda: ffmpegs())
        # Every thread is busy: this upload is read whole, then queued; its client leaves meanwhile,
        # at whichever step the server has reached (reading the body, checking the token, queued).
        form = upload_form({"id": user[0], "token": user[1]}, make_wav(0.5))
        _, client = await send_partial(port_of(base_url), upload_head(form), form[0])
        await poll(lambda: app.settings["conversions"].reserved == 2)
        client.close()
        # Dropped, its file gone, while the long conversion still runs: never converted after it.
        await poll(
            lambda: len([path for path in scratch_files(settings.scratch_root) if path.suffix == ".wav"]) == 1
        )
        await poll(lambda: app.settings["conversions"].reserved == 1)
        assert ffmpegs() == {long_ffmpeg}  # the long conversion still runs, never this one
    finally:
        assert (await long).status == 201
    assert record_count(db) == 1
    assert len(stored_keys(app)) == 1


@pytest.mark.gen_test(timeout=60)
@LOCAL_ONLY
@pytest.mark.settings(convert_workers=1, convert_queue=1)
async def test_a_broken_upload_arriving_while_threads_are_busy_is_refused_at_once(base_url, db, user, app):
    long = asyncio.ensure_future(upload(base_url, user[0], user[1], silent_wav(480.0, 44100, 2)))
    try:
        await poll(lambda: ffmpeg_running())
        body, content_type = upload_form({"id": user[0], "token": user[1]}, make_wav(0.5))
        broken = body.removesuffix(b"--\r\n")  # no closing boundary
        reply = await call(base_url, "POST", "/records", raw=broken, headers={"Content-Type": content_type})
        assert_problem(reply, 400)
        assert ffmpeg_running()  # answered without waiting for the only thread
    finally:
        assert (await long).status == 201
