"""handlers/multipart.py: a form parsed as it streams, its limits, and what a client is told."""

from __future__ import annotations

import pytest

from converters.spool import Spool, UploadStopped
from handlers.multipart import MalformedForm, StreamingForm

BOUNDARY = "b0und4ry"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
FIELDS = ("user", "token")


def part(name: str | None, value: bytes, filename: str | None = None, headers: str = "") -> bytes:
    """One part; `name=None` leaves out the Content-Disposition header."""
    head = f"--{BOUNDARY}\r\n"
    if name is not None:
        head += f'Content-Disposition: form-data; name="{name}"'
        head += f'; filename="{filename}"' if filename is not None else ""
        head += "\r\n"
    return (head + headers + "\r\n").encode() + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def parse(
    tmp_path, data: bytes, piece: int = 0, fields: tuple[str, ...] = ("user", "token")
) -> StreamingForm:
    """Feed `data` whole, or in pieces of `piece` bytes, and finish."""
    form = StreamingForm(CONTENT_TYPE, "file", Spool(tmp_path / "upload.wav"), fields)
    for start in range(0, len(data), piece or len(data)):
        form.feed(data[start : start + (piece or len(data))])
    form.finish()
    return form


def refusal(tmp_path, data: bytes) -> str:
    with pytest.raises(MalformedForm) as refused:
        parse(tmp_path, data)
    return str(refused.value)


@pytest.mark.parametrize("piece", [0, 1, 7])
def test_fields_are_kept_and_the_file_goes_to_disk(tmp_path, piece):
    data = body(
        part("user", b"12"),
        part("other", b"dropped"),
        part("file", b"RIFF" + bytes(300), filename="take.wav", headers="Content-Type: audio/wav\r\n"),
        part("token", "ä-token".encode()),
    )
    form = parse(tmp_path, data, piece)
    assert form.fields == {"user": "12", "token": "ä-token"}
    assert (form.filename, form.file_parts, form.repeated) == ("take.wav", 1, set())
    assert form.spool.ended and form.spool.wait_for(10**6) == (304, True)
    assert (tmp_path / "upload.wav").read_bytes() == b"RIFF" + bytes(300)


def test_a_field_sent_twice_keeps_its_first_value_and_is_reported(tmp_path):
    form = parse(tmp_path, body(part("user", b"1"), part("user", b"2"), part("token", b"t")))
    assert (form.fields, form.repeated) == ({"user": "1", "token": "t"}, {"user"})
    assert (form.filename, form.file_parts, form.spool.started) == (None, 0, False)


def test_only_the_first_file_part_is_written(tmp_path):
    form = parse(tmp_path, body(part("file", b"first", "a.wav"), part("file", b"second", "b.wav")))
    assert (form.filename, form.file_parts) == ("a.wav", 2)
    assert (tmp_path / "upload.wav").read_bytes() == b"first"


def test_a_file_part_without_a_file_name_has_an_empty_one(tmp_path):
    assert parse(tmp_path, body(part("file", b"x"))).filename == ""


def test_long_file_names_are_cut_to_255_characters(tmp_path):
    assert parse(tmp_path, body(part("file", b"x", "é" * 300))).filename == "é" * 255


def test_a_field_of_1024_bytes_is_kept_and_one_longer_refused(tmp_path):
    assert parse(tmp_path, body(part("user", b"1" * 1024))).fields == {"user": "1" * 1024}
    assert refusal(tmp_path, body(part("user", b"1" * 1025))) == (
        "malformed multipart body: field 'user' is longer than 1024 bytes"
    )
    assert parse(tmp_path, body(part("notes", b"1" * 5000))).fields == {}  # not wanted: never held


def test_sixteen_parts_are_read_and_a_seventeenth_refused(tmp_path):
    assert parse(tmp_path, body(*[part("other", b"x")] * 15, part("user", b"1"))).fields == {"user": "1"}
    assert (
        refusal(tmp_path, body(*[part("other", b"x")] * 17)) == "malformed multipart body: more than 16 parts"
    )


