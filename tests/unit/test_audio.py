"""The pieces of the audio path that need no server: ffmpeg discovery and conversion, the spool, the pool."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from converters.ffmpeg import FfmpegMissing, find_ffmpeg
from converters.mp3 import (
    ConversionFailed,
    ConversionInterrupted,
    ConversionTimeout,
    GaveWay,
    Mp3Settings,
    RunningConversions,
    check_output,
    convert_wav_to_mp3,
    ffmpeg_command,
    mp3_sample_rate,
)
from converters.pool import ConversionPool
from converters.scheduling import schedule_as_batch_work
from converters.spool import Spool, UploadStopped
from converters.wav import read_wav_info
from storage.scratch import stop_processes_using
from tests.audio import silent_wav


def test_ffmpeg_is_found_without_configuration():
    assert find_ffmpeg(None)


def test_a_configured_ffmpeg_must_exist():
    with pytest.raises(FfmpegMissing, match="FFMPEG_BINARY"):
        find_ffmpeg("/nonexistent/ffmpeg")


@pytest.mark.parametrize(
    ("rate", "expected"), [(8000, 8000), (44100, 44100), (96000, 48000), (9000, 8000), (30000, 32000)]
)
def test_rates_mp3_lacks_map_to_the_nearest(rate, expected):
    assert mp3_sample_rate(rate) == expected


def spool_of(path: Path, data: bytes, complete: bool = True) -> Spool:
    """A spool holding `data`, as an upload would have written it."""
    spool = Spool(path)
    spool.open()
    spool.write(memoryview(data))
    if complete:
        spool.complete()
    return spool


def ffmpeg_children(zombies: bool = True) -> list[psutil.Process]:
    """This process's ffmpeg children as the OS sees them (zombies too, unless told otherwise)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in child.name() and (zombies or child.status() != psutil.STATUS_ZOMBIE):
                found.append(child)
        except psutil.NoSuchProcess:
            continue  # it ended meanwhile
    return found


def wait_until_ffmpeg_runs() -> None:
    """Poll until a conversion has started its ffmpeg."""
    deadline = time.monotonic() + 30
    while not ffmpeg_children(zombies=False) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ffmpeg_children(zombies=False), "ffmpeg never started"


def wait_until_exec(*processes: subprocess.Popen[bytes]) -> None:
    """Poll until each process runs its own command line (Popen returns before the child's exec)."""
    deadline = time.monotonic() + 30
    for process in processes:
        while psutil.Process(process.pid).cmdline() != process.args and time.monotonic() < deadline:
            time.sleep(0.01)
        assert psutil.Process(process.pid).cmdline() == process.args, "the child never ran its command"


def test_a_shutdown_stops_running_conversions_and_refuses_new_ones(tmp_path):
    source = spool_of(tmp_path / "long.wav", silent_wav(900.0))
    settings = Mp3Settings(find_ffmpeg(None), "192k", timeout=120)
    wav = read_wav_info(source.path)
    with ThreadPoolExecutor(1) as pool:
        conversion = pool.submit(convert_wav_to_mp3, settings, source, tmp_path / "out.mp3", wav)
        wait_until_ffmpeg_runs()
        assert settings.running.stop_all() == 1
        with pytest.raises(ConversionInterrupted):
            conversion.result(timeout=30)
    with pytest.raises(ConversionInterrupted):
        convert_wav_to_mp3(settings, source, tmp_path / "again.mp3", wav)


def test_only_ffmpeg_style_file_arguments_in_the_directory_are_stopped(tmp_path):
    directory = tmp_path / "media" / ".tmp" / "host-1-abcdef12"
    directory.mkdir(parents=True)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    bystander = subprocess.Popen([*sleeper, f"/elsewhere{directory}/x.wav", f"{directory}/x.wav"])
    writer = subprocess.Popen([*sleeper, f"file:{directory}/x.wav"])
    try:
        wait_until_exec(bystander, writer)
        stop_processes_using(directory)
        assert writer.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for process in (bystander, writer):
            process.kill()
            process.wait()


def test_a_spool_says_how_much_is_in_until_it_is_complete(tmp_path):
    spool = spool_of(tmp_path / "upload.wav", b"x" * 200_000, complete=False)
    assert spool.wait_for(150_000) == (200_000, False)
    spool.write(memoryview(b"y" * 100_000))
    spool.complete()
    assert spool.wait_for(10**9) == (300_000, True)  # complete: no waiting for bytes that never come
    assert (tmp_path / "upload.wav").read_bytes() == b"x" * 200_000 + b"y" * 100_000


def test_an_abandoned_spool_stops_its_reader(tmp_path):
    spool = spool_of(tmp_path / "upload.wav", b"RIFF", complete=False)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(spool.wait_for, 1000)
        spool.abandon()
        with pytest.raises(UploadStopped):
            waiting.result(timeout=30)


