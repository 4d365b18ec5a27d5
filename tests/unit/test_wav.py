"""converters/wav.py: what a WAV header must say, and what a client is told when it does not."""

from __future__ import annotations

import os
import struct

import pytest

from converters.wav import InvalidWav, NotWav, WavInfo, read_wav_info


def chunk(kind: bytes, body: bytes, declared: int | None = None) -> bytes:
    """One RIFF chunk, padded to an even size; `declared` overrides the size field."""
    size = len(body) if declared is None else declared
    return kind + struct.pack("<I", size) + body + (b"\x00" if len(body) % 2 else b"")


def fmt(tag: int = 1, channels: int = 1, rate: int = 8000, bits: int = 16, align: int | None = None) -> bytes:
    """A 16-byte fmt chunk body."""
    align = channels * bits // 8 if align is None else align
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def extensible(
    sub_format: int = 1, channels: int = 2, bits: int = 16, size: int = 40, cb_size: int = 22
) -> bytes:
    """A WAVE_FORMAT_EXTENSIBLE fmt body cut to `size` bytes (40 is the full one)."""
    body = fmt(0xFFFE, channels, 48000, bits) + struct.pack("<HHI", cb_size, bits, 3)
    body += struct.pack("<H", sub_format) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return body[:size]


def riff(*chunks: bytes) -> bytes:
    """A RIFF/WAVE file of these chunks."""
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def info(tmp_path, data: bytes) -> WavInfo:
    path = tmp_path / "upload.wav"
    path.write_bytes(data)
    return read_wav_info(path)


def refusal(tmp_path, data: bytes) -> str:
    """The message of the InvalidWav this file gets."""
    with pytest.raises(InvalidWav) as refused:
        info(tmp_path, data)
    return str(refused.value)


def test_a_plain_pcm_file_is_read_exactly(tmp_path):
    wav = info(tmp_path, riff(chunk(b"fmt ", fmt(1, 2, 44100, 16)), chunk(b"data", bytes(44100 * 4))))
    assert wav == WavInfo(1, 2, 44100, 16, 4, 44100 * 4)
    assert wav.duration == 1.0


@pytest.mark.parametrize("head", [b"", b"RIFF", b"RIFX\x04\x00\x00\x00WAVE", b"RIFF\x04\x00\x00\x00AVI "])
def test_anything_but_riff_wave_is_not_a_wav(tmp_path, head):
    with pytest.raises(NotWav, match=r"^the file is not a RIFF/WAVE file$"):
        info(tmp_path, head + bytes(100) if head else b"")


def test_the_magic_is_checked_at_its_own_offsets(tmp_path):
    with pytest.raises(NotWav):
        info(tmp_path, b"xRIFF\x00\x00\x00WAVE" + chunk(b"fmt ", fmt()) + chunk(b"data", bytes(16)))


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([], "the file has no fmt chunk"),
        ([chunk(b"LIST", bytes(10))], "the file has no fmt chunk"),
        ([chunk(b"fmt ", fmt())], "the file has no data chunk"),
        ([chunk(b"data", bytes(16)), chunk(b"fmt ", fmt())], "the data chunk comes before the fmt chunk"),
        ([chunk(b"fmt ", fmt()[:14])], "the fmt chunk is truncated"),
        ([chunk(b"fmt ", fmt(), declared=15)], "the fmt chunk is truncated"),
        ([chunk(b"fmt ", fmt()), chunk(b"data", b"")], "the file holds no audio data"),
        ([chunk(b"fmt ", fmt()), chunk(b"data", b"\x01")], "the file holds no audio data"),
        ([chunk(b"fmt ", fmt()), chunk(b"data", bytes(100), declared=0)], "the file holds no audio data"),
    ],
    ids=[
        "empty",
        "no fmt",
        "no data",
        "data first",
        "short fmt",
        "fmt size 15",
        "no bytes",
        "1 byte",
        "size 0",
    ],
)
def test_broken_layouts_are_refused_with_their_reason(tmp_path, chunks, message):
    assert refusal(tmp_path, riff(*chunks)) == message


