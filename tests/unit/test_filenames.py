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
        ("take.wav", 'attachment; filename="take.mp3"'),
        ("", 'attachment; filename="record.mp3"'),
        ("semi;colon.wav", "attachment; filename=\"semi_colon.mp3\"; filename*=UTF-8''semi%3Bcolon.mp3"),
        ("Größe.wav", "attachment; filename=\"Gr__e.mp3\"; filename*=UTF-8''Gr%C3%B6%C3%9Fe.mp3"),
    ],
)
def test_content_disposition_follows_rfc_6266(original, header):
    assert content_disposition(original) == header
