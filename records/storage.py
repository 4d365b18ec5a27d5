"""The media directory: temporary files, crash-safe commits of finished MP3s, and clean-up."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converters.mp3 import Mp3Settings, convert_wav_to_mp3, wait_until
from converters.spool import Spool
from converters.wav import InvalidWav, WavInfo, read_wav_info

log = logging.getLogger(__name__)

TEMP_DIR_NAME = ".tmp"
HEADER_BYTES = 64 * 1024  # enough for the header of any usual WAV, so encoding can start early
LOCK_FILE_NAME = ".lock"


class MediaDirInUse(RuntimeError):
    """Another running service holds MEDIA_DIR; sharing it would let one delete the other's work."""


@dataclass(frozen=True)
class StoredAudio:
    """A finished MP3, already renamed into place."""

    record_id: uuid.UUID
    path: str  # relative to the media root
    size: int
    duration: float


class MediaStore:
    """MP3s live at `root/<2 hex>/<record uuid>.mp3`; work in progress lives in `root/.tmp`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.temp_dir = self.root / TEMP_DIR_NAME
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self._lock: int | None = None

    def prepare(self) -> int:
        """Create the directories and take the directory's lock (one service per MEDIA_DIR), then
        stop ffmpeg processes a killed predecessor left writing into the temporary directory and
        delete the temporary files it left; returns how many files. Once per service, at start-up."""
        if self._lock is None:
            self._lock = os.open(self.root / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.close()
                raise MediaDirInUse(f"{self.root} is in use by another running service") from None
        stop_processes_using(self.temp_dir)
        stale = [path for path in self.temp_dir.iterdir() if path.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d stale temporary files from %s", len(stale), self.temp_dir)
        return len(stale)

    def new_temp_path(self, suffix: str) -> Path:
        """A fresh, unused path in the temporary directory."""
        return self.temp_dir / f"{uuid.uuid4().hex}{suffix}"

    def remove_orphans(self, known: set[str]) -> int:
        """Delete MP3s no row points at (a crash between rename and insert); returns how many.
        Only safe while nothing is being stored, i.e. at start-up."""
        orphans = [
            path
            for path in self.root.glob("*/*.mp3")
            if path.parent != self.temp_dir and path.relative_to(self.root).as_posix() not in known
        ]
        for path in orphans:
            path.unlink(missing_ok=True)
        if orphans:
            log.info("removed %d MP3 files that no record points at", len(orphans))
        return len(orphans)

    def close(self) -> None:
        """Let go of the directory's lock."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def absolute(self, relative: str) -> Path:
        """The file behind a stored relative path."""
        return self.root / relative

    def load_into_memory(self, relative: str, start: int | None = None, end: int | None = None) -> None:
        """Bring a stored file's bytes `start` to `end` (a Range's, negative `start` from the end) into
        the page cache, so that reading them next does not wait on the disk."""
        # sendfile(2) to /dev/null reads the pages in without copying them anywhere: about 0.1 ms
        # for a cached 7 MB MP3. Best effort: where it fails (not Linux, a missing file),
        # StaticFileHandler reads from the disk or answers 404. O_NONBLOCK: opening a FIFO put in
        # the file's place would wait for a writer forever; only a regular file is read.
        with (
            contextlib.suppress(OSError),
            open(os.open(self.absolute(relative), os.O_RDONLY | os.O_NONBLOCK), "rb") as file,
            open(os.devnull, "wb") as sink,
        ):
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                return
            size = info.st_size
            offset = 0 if start is None else max(0, size + start) if start < 0 else start
            stop = size if end is None else min(end, size)
            while offset < stop:
                sent = os.sendfile(sink.fileno(), file.fileno(), offset, stop - offset)
                if not sent:
                    break
                offset += sent

    def remove(self, relative: str) -> None:
        """Delete a stored file if it is there."""
        self.absolute(relative).unlink(missing_ok=True)

    def commit(self, temp: Path, record_id: uuid.UUID) -> str:
        """Make `temp` durable and move it to its final name; returns the relative path. Raises
        OSError (ENOSPC on a full disk, say) and leaves no file at the final name then."""
        relative = f"{record_id.hex[:2]}/{record_id}.mp3"
        final = self.absolute(relative)
        with temp.open("rb+") as handle:
            os.fsync(handle.fileno())
        if not final.parent.exists():
            final.parent.mkdir(exist_ok=True)
            _fsync_directory(self.root)  # the new folder must survive a power loss with its file
        os.replace(temp, final)
        try:
            _fsync_directory(final.parent)
        except BaseException:
            final.unlink(missing_ok=True)  # no row will point at it: do not keep it
            raise
        return relative


def stop_processes_using(directory: Path) -> None:
    """SIGKILL processes with an argument `file:<directory>/...`: the ffmpeg children of a SIGKILLed
    server, which would go on writing there (Linux /proc; elsewhere a no-op)."""
    marker = f"file:{directory}/".encode()  # how ffmpeg_command names its output (and a spooled input)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if any(argument.startswith(marker) for argument in cmdline.read_bytes().split(b"\0")):
                pid = int(cmdline.parent.name)
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    log.warning("stopped process %d left writing into %s", pid, directory)
        except (OSError, ValueError):
            continue


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def convert_into_store(
    store: MediaStore, mp3: Mp3Settings, upload: Spool, give_way: Callable[[], bool]
) -> StoredAudio:
    """Validate the uploaded WAV, encode it, following the upload while it still arrives, and commit
    the MP3 (blocking; for the conversion pool). Raises NotWav, InvalidWav, ConversionFailed,
    ConversionInterrupted, UploadStopped, GaveWay (see convert_wav_to_mp3) or OSError (ENOSPC or
    EDQUOT when the disk is full), and leaves no file."""
    wav = _early_wav_info(upload, give_way)
    temp = store.new_temp_path(".mp3")
    try:
        convert_wav_to_mp3(mp3, upload, temp, wav, give_way)
        upload.wait_for(0)  # raises if the upload was abandoned meanwhile: nothing to commit then
        duration = read_wav_info(upload.path).duration  # of the whole file, now that it is all in
        size = temp.stat().st_size
        record_id = uuid.uuid4()
        return StoredAudio(record_id, store.commit(temp, record_id), size, duration)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _early_wav_info(upload: Spool, give_way: Callable[[], bool]) -> WavInfo:
    """The WAV's header from its first bytes. A file that is not a WAV is refused at once; other
    faults are judged on the whole file (a header chunk larger than HEADER_BYTES, say)."""
    wait_until(upload, HEADER_BYTES, give_way)
    try:
        return read_wav_info(upload.path)
    except InvalidWav:
        wait_until(upload, 2**63, give_way)  # until the upload is complete
        return read_wav_info(upload.path)
