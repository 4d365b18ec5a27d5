"""Client file names: kept only as sanitised metadata, used for the download's file name."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

MAX_STEM_CHARS = 120
FALLBACK_STEM = "record"


def sanitize_filename(name: str | None) -> str:
    """The last path component of a client's file name, without control or separator characters."""
    if not name:
        return ""
    base = re.split(r"[/\\]", name)[-1]
    cleaned = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C" and ch not in '"')
    return cleaned.strip(" .")[:255]


def download_stem(original_name: str) -> str:
    """The download's name without extension: the upload's stem, or a fallback."""
    stem = original_name.rsplit(".", 1)[0]
    return stem.strip(" .")[:MAX_STEM_CHARS] or FALLBACK_STEM


def content_disposition(original_name: str) -> str:
    """An RFC 6266 attachment header: an ASCII `filename` plus `filename*` for any other characters."""
    stem = download_stem(original_name)
    ascii_stem = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_" for ch in stem)
    header = f'attachment; filename="{ascii_stem}.mp3"'
    if ascii_stem != stem:
        header += f"; filename*=UTF-8''{quote(stem + '.mp3', safe='')}"
    return header