def test_a_part_header_line_over_the_parsers_limit_is_refused(tmp_path):
    # python-multipart's default: 4,224 bytes a line.
    assert parse(tmp_path, body(part("user", b"1", headers="X-Pad: " + "p" * 4000 + "\r\n"))).fields
    assert refusal(tmp_path, body(part("user", b"1", headers="X-Pad: " + "p" * 5000 + "\r\n"))) == (
        "malformed multipart body: Maximum header size exceeded"
    )


def test_a_part_has_at_most_eight_header_lines(tmp_path):
    # python-multipart's default; Content-Disposition is the first of them.
    extra = "".join(f"X-Line-{number}: x\r\n" for number in range(7))
    assert parse(tmp_path, body(part("user", b"1", headers=extra))).fields == {"user": "1"}
    assert refusal(tmp_path, body(part("user", b"1", headers=extra + "X-Ninth: x\r\n"))) == (
        "malformed multipart body: Maximum header count exceeded"
    )


@pytest.mark.parametrize(
    "headers", ["", 'Content-Disposition: attachment; name="user"\r\n', "Content-Disposition: form-data\r\n"]
)
def test_a_part_needs_a_form_data_name(tmp_path, headers):
    assert refusal(tmp_path, body(part(None, b"1", headers=headers))) == (
        "malformed multipart body: a part has no Content-Disposition: form-data name"
    )


def test_header_names_are_matched_in_any_case_and_spacing(tmp_path):
    form = parse(
        tmp_path, body(part(None, b"7", headers='content-DISPOSITION:  form-data; name="user" \r\n'))
    )
    assert form.fields == {"user": "7"}


@pytest.mark.parametrize(
    "content_type", ["application/json", "multipart/form-data", "multipart/mixed; boundary=x", ""]
)
def test_only_multipart_form_data_with_a_boundary_is_read(tmp_path, content_type):
    with pytest.raises(MalformedForm) as refused:
        StreamingForm(content_type, "file", Spool(tmp_path / "u.wav"), ())
    assert str(refused.value) == "the body must be multipart/form-data with a boundary"


def test_an_unusable_boundary_is_refused(tmp_path):
    with pytest.raises(MalformedForm, match=r"^unusable multipart boundary: "):
        StreamingForm("multipart/form-data; boundary=" + "b" * 257, "file", Spool(tmp_path / "u.wav"), ())


def test_garbage_is_a_malformed_body(tmp_path):
    with pytest.raises(MalformedForm, match=r"^malformed multipart body: "):
        parse(tmp_path, b"--other\r\n\r\n" + bytes(100))


def test_a_body_cut_short_is_refused_and_its_file_abandoned(tmp_path):
    data = body(part("user", b"1"), part("file", b"RIFF" + bytes(100), "a.wav"))
    form = StreamingForm(CONTENT_TYPE, "file", Spool(tmp_path / "upload.wav"), ("user",))
    form.feed(data[: len(data) - 60])
    with pytest.raises(MalformedForm) as refused:
        form.finish()
    assert str(refused.value) == "the multipart body ends before its closing boundary"
    with pytest.raises(UploadStopped):
        form.spool.wait_for(10**6)


def test_closing_after_the_file_part_ended_keeps_the_file(tmp_path):
    data = body(part("file", b"RIFF", "a.wav"), part("user", b"1"))
    form = StreamingForm(CONTENT_TYPE, "file", Spool(tmp_path / "upload.wav"), ("user",))
    form.feed(data)
    form.close()
    assert form.spool.wait_for(10) == (4, True)


def test_a_form_without_a_file_leaves_the_spool_untouched(tmp_path):
    form = parse(tmp_path, body(part("user", b"1")))
    assert form.spool.wait_for(1, timeout=0) == (0, False)  # neither complete nor abandoned


def test_undecodable_bytes_are_replaced(tmp_path):
    data = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="user"\r\n\r\n'.encode()
        + b"1\xff\r\n"
        + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + b'take\xff.wav"\r\n\r\nRIFF\r\n'
        + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="'.encode()
        + b'us\xffer"\r\n\r\nx\r\n'
        + f"--{BOUNDARY}--\r\n".encode()
    )
    form = parse(tmp_path, data, fields=("user", "us\ufffder"))
    assert form.fields == {"user": "1\ufffd", "us\ufffder": "x"}
    assert form.filename == "take\ufffd.wav"