@pytest.mark.parametrize("complete", [False, True], ids=["arriving", "complete"])
def test_an_upload_that_stops_kills_its_ffmpeg(tmp_path, complete):
    settings = Mp3Settings(find_ffmpeg(None), "192k", timeout=60)
    wav = silent_wav(900.0)  # minutes of ffmpeg work: the stop is seen long before it could end
    spool = spool_of(tmp_path / "upload.wav", wav if complete else wav[: len(wav) // 2], complete)
    with ThreadPoolExecutor(1) as pool:
        conversion = pool.submit(
            convert_wav_to_mp3, settings, spool, tmp_path / "out.mp3", read_wav_info(spool.path)
        )
        wait_until_ffmpeg_runs()
        spool.abandon()
        with pytest.raises(UploadStopped):
            conversion.result(timeout=30)
    assert not ffmpeg_children()  # every ffmpeg ended and was reaped


@pytest.mark.parametrize("stop", ["deadline", "abandoned while arriving", "abandoned once complete"])
def test_an_ffmpeg_that_stops_reading_is_killed_at_its_deadline_or_when_its_upload_stops(tmp_path, stop):
    stuck = tmp_path / "ffmpeg"
    # A script's process is named after the script ("ffmpeg"), as the real one is.
    stuck.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    stuck.chmod(0o755)
    settings = Mp3Settings(str(stuck), "192k", timeout=0.5 if stop == "deadline" else 60)
    spool = spool_of(tmp_path / "upload.wav", silent_wav(10.0), complete=False)  # 1.7 MB: pipes fill
    with ThreadPoolExecutor(1) as pool:
        conversion = pool.submit(
            convert_wav_to_mp3, settings, spool, tmp_path / "out.mp3", read_wav_info(spool.path)
        )
        if stop != "deadline":
            wait_until_ffmpeg_runs()
            if stop == "abandoned once complete":
                spool.complete()
            spool.abandon()
        with pytest.raises(ConversionTimeout if stop == "deadline" else UploadStopped):
            conversion.result(timeout=30)
    assert not ffmpeg_children()  # every ffmpeg ended and was reaped


def test_a_complete_upload_is_read_by_ffmpeg_itself_and_a_growing_one_through_its_stdin(tmp_path):
    calls = tmp_path / "calls"
    recording = tmp_path / "ffmpeg"
    recording.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {find_ffmpeg(None)} "$@"\n')
    recording.chmod(0o755)
    settings = Mp3Settings(str(recording), "192k", timeout=60)
    wav = silent_wav(1.0)
    complete = spool_of(tmp_path / "complete.wav", wav)
    convert_wav_to_mp3(settings, complete, tmp_path / "a.mp3", read_wav_info(complete.path))
    growing = spool_of(tmp_path / "growing.wav", wav[:1000], complete=False)
    with ThreadPoolExecutor(1) as pool:
        conversion = pool.submit(
            convert_wav_to_mp3, settings, growing, tmp_path / "b.mp3", read_wav_info(growing.path)
        )
        wait_until_ffmpeg_runs()
        growing.write(memoryview(wav[1000:]))
        growing.complete()
        conversion.result(timeout=30)
    first, second = calls.read_text().splitlines()
    assert f"-i file:{complete.path} " in first
    assert "-i pipe:0 " in second
    assert (tmp_path / "a.mp3").read_bytes() == (tmp_path / "b.mp3").read_bytes()


def test_time_spent_waiting_for_the_upload_does_not_count_against_the_limit(tmp_path):
    settings = Mp3Settings(find_ffmpeg(None), "192k", timeout=1.0)
    wav = silent_wav(1.0)
    spool = spool_of(tmp_path / "upload.wav", wav[:1000], complete=False)
    with ThreadPoolExecutor(1) as pool:
        conversion = pool.submit(
            convert_wav_to_mp3, settings, spool, tmp_path / "out.mp3", read_wav_info(spool.path)
        )
        time.sleep(1.5)  # a client slower than the limit: the limit is for ffmpeg's own work
        spool.write(memoryview(wav[1000:]))
        spool.complete()
        conversion.result(timeout=30)
    assert (tmp_path / "out.mp3").stat().st_size > 0


def test_a_conversion_starved_of_input_gives_way_when_asked(tmp_path):
    settings = Mp3Settings(find_ffmpeg(None), "192k", timeout=60)
    wav = silent_wav(2.0)
    spool = spool_of(tmp_path / "upload.wav", wav[: len(wav) // 2], complete=False)
    with pytest.raises(GaveWay):
        convert_wav_to_mp3(settings, spool, tmp_path / "out.mp3", read_wav_info(spool.path), lambda: True)
    assert not ffmpeg_children()  # every ffmpeg ended and was reaped


def test_ffmpeg_exit_is_awaited_without_pidfd_too(tmp_path, monkeypatch):
    def refused(pid: int) -> int:
        raise PermissionError("pidfd_open is not allowed here")

    monkeypatch.setattr(os, "pidfd_open", refused)
    settings = Mp3Settings(find_ffmpeg(None), "192k", timeout=60)
    spool = spool_of(tmp_path / "upload.wav", silent_wav(1.0))
    convert_wav_to_mp3(settings, spool, tmp_path / "out.mp3", read_wav_info(spool.path))
    assert (tmp_path / "out.mp3").stat().st_size > 0


def test_a_conversion_fed_a_trickle_gives_way_too(tmp_path):
    settings = Mp3Settings(find_ffmpeg(None), "192k", timeout=60)
    wav = silent_wav(30.0)
    spool = spool_of(tmp_path / "upload.wav", wav[:100_000], complete=False)
    stop = threading.Event()

    def trickle() -> None:  # 2 KiB every 20 ms: never a silent 0.1 s, but far slower than ffmpeg
        offset = 100_000
        while not stop.is_set() and offset < len(wav):
            spool.write(memoryview(wav[offset : offset + 2048]))
            offset += 2048
            time.sleep(0.02)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(trickle)
        try:
            with pytest.raises(GaveWay):
                convert_wav_to_mp3(
                    settings, spool, tmp_path / "out.mp3", read_wav_info(spool.path), lambda: True
                )
        finally:
            stop.set()
    assert not ffmpeg_children()  # every ffmpeg ended and was reaped


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_an_mp3_counts_only_when_it_holds_every_byte_ffmpeg_reports(tmp_path, rate):
    wav, mp3 = tmp_path / "in.wav", tmp_path / "out.mp3"
    wav.write_bytes(silent_wav(3.0, rate, 1))
    settings = Mp3Settings(find_ffmpeg(None), "128k", timeout=60)
    ran = subprocess.run(ffmpeg_command(settings, mp3, read_wav_info(wav), wav), capture_output=True)
    report = ran.stderr.decode()
    check_output(ran.returncode, report, mp3)  # complete
    no_space = report + "[error] Error closing file file:x.mp3: No space left on device\n"
    with pytest.raises(OSError) as full:
        check_output(0, no_space, mp3)  # ffmpeg 5.1 exits 0 then
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(ConversionFailed):
        check_output(1, report, mp3)
    complete = mp3.read_bytes()
    for cut in (1, 600, len(complete) // 2):  # within the last frame, the header frame's size, half
        mp3.write_bytes(complete[:-cut])
        with pytest.raises(OSError) as short:
            check_output(0, report, mp3)
        assert short.value.errno == errno.EIO


def test_the_pool_makes_way_once_per_queued_job_and_always_when_closing():
    pool = ConversionPool(workers=1, queue=2)
    started, release = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(30)

    running = pool.submit(hold)
    assert started.wait(30)
    assert not pool.should_give_way()  # nothing queued
    queued = pool.submit(lambda: True)
    assert pool.should_give_way()
    assert not pool.should_give_way()  # one waiting conversion made way for it already
    assert queued.cancel() and queued.cancel()  # twice: it leaves the queue once
    assert not pool.has_idle_thread()
    release.set()
    running.result(timeout=30)
    assert pool.has_idle_thread()
    pool.shutdown()
    assert pool.should_give_way()
    with pytest.raises(ConversionInterrupted):
        pool.submit(lambda: True).result(timeout=30)


def batch_scheduling_refused() -> bool:
    """Whether this platform or sandbox refuses SCHED_BATCH (tried on a thread of its own)."""
    if not hasattr(os, "SCHED_BATCH"):
        return True

    def policy_once_marked() -> int:
        schedule_as_batch_work()
        return os.sched_getscheduler(0)

    with ThreadPoolExecutor(1) as probe:
        return probe.submit(policy_once_marked).result() != os.SCHED_BATCH


@pytest.mark.skipif(batch_scheduling_refused(), reason="no SCHED_BATCH here")
def test_ffmpeg_runs_as_batch_work_while_the_conversion_threads_stay_normal_tasks(tmp_path):
    caller = os.sched_getscheduler(0)
    if caller == os.SCHED_BATCH:
        pytest.skip("the tests run as batch work: a restored policy would look like a kept one")
    running = RunningConversions()
    report = tmp_path / "policy"
    script = "import os, sys; open(sys.argv[1], 'w').write(str(os.sched_getscheduler(0)))"

    def start_a_child() -> int:
        process = running.start([sys.executable, "-c", script, str(report)], feed=False)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        process.stderr.close()
        running.finish(process)
        return os.sched_getscheduler(0)

    pool = ConversionPool(workers=1, queue=0)
    try:
        thread_policy = pool.submit(start_a_child).result(timeout=30)
    finally:
        pool.shutdown()
    assert int(report.read_text()) == os.SCHED_BATCH
    assert thread_policy == os.sched_getscheduler(0) == caller