def test_just_the_riff_header_has_no_fmt_chunk(tmp_path):
    assert refusal(tmp_path, b"RIFF\x04\x00\x00\x00WAVE") == "the file has no fmt chunk"


def test_a_fmt_chunk_cut_by_the_end_of_the_file_is_truncated(tmp_path):
    assert refusal(tmp_path, riff(chunk(b"fmt ", fmt()))[:-6]) == "the fmt chunk is truncated"


def test_a_data_chunk_header_that_ends_the_file_holds_no_audio(tmp_path):
    assert refusal(tmp_path, riff(chunk(b"fmt ", fmt())) + b"data\x10\x00\x00\x00") == (
        "the file holds no audio data"
    )


def read_or_refused(tmp_path, data: bytes, ok: bool, read, value, message: str) -> None:
    """Either the header is read and `read(info)` is `value`, or it is refused with `message`."""
    if ok:
        assert read(info(tmp_path, data)) == value
    else:
        assert refusal(tmp_path, data) == message


@pytest.mark.parametrize(("channels", "ok"), [(0, False), (1, True), (8, True), (9, False)])
def test_one_to_eight_channels(tmp_path, channels, ok):
    data = riff(chunk(b"fmt ", fmt(channels=channels)), chunk(b"data", bytes(160)))
    message = f"{channels} channels; expected 1 to 8"
    read_or_refused(tmp_path, data, ok, lambda wav: wav.channels, channels, message)


@pytest.mark.parametrize(("rate", "ok"), [(7999, False), (8000, True), (192000, True), (192001, False)])
def test_8_to_192_khz(tmp_path, rate, ok):
    data = riff(chunk(b"fmt ", fmt(rate=rate)), chunk(b"data", bytes(160)))
    message = f"sample rate {rate} Hz; expected 8000 to 192000"
    read_or_refused(tmp_path, data, ok, lambda wav: wav.sample_rate, rate, message)


@pytest.mark.parametrize(
    ("tag", "bits", "ok"),
    [
        (1, 8, True),
        (1, 16, True),
        (1, 24, True),
        (1, 32, True),
        (1, 12, False),
        (1, 64, False),
        (3, 32, True),
        (3, 64, True),
        (3, 16, False),
        (6, 8, True),
        (6, 16, False),
        (7, 8, True),
        (7, 16, False),
    ],
)
def test_bits_per_sample_must_suit_the_codec(tmp_path, tag, bits, ok):
    data = riff(chunk(b"fmt ", fmt(tag=tag, bits=bits)), chunk(b"data", bytes(240)))
    message = f"{bits} bits per sample is not valid for codec 0x{tag:04x}"
    read_or_refused(tmp_path, data, ok, lambda wav: (wav.format_tag, wav.bits), (tag, bits), message)


@pytest.mark.parametrize("tag", [0, 2, 0x55, 0xFFFF])
def test_other_codecs_are_refused_by_name(tmp_path, tag):
    data = riff(chunk(b"fmt ", fmt(tag=tag)), chunk(b"data", bytes(16)))
    assert refusal(tmp_path, data) == (
        f"codec 0x{tag:04x} is not supported; send PCM, IEEE float, A-law or mu-law"
    )


def test_block_align_must_match_the_frame(tmp_path):
    data = riff(chunk(b"fmt ", fmt(channels=2, bits=16, align=2)), chunk(b"data", bytes(16)))
    assert refusal(tmp_path, data) == "block align 2 does not match 2 channels of 16 bits"


@pytest.mark.parametrize("cb_size", [22, 0xFFFF])  # ffmpeg reads what the chunk holds of a larger one
def test_extensible_headers_are_read_by_their_sub_format(tmp_path, cb_size):
    data = riff(chunk(b"fmt ", extensible(cb_size=cb_size)), chunk(b"data", bytes(400)))
    assert info(tmp_path, data) == WavInfo(1, 2, 48000, 16, 4, 400)


def test_bytes_after_an_extensible_header_are_skipped(tmp_path):
    data = riff(chunk(b"fmt ", extensible() + bytes(8)), chunk(b"data", bytes(400)))
    assert info(tmp_path, data) == WavInfo(1, 2, 48000, 16, 4, 400)


