"""Finding the ffmpeg binary."""

from __future__ import annotations

import shutil


class FfmpegMissing(RuntimeError):
    """No usable ffmpeg binary was found."""


def find_ffmpeg(configured: str | None) -> str:
    """FFMPEG_BINARY if set, else ffmpeg on PATH, else the binary the imageio-ffmpeg wheel ships."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise FfmpegMissing(f"FFMPEG_BINARY={configured!r} is not an executable")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg  # only on machines without a system ffmpeg
    except ImportError:
        raise FfmpegMissing("ffmpeg not found: install it or set FFMPEG_BINARY") from None
    binary: str = imageio_ffmpeg.get_ffmpeg_exe()
    return binary
