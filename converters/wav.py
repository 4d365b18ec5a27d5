"""Validating a WAV file from its own bytes: RIFF/WAVE magic, the fmt chunk, the real data size."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PCM, IEEE_FLOAT, ALAW, MULAW, EXTENSIBLE = 0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE
ACCEPTED_BITS = {PCM: {8, 16, 24, 32}, IEEE_FLOAT: {32, 64}, ALAW: {8}, MULAW: {8}}
MAX_CHANNELS = 8
MIN_RATE, MAX_RATE = 8_000, 192_000
UNKNOWN_SIZE = 0xFFFFFFFF
# An extensible header names its codec by a GUID: the 2-byte format tag, then this fixed tail
# (KSDATAFORMAT_SUBTYPE_*). ffmpeg cannot decode a sub-format whose GUID ends otherwise.
SUBTYPE_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


class NotWav(ValueError):
    """The file is not a RIFF/WAVE file at all."""


class InvalidWav(ValueError):
    """The file says it is a WAV, but its header is broken or unsupported."""


@dataclass(frozen=True)
class WavInfo:
    """What the header says, checked against the file."""

    format_tag: int
    channels: int
    sample_rate: int
    bits: int
    block_align: int
    data_bytes: int  # what the file really holds, whatever the header claims

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.data_bytes / (self.sample_rate * self.block_align)


def read_wav_info(path: Path) -> WavInfo:
    """Read and check the header of the WAV at `path`; raises NotWav or InvalidWav."""
    size = path.stat().st_size
    with path.open("rb") as wav:
        head = wav.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            raise NotWav("the file is not a RIFF/WAVE file")
        fmt: tuple[int, int, int, int, int] | None = None
        position = 12
        while position + 8 <= size:
            wav.seek(position)
            chunk_id, chunk_size = struct.unpack("<4sI", wav.read(8))
            body = position + 8
            if chunk_id == b"fmt ":
                raw = wav.read(min(chunk_size, 40))  # the extensible fmt is the longest we read
                fmt = _parse_fmt(raw, chunk_size)
            elif chunk_id == b"data":
                if fmt is None:
                    raise InvalidWav("the data chunk comes before the fmt chunk")
                return _info(fmt, chunk_size, size - body)
            position = body + chunk_size + (chunk_size & 1)
    raise InvalidWav("the file has no data chunk" if fmt else "the file has no fmt chunk")


def _parse_fmt(raw: bytes, declared: int) -> tuple[int, int, int, int, int]:
    if declared < 16 or len(raw) < 16:
        raise InvalidWav("the fmt chunk is truncated")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", raw[:16])
    if tag == EXTENSIBLE:
        # ffmpeg reads the extension only when the chunk and its cbSize field hold all 22 bytes.
        if len(raw) < 40 or struct.unpack("<H", raw[16:18])[0] < 22:
            raise InvalidWav("the extensible fmt chunk is truncated")
        if raw[26:] != SUBTYPE_GUID_TAIL:  # the GUID ends the 40 bytes read
            raise InvalidWav("the extensible fmt chunk names an unknown sub-format GUID")
        tag = struct.unpack("<H", raw[24:26])[0]
    if tag not in ACCEPTED_BITS:
        raise InvalidWav(f"codec 0x{tag:04x} is not supported; send PCM, IEEE float, A-law or mu-law")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidWav(f"{channels} channels; expected 1 to {MAX_CHANNELS}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidWav(f"sample rate {rate} Hz; expected {MIN_RATE} to {MAX_RATE}")
    if bits not in ACCEPTED_BITS[tag]:
        raise InvalidWav(f"{bits} bits per sample is not valid for codec 0x{tag:04x}")
    # Equivalent mutants: bits is a multiple of 8 by now, so / and // agree.
    frame = channels * bits // 8  # pragma: no mutate
    if block_align != frame:
        raise InvalidWav(f"block align {block_align} does not match {channels} channels of {bits} bits")
    return tag, channels, rate, bits, block_align


def _info(fmt: tuple[int, int, int, int, int], declared: int, available: int) -> WavInfo:
    tag, channels, rate, bits, block_align = fmt
    data_bytes = available if declared == UNKNOWN_SIZE else min(declared, available)
    data_bytes -= data_bytes % block_align
    if data_bytes <= 0:
        raise InvalidWav("the file holds no audio data")
    return WavInfo(tag, channels, rate, bits, block_align, data_bytes)
