"""Error details are for clients: plain words, never ffmpeg's output or a path; the log keeps those."""

from __future__ import annotations

import math
import os
import struct

import pytest

from tests.audio import make_wav, upload_form, wav_with_fmt
from tests.support import assert_problem, call, post_form, scratch_files, sql


@pytest.fixture
def user(base_url, db, io_loop) -> dict[str, object]:
    return io_loop.run_sync(lambda: call(base_url, "POST", "/users", {"name": "uploader"})).json


@pytest.mark.gen_test(timeout=60)
async def test_audio_ffmpeg_cannot_encode_is_a_plain_422(base_url, db, user, settings, caplog):
    # Float samples that are all NaN: LAME fails an assertion (ffmpeg 5.1) or an allocation (9.0).
    nan = wav_with_fmt(tag=3, bits=32, data=struct.pack("<f", math.nan) * 8000)
    problem = assert_problem(await post_form(base_url, upload_form(user, nan)), 422)
    assert problem["detail"] == "the audio could not be converted"
    assert "ffmpeg exited with" in caplog.text  # with what ffmpeg said
    assert sql(db, "SELECT count(*) FROM records") == [(0,)]
    assert not scratch_files(settings.scratch_root)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("replacement", ["nothing", "a folder", "a FIFO"])
async def test_a_record_whose_file_is_not_a_regular_file_is_a_plain_404(
    base_url, db, user, settings, caplog, replacement
):
    url = (await post_form(base_url, upload_form(user, make_wav(0.5)))).json["url"]
    ((path,),) = sql(db, "SELECT path FROM records")
    stored = settings.media_root / path
    stored.unlink()
    if replacement == "a folder":
        stored.mkdir()
    elif replacement == "a FIFO":
        os.mkfifo(stored)  # opening it would block until a writer comes: it must never be opened
    for method in ("GET", "HEAD"):
        reply = await call(url, method, "", timeout=10)
        assert reply.status == 404
    problem = assert_problem(await call(url, "GET", "", timeout=10), 404)
    assert problem["detail"] == "this record's audio file is missing"
    assert path in caplog.text
