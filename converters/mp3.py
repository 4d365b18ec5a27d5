"""WAV to MP3 with ffmpeg, file to file: nothing is held in memory, and a stuck ffmpeg is killed."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from converters.wav import WavInfo

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class ConversionFailed(ValueError):
    """ffmpeg could not decode or encode the audio."""


class ConversionInterrupted(RuntimeError):
    """ffmpeg was stopped from outside (a signal, the service shutting down): not the input's fault."""


class ConversionTimeout(ConversionInterrupted):
    """ffmpeg ran longer than allowed and was killed."""


_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()


def kill_running_conversions() -> int:
    """SIGKILL every ffmpeg this process is running (at shutdown, once the grace period is over)."""
    with _running_lock:
        processes = list(_running)
    for process in processes:
        process.kill()
    return len(processes)


@dataclass(frozen=True)
class Mp3Settings:
    """How MP3s are made."""

    ffmpeg: str
    bitrate: str
    timeout: float


def mp3_sample_rate(rate: int) -> int:
    """The WAV's own rate when MP3 has it, else the nearest rate MP3 has."""
    return min(MP3_RATES, key=lambda candidate: (abs(candidate - rate), candidate))


def ffmpeg_command(settings: Mp3Settings, source: Path, target: Path, wav: WavInfo) -> list[str]:
    """The ffmpeg command line: input format forced, only the file protocol, no metadata copied."""
    return [
        settings.ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file",
        "-f",
        "wav",
        "-i",
        f"file:{source}",
        "-map",
        "0:a:0",
        "-map_metadata",
        "-1",
        "-codec:a",
        "libmp3lame",
        "-b:a",
        settings.bitrate,
        "-ac",
        str(min(wav.channels, 2)),
        "-ar",
        str(mp3_sample_rate(wav.sample_rate)),
        "-id3v2_version",
        "0",
        "-f",
        "mp3",
        "-y",
        f"file:{target}",
    ]


def convert_wav_to_mp3(settings: Mp3Settings, source: Path, target: Path, wav: WavInfo) -> None:
    """Encode `source` into `target` (blocking); raises ConversionFailed or ConversionTimeout."""
    process = subprocess.Popen(
        ffmpeg_command(settings, source, target, wav),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    with _running_lock:
        _running.add(process)
    try:
        _, errors = process.communicate(timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ConversionTimeout(f"the conversion took longer than {settings.timeout:g}s") from None
    finally:
        with _running_lock:
            _running.discard(process)
    if process.returncode < 0:
        raise ConversionInterrupted(f"the conversion was stopped (signal {-process.returncode})")
    if process.returncode != 0 or not target.exists() or target.stat().st_size == 0:
        message = errors.decode("utf-8", "replace").strip().splitlines()
        reason = message[-1] if message else f"ffmpeg exited with {process.returncode}"
        raise ConversionFailed(f"the audio could not be converted: {reason}")
