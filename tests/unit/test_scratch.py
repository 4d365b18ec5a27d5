"""Scratch folders: each instance has its own, and a sweep removes only those of stopped instances."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from storage.scratch import Scratch, sweep_dead_instances


def _hold_scratch(parent: Path, ready: multiprocessing.synchronize.Event) -> None:
    scratch = Scratch(parent)
    scratch.new_path(".wav").write_bytes(b"in progress")
    ready.set()
    signal.pause()


def test_each_instance_works_in_a_folder_of_its_own(tmp_path):
    first, second = Scratch(tmp_path), Scratch(tmp_path)
    assert first.path != second.path
    assert first.new_path(".wav").parent == first.path
    assert first.new_path(".mp3") != first.new_path(".mp3")
    first.close()
    second.close()
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_never_touches_a_live_instance(tmp_path):
    live = Scratch(tmp_path)
    work = live.new_path(".wav")
    work.write_bytes(b"in progress")
    assert sweep_dead_instances(tmp_path) == 0
    assert work.read_bytes() == b"in progress"
    live.close()


def test_a_sweep_removes_what_a_killed_instance_left(tmp_path):
    live = Scratch(tmp_path)
    ready = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=_hold_scratch, args=(tmp_path, ready))
    child.start()
    assert ready.wait(30)
    assert sweep_dead_instances(tmp_path) == 0  # still running
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert sweep_dead_instances(tmp_path) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [live.path.name, f"{live.path.name}.lock"]
    )
    live.close()


def test_a_sweep_stops_an_ffmpeg_a_killed_instance_left_writing(tmp_path):
    folder = tmp_path / "dead-host-1-abcdef12"
    folder.mkdir()
    (tmp_path / f"{folder.name}.lock").touch()
    # Stands in for an orphaned ffmpeg: any process with a `file:<folder>/...` argument.
    argument = f"file:{folder}/x.mp3"
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", argument])
    try:
        deadline = time.monotonic() + 30
        while argument not in psutil.Process(orphan.pid).cmdline():  # until its exec has happened
            assert time.monotonic() < deadline
        assert sweep_dead_instances(tmp_path) == 1
        assert orphan.wait(timeout=30) == -signal.SIGKILL
        assert not folder.exists()
    finally:
        orphan.kill()


def test_a_sweep_removes_flat_files_of_older_versions_only(tmp_path):
    old = tmp_path / f"{'a' * 32}.wav"
    old.write_bytes(b"left by an older version")
    other = tmp_path / "notes.txt"
    other.write_text("not ours")
    sweep_dead_instances(tmp_path)
    assert not old.exists()
    assert other.exists()
