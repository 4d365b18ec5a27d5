"""WAV to MP3 with ffmpeg, file to file: nothing is held in memory, and a stuck ffmpeg is killed."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from converters.wav import WavInfo

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class ConversionFailed(ValueError):
    """ffmpeg could not decode or encode the audio."""


class ConversionInterrupted(RuntimeError):
    """The service stopped ffmpeg (shutting down, or a time limit): not the input's fault."""


class ConversionTimeout(ConversionInterrupted):
    """ffmpeg ran longer than allowed and was killed."""


class RunningConversions:
    """The ffmpeg processes one service runs, so that its shutdown can stop them and refuse more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopped: set[subprocess.Popen[bytes]] = set()
        self._closing = False

    def start(self, command: list[str]) -> subprocess.Popen[bytes]:
        """Start ffmpeg, unless the service is shutting down."""
        with self._lock:
            if self._closing:
                raise ConversionInterrupted("the service is shutting down")
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self._running.add(process)
            return process

    def finish(self, process: subprocess.Popen[bytes]) -> bool:
        """Forget a finished process; True when `stop_all` killed it."""
        with self._lock:
            self._running.discard(process)
            return process in self._stopped

    def stop_all(self) -> int:
        """SIGKILL every running ffmpeg and refuse new ones (at shutdown, after the grace period)."""
        with self._lock:
            self._closing = True
            processes = list(self._running)
            self._stopped.update(processes)
        for process in processes:
            process.kill()
        return len(processes)


@dataclass(frozen=True)
class Mp3Settings:
    """How MP3s are made."""

    ffmpeg: str
    bitrate: str
    timeout: float
    running: RunningConversions = field(default_factory=RunningConversions, compare=False)


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
    """Encode `source` into `target` (blocking). Raises ConversionFailed when ffmpeg cannot (a crash
    included), ConversionTimeout, or ConversionInterrupted when the service stopped it."""
    process = settings.running.start(ffmpeg_command(settings, source, target, wav))
    try:
        _, errors = process.communicate(timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ConversionTimeout(f"the conversion took longer than {settings.timeout:g}s") from None
    finally:
        stopped = settings.running.finish(process)
    if stopped:
        raise ConversionInterrupted("the service is shutting down")
    if process.returncode != 0 or not target.exists() or target.stat().st_size == 0:
        message = errors.decode("utf-8", "replace").strip().splitlines()
        reason = message[-1] if message else f"ffmpeg exited with {process.returncode}"
        raise ConversionFailed(f"the audio could not be converted: {reason}")
