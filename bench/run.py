"""Benchmark the service: `python bench/run.py` (3 reps, real durations) or `--quick` (1 rep, short).

Starts a fresh PostgreSQL database (embedded, or on BENCH_DATABASE_URL's server), the jService
stand-in and `python server.py` as subprocesses, runs the six scenarios, prints a table of
median [min - max] per metric and one `BENCH {json}` line per scenario, and stops all it started."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/: put the repository root there instead.
if sys.path[0] == str(Path(__file__).resolve().parent):
    sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import platform
import shutil
import signal
import tempfile
import time
from types import FrameType

from bench.load import PYTHON_TOOL
from bench.media import create_user, ffmpeg_version, make_wav, measured_ffmpeg
from bench.memory import harness_cpu_seconds, machine_busy_percent, machine_busy_seconds, tree_cpu_seconds
from bench.processes import (
    SERVER_LOG_LEVEL,
    Database,
    Processes,
    create_database,
    drop_database,
    start_server,
    start_standin,
)
from bench.report import json_lines, table
from bench.scenarios import FULL, QUICK, SCENARIOS, Bench, Profile, run_all
from converters.ffmpeg import find_ffmpeg


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def machine() -> str:
    """CPU count, memory, Python and the date, for the report."""
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    return (
        f"machine: {os.cpu_count()} CPUs, {memory} RAM, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def server_warnings(processes: Processes) -> list[str]:
    """The server log's WARNING and ERROR lines (at LOG_LEVEL=WARNING, that is the whole log)."""
    try:
        text = processes.log_path("server").read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]


def our_cpu_seconds(pids: tuple[int | None, ...]) -> float:
    """CPU seconds of the run's process trees and of the harness with its children (wrk, ffmpeg)."""
    return harness_cpu_seconds() + sum(tree_cpu_seconds(pid) for pid in pids if pid is not None)


def report_failure(processes: Processes) -> None:
    """On a failed scenario: whether the server and the stand-in still run, and their last lines."""
    for name in ("server", "standin"):
        process = processes.running.get(name)
        state = "not started" if process is None else process.poll()
        print(f"{name}: {'running' if state is None else f'exited ({state})'}", file=sys.stderr)
        print(processes.log_tail(name), file=sys.stderr)


def benchmark(profile: Profile, quick: bool, workdir: Path, names: list[str]) -> int:
    """Start what the run needs, run it, print the results; always stop what was started."""
    wrk, nginx = shutil.which("wrk"), shutil.which("nginx")
    tool = "wrk" if wrk else PYTHON_TOOL
    ffmpeg, origin = measured_ffmpeg()
    wav_maker = find_ffmpeg(None)  # the measured one may be built for WAV to MP3 only (no lavfi)
    print(machine())
    print(f"mode: {'quick' if quick else 'full'}, {profile.reps} rep(s) per scenario; load: {tool}")
    print(f"nginx: {nginx or 'not installed (nginx ratio n/a)'}")
    print(f"ffmpeg measured: {ffmpeg}, {origin}: {ffmpeg_version(ffmpeg)}")
    print(
        f"server: python server.py, LOG_LEVEL={SERVER_LOG_LEVEL} (so the access log does not dominate),"
        " other settings at their defaults"
    )
    processes = Processes(workdir)
    database: Database | None = None
    try:
        database = create_database(workdir)
        seconds = {profile.one_seconds, profile.parallel_seconds, profile.memory_seconds}
        wavs = {s: make_wav(wav_maker, s, workdir / f"sine-{s:g}s.wav") for s in sorted(seconds)}
        standin_port = start_standin(processes)
        server_port = start_server(processes, database.url, standin_port, ffmpeg)
        bench = Bench(
            profile=profile,
            processes=processes,
            database_url=database.url,
            server_port=server_port,
            server_pid=processes.running["server"].pid,
            standin_port=standin_port,
            standin_pid=processes.running["standin"].pid,
            db_pid=database.postmaster_pid,
            ffmpeg=ffmpeg,
            wrk=wrk,
            nginx=nginx,
            user=asyncio.run(create_user(server_port)),
            wavs=wavs,
        )
        print(f"machine CPU busy just before the run (other work): {machine_busy_percent():.0f}%")
        ours = (bench.server_pid, bench.standin_pid, bench.db_pid)
        busy_before, ours_before, started = machine_busy_seconds(), our_cpu_seconds(ours), time.monotonic()
        try:
            results = asyncio.run(run_all(bench, names))
        except Exception:
            report_failure(processes)
            raise
        others = (machine_busy_seconds() - busy_before) - (our_cpu_seconds(ours) - ours_before)
        other_work = f"{100 * others / (time.monotonic() - started):.0f}% of one core on average"
        server_exit = processes.stop("server")
    finally:
        processes.stop_all()
        if database is not None:
            drop_database(database)
    print(table(results, profile, tool))
    print()
    warnings = server_warnings(processes)
    print(f"server log: {len(warnings)} WARNING/ERROR lines; exit code on SIGTERM: {server_exit}")
    print(f"other work on the machine during the run (CPU not used by this run): {other_work}")
    for line in warnings[:5]:
        print(f"  {line}")
    for line in json_lines(results, profile, tool, quick):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the benchmark in a temporary directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 rep, 2 s loads, short WAVs (a smoke run)")
    parser.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *SCENARIOS],
        metavar="SCENARIO",
        help="run only these (default: all)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        return benchmark(
            QUICK if args.quick else FULL, args.quick, workdir, args.scenarios or list(SCENARIOS)
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