@pytest.mark.parametrize("size", [16, 18, 24, 25, 26, 39])
def test_a_short_extensible_header_is_truncated(tmp_path, size):
    data = riff(chunk(b"fmt ", extensible(size=size)), chunk(b"data", bytes(400)))
    assert refusal(tmp_path, data) == "the extensible fmt chunk is truncated"


@pytest.mark.parametrize("cb_size", [0, 21])
def test_an_extension_shorter_than_its_22_bytes_is_truncated(tmp_path, cb_size):
    data = riff(chunk(b"fmt ", extensible(cb_size=cb_size)), chunk(b"data", bytes(400)))
    assert refusal(tmp_path, data) == "the extensible fmt chunk is truncated"


@pytest.mark.parametrize("at", [26, 27, 30, 39])
def test_an_extensible_sub_format_guid_must_end_as_the_standard_ones(tmp_path, at):
    body = bytearray(extensible())
    body[at] ^= 0x01
    data = riff(chunk(b"fmt ", bytes(body)), chunk(b"data", bytes(400)))
    assert refusal(tmp_path, data) == "the extensible fmt chunk names an unknown sub-format GUID"


def test_an_extensible_header_with_an_unsupported_sub_format_names_it(tmp_path):
    data = riff(chunk(b"fmt ", extensible(sub_format=0x55)), chunk(b"data", bytes(400)))
    assert refusal(tmp_path, data).startswith("codec 0x0055 is not supported")


def test_odd_sized_chunks_are_followed_past_their_pad_byte(tmp_path):
    data = riff(chunk(b"LIST", b"abc"), chunk(b"fmt ", fmt()), chunk(b"junk", b"x"), chunk(b"data", bytes(8)))
    assert info(tmp_path, data).data_bytes == 8


def test_the_data_size_is_what_the_file_holds(tmp_path):
    head = riff(chunk(b"fmt ", fmt(channels=2)))
    assert info(tmp_path, head + b"data" + struct.pack("<I", 1000) + bytes(401)).data_bytes == 400
    trailer = chunk(b"LIST", bytes(64))
    assert info(tmp_path, head + chunk(b"data", bytes(100)) + trailer).data_bytes == 100


def test_a_partial_last_frame_is_dropped(tmp_path):
    wav = info(tmp_path, riff(chunk(b"fmt ", fmt(channels=2, bits=24)), chunk(b"data", bytes(6 * 10 + 5))))
    assert (wav.block_align, wav.data_bytes) == (6, 60)


def test_a_streaming_header_of_unknown_size_takes_the_rest_of_the_file(tmp_path):
    head = riff(chunk(b"fmt ", fmt()))
    assert info(tmp_path, head + b"data\xff\xff\xff\xff" + bytes(3201)).data_bytes == 3200
    assert info(tmp_path, head + b"data\xfe\xff\xff\xff" + bytes(3201)).data_bytes == 3200


def test_duration_counts_frames_at_the_rate(tmp_path):
    wav = info(tmp_path, riff(chunk(b"fmt ", fmt(1, 2, 8000, 16)), chunk(b"data", bytes(8000))))
    assert wav.duration == 0.25


def test_one_byte_of_8_bit_mono_is_audio(tmp_path):
    wav = info(tmp_path, riff(chunk(b"fmt ", fmt(bits=8)), chunk(b"data", b"\x80")))
    assert (wav.block_align, wav.data_bytes) == (1, 1)


def test_an_extensible_sub_format_is_read_unsigned(tmp_path):
    data = riff(chunk(b"fmt ", extensible(sub_format=0xFFFE)), chunk(b"data", bytes(400)))
    assert refusal(tmp_path, data).startswith("codec 0xfffe is not supported")


def test_a_streaming_header_over_4_gib_takes_the_whole_file(tmp_path):
    path = tmp_path / "long.wav"
    head = riff(chunk(b"fmt ", fmt())) + b"data\xff\xff\xff\xff"
    path.write_bytes(head)
    os.truncate(path, len(head) + 2**32 + 16)  # sparse: no disk space used
    assert read_wav_info(path).data_bytes == 2**32 + 16
