"""WAV files and multipart bodies for the upload tests, and decoding what the service returns."""

from __future__ import annotations

import io
import math
import struct
import uuid
import warnings
import wave
from pathlib import Path

from converters.ffmpeg import find_ffmpeg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pydub import AudioSegment


def make_wav(seconds: float = 1.0, rate: int = 44100, channels: int = 2, sample_bytes: int = 2) -> bytes:
    """A sine tone as a WAV file, written by the standard library's `wave` module."""
    frames = int(seconds * rate)
    peak = 2 ** (8 * sample_bytes - 1) - 1
    samples = bytearray()
    for index in range(frames):
        value = int(peak * 0.5 * math.sin(2 * math.pi * 440 * index / rate))
        if sample_bytes == 1:
            encoded = bytes([value + 128])
        else:
            encoded = value.to_bytes(sample_bytes, "little", signed=True)
        samples += encoded * channels
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(sample_bytes)
        wav.setframerate(rate)
        wav.writeframes(bytes(samples))
    return buffer.getvalue()


def silent_wav(seconds: float, rate: int = 48000, channels: int = 2) -> bytes:
    """A long 16-bit WAV made fast: silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(int(seconds * rate) * channels * 2))
    return buffer.getvalue()


def wav_with_fmt(
    tag: int = 1,
    channels: int = 1,
    rate: int = 8000,
    bits: int = 16,
    block_align: int | None = None,
    data: bytes = b"\x00\x01" * 800,
    declared_data: int | None = None,
) -> bytes:
    """A WAV built by hand, so its header can say anything."""
    align = channels * bits // 8 if block_align is None else block_align
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    size = len(data) if declared_data is None else declared_data
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, content) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload_form(user: dict[str, object], wav: bytes, filename: str = "a.wav") -> tuple[bytes, str]:
    """The POST /records body for a user (as POST /users answered it) and a WAV."""
    return multipart({"user": str(user["id"]), "token": str(user["token"])}, {"file": (filename, wav)})


def decode_mp3(path: Path) -> AudioSegment:
    """Decode an MP3 with pydub over the same ffmpeg the service uses."""
    AudioSegment.converter = find_ffmpeg(None)
    return AudioSegment.from_file(path, format="mp3", codec="mp3")
