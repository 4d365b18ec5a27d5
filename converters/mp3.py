"""WAV to MP3 with ffmpeg: a complete WAV file is ffmpeg's to read, one still growing (an upload
still arriving) is spliced into ffmpeg's stdin as it grows; the MP3 is written to a file, nothing is
held in memory, and a stuck ffmpeg is killed. An MP3 counts only when ffmpeg's own report says that
the file holds every byte it encoded. Linux only: splice(2). The pipe keeps its default 64 KiB,
which measured faster than 1 MiB (the bytes stay in the CPU caches between the two processes)."""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple, Protocol

from converters.scheduling import starting_batch_work
from converters.wav import InvalidWav, WavInfo, read_wav_info

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# A conversion that gets less than FOLLOW_BYTES of its upload in STARVED_CHECK_SECONDS (2.5 MB/s,
# a tenth of what ffmpeg takes) is mostly waiting: it gives its thread away if others need one.
FOLLOW_BYTES = 256 * 1024
STARVED_CHECK_SECONDS = 0.1
HEADER_BYTES = 64 * 1024  # enough for the header of any usual WAV, so encoding can start early
# ffmpeg's last words are kept: its statistics and errors, 2-4 KiB at -loglevel verbose.
REPORT_TAIL_BYTES = 16 * 1024
# Every byte ffmpeg encoded into the MP3, from the statistics it prints at -loglevel verbose.
MUXED = re.compile(r"Total: \d+ packets \((\d+) bytes\) muxed")
# Lines ffmpeg logs below the error level; the rest (errors, a failed assertion) are complaints.
CHATTER = re.compile(r"\[(verbose|info|warning)\]")
# A disk full to ffmpeg: it names the errno in its message, and ffmpeg 5.1 may still exit 0.
STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT)
# Layer III bitrates (kbit/s) by index, MPEG-1 and MPEG-2/2.5; sample rates of MPEG-1.
MPEG1_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MPEG2_KBPS = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
MPEG1_RATES = (44100, 48000, 32000)
LARGEST_FRAME_BYTES = 1441  # 320 kbit/s at 32 kHz

log = logging.getLogger(__name__)


class FileProgress(NamedTuple):
    """How far a growing file is: the bytes in it, and whether more will come."""

    size: int
    complete: bool


class GrowingFile(Protocol):
    """A file that may still be growing (an upload still arriving)."""

    path: Path

    def wait_for(self, size: int, timeout: float | None = None) -> FileProgress:
        """Block until the file holds `size` bytes, is complete, or `timeout` seconds pass; raises
        when the file is abandoned (its upload stopped)."""
        ...


class GaveWay(Exception):
    """The conversion stopped waiting for its input so that queued ones could have its thread."""


class ConversionFailed(ValueError):
    """ffmpeg could not decode or encode the audio (the message is for clients; the log has ffmpeg's)."""


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

    def start(self, command: list[str], feed: bool) -> subprocess.Popen[bytes]:
        """Start ffmpeg with its stderr into a pipe (never a file: the disk may be full) and, to
        `feed` it, a pipe to its stdin, unless the service is shutting down."""
        with self._lock:
            if self._closing:
                raise ConversionInterrupted("the service is shutting down")
            with starting_batch_work():
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
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


