"""handlers/filenames.py: a client's file name kept as safe metadata, and the download's name."""

from __future__ import annotations

import pytest

from handlers.filenames import content_disposition, sanitize_filename


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("take.wav", "take.wav"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\song.wav", "song.wav"),
        ("bad\x00name\x1f.wav", "badname.wav"),
        ('quote"d.wav', "quoted.wav"),
        ("line\r\nbreak.wav", "linebreak.wav"),
        ("", ""),
        (None, ""),
        ("..", ""),
    ],
)
def test_client_file_names_are_sanitised(raw, clean):
    assert sanitize_filename(raw) == clean


def test_very_long_names_are_cut():
    assert len(sanitize_filename("a" * 10_000 + ".wav")) == 255
    assert content_disposition("a" * 10_000) == f'attachment; filename="{"a" * 120}.mp3"'


@pytest.mark.parametrize(
    ("original", "header"),
    [
        # RFC 6266: an ASCII `filename`, plus `filename*` when the name has other characters.
        ("take.wav", 'attachment; filename="take.mp3"'),
        ("", 'attachment; filename="record.mp3"'),
        ("semi;colon.wav", "attachment; filename=\"semi_colon.mp3\"; filename*=UTF-8''semi%3Bcolon.mp3"),
        ("Größe.wav", "attachment; filename=\"Gr__e.mp3\"; filename*=UTF-8''Gr%C3%B6%C3%9Fe.mp3"),
        # The stem is kept whole; what the ASCII name cannot hold is escaped.
        ("my take.wav", 'attachment; filename="my take.mp3"'),
        ("Xmas X.wav", 'attachment; filename="Xmas X.mp3"'),
        ("a.b.c.wav", 'attachment; filename="a.b.c.mp3"'),
        ("take..wav", 'attachment; filename="take.mp3"'),
        (" .hidden", 'attachment; filename="record.mp3"'),
        ("a\x7fb.wav", "attachment; filename=\"a_b.mp3\"; filename*=UTF-8''a%7Fb.mp3"),
        ('say "hi"\\.wav', "attachment; filename=\"say _hi__.mp3\"; filename*=UTF-8''say%20%22hi%22%5C.mp3"),
        ("AC/DC é.wav", "attachment; filename=\"AC/DC _.mp3\"; filename*=UTF-8''AC%2FDC%20%C3%A9.mp3"),
    ],
)
def test_content_disposition_follows_rfc_6266_and_keeps_the_stem(original, header):
    assert content_disposition(original) == header


@pytest.mark.parametrize(
    ("raw", "clean"), [("Xmas.wav", "Xmas.wav"), ("X.", "X"), (" take.wav. ", "take.wav")]
)
def test_only_spaces_and_dots_are_trimmed(raw, clean):
    assert sanitize_filename(raw) == clean
