"""Scratch space: each running instance has a folder of its own for uploads and MP3s in progress.

Instances may share the parent folder (one MEDIA_DIR on a shared volume). Each holds an exclusive
lock on its own folder's lock file for as long as it runs, so a folder whose lock can be taken
belongs to an instance that has died: only such folders are cleaned up, never another live
instance's work."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

OLD_STYLE = re.compile(r"[0-9a-f]{32}\.(wav|mp3)")


class Scratch:
    """This instance's scratch folder, `parent/<host>-<pid>-<random>/`, locked while it lives."""

    def __init__(self, parent: Path) -> None:
        parent = parent.resolve()
        parent.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # The lock first, then the folder: a sweep only ever looks at folders with a lock file.
        self._lock: int | None = _locked(parent / f"{name}.lock")
        self.path = parent / name
        self.path.mkdir()

    def new_path(self, suffix: str) -> Path:
        """A fresh, unused path in this instance's folder."""
        return self.path / f"{uuid.uuid4().hex}{suffix}"

    def close(self) -> None:
        """Remove the folder and let go of its lock (at shutdown)."""
        if self._lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            lock_file = self.path.with_name(f"{self.path.name}.lock")
            lock_file.unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None


def sweep_dead_instances(parent: Path) -> int:
    """Remove the scratch folders of instances that are no longer running (their lock is free),
    after stopping any ffmpeg such an instance left writing there; returns how many folders."""
    if not parent.is_dir():
        return 0
    removed = 0
    for lock_file in parent.glob("*.lock"):
        with contextlib.suppress(FileNotFoundError):
            lock = _locked(lock_file, wait=False)
            if lock is None:
                continue  # a live instance
            try:
                folder = lock_file.with_suffix("")
                stop_processes_using(folder)
                shutil.rmtree(folder, ignore_errors=True)
                lock_file.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(lock)
    for leftover in parent.iterdir():  # the flat files of versions before per-instance folders
        if OLD_STYLE.fullmatch(leftover.name):
            leftover.unlink(missing_ok=True)
    if removed:
        log.info("removed the scratch folders of %d stopped instances", removed)
    return removed


def stop_processes_using(folder: Path) -> None:
    """SIGKILL processes with an argument `file:<folder>/...`: the ffmpeg children of a SIGKILLed
    instance, which would go on writing there (Linux /proc, this machine only; elsewhere a no-op)."""
    marker = f"file:{folder}/".encode()  # how ffmpeg_command names its output and a file input
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if any(argument.startswith(marker) for argument in cmdline.read_bytes().split(b"\0")):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
                log.warning("stopped process %s left writing into %s", cmdline.parent.name, folder)
        except (OSError, ValueError):
            continue


def _locked(path: Path, wait: bool = True) -> int | None:
    """An open descriptor holding an exclusive lock on `path`; None when another holds it (`wait`
    False). A fresh instance's own lock is contended only by a sweep that found it unlocked for
    a moment, which then deletes it: the lock is taken on a file that is still `path`, or not at all."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                return descriptor
        except BlockingIOError:
            os.close(descriptor)
            return None
        except FileNotFoundError:
            if not wait:
                os.close(descriptor)
                raise
        os.close(descriptor)  # a sweep deleted the file while we waited: take a fresh one