def ffmpeg_command(
    settings: Mp3Settings, target: Path, wav: WavInfo, source: Path | None = None
) -> list[str]:
    """The ffmpeg command line: the WAV read from `source`, else from stdin, as WAV whatever it is
    named; only the pipe and file protocols, no metadata copied."""
    return [
        settings.ffmpeg,
        "-nostdin",  # no keyboard interaction; the data may still come in on pipe:0
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "level+verbose",  # the statistics at the end say how many bytes the MP3 must hold
        "-protocol_whitelist",
        "pipe,file",
        "-f",
        "wav",
        "-i",
        "pipe:0" if source is None else f"file:{source}",
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


class FfmpegReport:
    """ffmpeg's stderr, read from its pipe as it comes (so ffmpeg never blocks on it): the last
    REPORT_TAIL_BYTES are kept."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd = pipe.fileno()
        os.set_blocking(self.fd, False)
        self.ended = False  # ffmpeg closed it: it has exited
        self._tail = bytearray()

    def read(self) -> None:
        """Take what ffmpeg has written so far, without waiting."""
        while not self.ended:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            self.ended = not chunk
            self._tail += chunk
            del self._tail[:-REPORT_TAIL_BYTES]

    @property
    def text(self) -> str:
        """What was kept, as text."""
        return self._tail.decode("utf-8", "replace")


def convert_wav_to_mp3(
    settings: Mp3Settings,
    source: GrowingFile,
    target: Path,
    wav: WavInfo,
    give_way: Callable[[], bool] = lambda: False,
) -> None:
    """Encode the WAV file `source` into `target` (blocking), following the file while it grows.
    ffmpeg may work for settings.timeout seconds, not counting time spent waiting for the file to
    grow. Raises ConversionFailed when ffmpeg cannot (a crash included), OSError when the MP3 is
    not complete (ENOSPC or EDQUOT when the disk is full), ConversionTimeout, ConversionInterrupted
    when the service stopped it, GaveWay when it had to wait for the file while `give_way()` said
    others need the thread, or what `source` raises (ffmpeg is killed)."""
    # A complete file is read by ffmpeg itself, as a raw ffmpeg run reads it: the pump and the
    # pipe would cost about 3 ms of the server's CPU and 2-3 ms of ffmpeg's per 30 s of audio.
    complete = source.wait_for(0).complete
    command = ffmpeg_command(settings, target, wav, source.path if complete else None)
    process = settings.running.start(command, feed=not complete)
    assert process.stderr is not None
    report = FfmpegReport(process.stderr)
    failure: BaseException | None = None
    with process.stderr:
        try:
            deadline = time.monotonic() + settings.timeout
            if not complete:
                deadline = _pump(source, process, deadline, give_way, report)
            _wait_for_exit(process, deadline, source, report)
        except BaseException as error:
            process.kill()
            process.wait()
            failure = error
    if settings.running.finish(process):
        raise ConversionInterrupted("the service is shutting down")
    if isinstance(failure, subprocess.TimeoutExpired):
        raise ConversionTimeout(f"the conversion took longer than {settings.timeout:g}s")
    if failure is not None:
        raise failure
    check_output(process.returncode, report.text, target)


def check_output(returncode: int, report: str, target: Path) -> None:
    """Raise unless ffmpeg succeeded and `target` holds every byte it says it encoded: OSError
    (ENOSPC, EDQUOT) when it could not write for want of space, ConversionFailed when it could not
    convert the audio, OSError (EIO) when the file falls short all the same. A full disk is never
    the input's fault, and ffmpeg 5.1 exits 0 when it cannot write the end of its output."""
    complaints = [line for line in report.splitlines() if line.strip() and not CHATTER.search(line)]
    for code in STORAGE_FULL:
        if any(os.strerror(code) in line for line in complaints):
            log.warning("ffmpeg could not write %s: %s", target, " | ".join(complaints[-3:]))
            raise OSError(code, f"ffmpeg could not write the MP3: {os.strerror(code)}")
    muxed = MUXED.search(report)
    encoded = int(muxed.group(1)) if muxed else None
    if returncode != 0 or encoded == 0:
        log.warning("ffmpeg exited with %d: %s", returncode, " | ".join(complaints[-3:]) or "no message")
        raise ConversionFailed("the audio could not be converted")
    size = target.stat().st_size
    expected = None if encoded is None else encoded + _header_frame_bytes(target)
    if size != expected:
        log.error("%s holds %d bytes, ffmpeg wrote %s: %s", target, size, expected, complaints[-3:])
        raise OSError(errno.EIO, f"the MP3 is incomplete ({size} of {expected} bytes)")


def _header_frame_bytes(mp3: Path) -> int:
    """The size of the Xing/Info frame ffmpeg writes before the audio (the frame count, the encoder's
    delay), which its statistics leave out; 0 when the file does not start with one."""
    with mp3.open("rb") as file:
        head = file.read(LARGEST_FRAME_BYTES)
    size = mpeg_frame_bytes(head)
    return size if size and (b"Xing" in head[:size] or b"Info" in head[:size]) else 0


def mpeg_frame_bytes(head: bytes) -> int:
    """The size of the MPEG audio layer III frame whose header starts `head`, or 0 if it is none."""
    word = int.from_bytes(head[:4], "big") if len(head) >= 4 else 0
    version, layer = (word >> 19) & 3, (word >> 17) & 3  # version 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    bitrate, rate, padding = (word >> 12) & 15, (word >> 10) & 3, (word >> 9) & 1
    if word >> 21 != 0x7FF or version == 1 or layer != 1 or bitrate in (0, 15) or rate == 3:
        return 0
    if version == 3:
        return 144_000 * MPEG1_KBPS[bitrate] // MPEG1_RATES[rate] + padding
    return 72_000 * MPEG2_KBPS[bitrate] // (MPEG1_RATES[rate] >> (2 if version == 0 else 1)) + padding


def _pump(
    source: GrowingFile,
    process: subprocess.Popen[bytes],
    deadline: float,
    give_way: Callable[[], bool],
    report: FfmpegReport,
) -> float:
    """Move the file's bytes into ffmpeg's stdin with splice(2) (no copies through Python), then
    close it; returns the deadline, moved on by the time spent waiting for the file to grow. Stops
    early, quietly, when ffmpeg stops reading (it exited). Reads ffmpeg's report between turns: an
    ffmpeg that fills its stderr pipe waits at most one turn (STARVED_CHECK_SECONDS)."""
    assert process.stdin is not None
    pipe = process.stdin.fileno()
    os.set_blocking(pipe, False)
    writable = select.poll()
    writable.register(pipe, select.POLLOUT)
    offset = 0
    with process.stdin, source.path.open("rb", buffering=0) as reader:
        while True:
            waited = time.monotonic()
            progress = wait_or_give_way(source, offset + FOLLOW_BYTES, give_way)
            deadline += time.monotonic() - waited
            report.read()
            if offset >= progress.size:
                if progress.complete:
                    return deadline
                continue
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(process.args, 0)
            try:
                offset = _splice_until(reader.fileno(), pipe, offset, progress.size, deadline, writable)
            except BrokenPipeError:
                return deadline


def _splice_until(file: int, pipe: int, offset: int, end: int, deadline: float, writable: select.poll) -> int:
    """Splice the file from `offset` towards `end` into the pipe as ffmpeg drains it, for at most
    STARVED_CHECK_SECONDS (so that the caller keeps an eye on the upload) and not past `deadline`;
    returns the offset reached."""
    # A turn per pipeful that ffmpeg drains (about 160 a minute of CD audio), each on a cold cache:
    # with a look at the upload in every turn, this thread took 120 of the server's 260 ms of CPU
    # per 5-minute upload; without, 80 of 200.
    stop = min(deadline, time.monotonic() + STARVED_CHECK_SECONDS)
    while offset < end:
        remaining = stop - time.monotonic()
        if remaining <= 0 or not writable.poll(remaining * 1000):
            break
        try:
            offset += os.splice(file, pipe, end - offset, offset_src=offset, flags=SPLICE_FLAGS)
        except BlockingIOError:
            continue
    return offset


def wait_or_give_way(source: GrowingFile, size: int, give_way: Callable[[], bool]) -> FileProgress:
    """Block until the file holds `size` bytes, is complete, or STARVED_CHECK_SECONDS pass; how far
    it is then. Raises GaveWay when it falls short while `give_way()` is true (others need the thread)."""
    progress = source.wait_for(size, STARVED_CHECK_SECONDS)
    if progress.size < size and not progress.complete and give_way():
        raise GaveWay("the conversion gave its thread to queued ones while its upload arrives")
    return progress


def wait_until(source: GrowingFile, size: int, give_way: Callable[[], bool]) -> FileProgress:
    """Block until the file holds `size` bytes or is complete, giving way as `wait_or_give_way`."""
    while True:
        progress = wait_or_give_way(source, size, give_way)
        if progress.size >= size or progress.complete:
            return progress


def _wait_for_exit(
    process: subprocess.Popen[bytes], deadline: float, source: GrowingFile, report: FfmpegReport
) -> None:
    """Wait until ffmpeg exits, reading its report meanwhile (at least every STARVED_CHECK_SECONDS,
    so that its pipe never stays full), or raise TimeoutExpired at the deadline, or what `source`
    raises once abandoned. Through a pidfd, which wakes the moment it exits, where there is one:
    Popen.wait with a timeout polls with sleeps of up to 50 ms, and the report's pipe wakes at
    each of the 40-50 lines ffmpeg logs (this thread's CPU per 1 s WAV: 2.6 ms, against 1.9)."""
    try:
        descriptor = os.pidfd_open(process.pid)
    except OSError:  # Linux before 5.3, or a container profile that forbids it
        descriptor = None
    try:
        exited = select.poll()
        exited.register(report.fd if descriptor is None else descriptor, select.POLLIN)
        while process.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(process.args, 0)
            source.wait_for(0)  # raises once the upload is abandoned
            exited.poll(min(remaining, STARVED_CHECK_SECONDS) * 1000)
            report.read()
    finally:
        if descriptor is not None:
            os.close(descriptor)
    report.read()  # the rest: ffmpeg has exited, so it is all in the pipe


class Converted(NamedTuple):
    """A finished MP3 in scratch space: its size, and the length of the audio it holds."""

    size: int
    duration: float


def convert_upload(
    settings: Mp3Settings, upload: GrowingFile, target: Path, give_way: Callable[[], bool]
) -> Converted:
    """Check the uploaded WAV's header and encode it into `target`, following the upload while it
    still arrives (blocking; for the conversion pool). Raises NotWav, InvalidWav, or what
    convert_wav_to_mp3 raises; `target` is gone then."""
    try:
        wav = _early_wav_info(upload, give_way)
        convert_wav_to_mp3(settings, upload, target, wav, give_way)
        upload.wait_for(0)  # raises if the upload was abandoned meanwhile: nothing to keep then
        duration = read_wav_info(upload.path).duration  # of the whole file, now that it is all in
        return Converted(target.stat().st_size, duration)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _early_wav_info(upload: GrowingFile, give_way: Callable[[], bool]) -> WavInfo:
    """The WAV's header from its first bytes. A file that is not a WAV is refused at once; other
    faults are judged on the whole file (a header chunk larger than HEADER_BYTES, say)."""
    wait_until(upload, HEADER_BYTES, give_way)
    try:
        return read_wav_info(upload.path)
    except InvalidWav:
        wait_until(upload, 2**63, give_way)  # until the upload is complete
        return read_wav_info(upload.path)
