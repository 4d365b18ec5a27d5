"""Benchmark the service: `python -m bench` (3 reps, real durations) or `--quick` (1 rep, short).

Starts a fresh PostgreSQL database (embedded, or on BENCH_DATABASE_URL's server), the jService
stand-in and `python server.py` as subprocesses, runs the scenarios, prints a table of
median [min - max] per metric and one `BENCH {json}` line per scenario, and stops all it started.
HTTP load comes from wrk (required by users, questions and download); nginx, when installed, is
the download scenario's yardstick."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.scenarios import FULL, NEED_WRK, QUICK, SCENARIOS, Bench, Metrics, Profile
from bench.service import (
    SERVER_LOG_LEVEL,
    Service,
    children_cpu_seconds,
    machine_busy_seconds,
    make_wav,
    run_in_workdir,
    running_service,
    tree_cpu_seconds,
)
from bench.traffic import create_user
from tests.nginx import find_nginx


def machine() -> str:
    """CPU count and model, memory, Python, kernel and the date, for the report."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?"
    )
    return (
        f"machine: {os.cpu_count()} CPUs ({model}), {psutil.virtual_memory().total / 1024**3:.1f} GiB RAM,"
        f" Python {platform.python_version()}, {platform.system()} {platform.release()},"
        f" {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def our_cpu_seconds(service: Service) -> float:
    """CPU seconds of the run's process trees and of the harness with its reaped children (wrk, ffmpeg)."""
    pids = (*(process.pid for process in service.processes.running.values()), service.database.pid)
    harness = psutil.Process().cpu_times()
    return float(harness.user + harness.system) + children_cpu_seconds() + sum(map(tree_cpu_seconds, pids))


def summary(values: list[float | None]) -> tuple[float, float, float] | None:
    """Median, min and max of the values that are numbers (None: there are none)."""
    numbers = [value for value in values if value is not None]
    return (statistics.median(numbers), min(numbers), max(numbers)) if numbers else None


def number(value: float) -> str:
    """A number with as many decimals as its size calls for."""
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.{1 if size >= 10 else 2 if size >= 1 else 3}f}"


def rounded(value: float | None) -> float | None:
    """To 6 significant digits."""
    return None if value is None else float(f"{value:.6g}")


def by_metric(runs: list[Metrics]) -> dict[str, list[float | None]]:
    """Each metric's values over the reps."""
    keys = dict.fromkeys(key for run in runs for key in run)
    return {key: [run.get(key) for run in runs] for key in keys}


def table(results: dict[str, list[Metrics]]) -> str:
    """Scenario by scenario, what it does and median [min - max] of each metric."""
    lines: list[str] = []
    for name, runs in results.items():
        what = " ".join((SCENARIOS[name].__doc__ or "").split())
        lines += ["", f"{name} (wrk): {what}" if name in NEED_WRK else f"{name}: {what}"]
        for key, values in by_metric(runs).items():
            known = summary(values)
            text = "n/a" if known is None else "{} [{} - {}]".format(*map(number, known))
            lines.append(f"  {key:<32} {text}")
    return "\n".join(lines)


def json_lines(results: dict[str, list[Metrics]], quick: bool, instances: int | None) -> list[str]:
    """One `BENCH {json}` line per scenario: median, min, max and every value of each metric."""
    lines = []
    for name, runs in results.items():
        metrics: dict[str, dict[str, Any]] = {}
        for key, values in by_metric(runs).items():
            median, low, high = summary(values) or (None, None, None)
            metrics[key] = {"median": rounded(median), "min": rounded(low), "max": rounded(high)}
            metrics[key]["values"] = [rounded(value) for value in values]
        record = {"scenario": name, "tool": "wrk" if name in NEED_WRK else None, "reps": len(runs)}
        extra = {"quick": quick, "instances": instances, "metrics": metrics}
        lines.append("BENCH " + json.dumps({**record, **extra}))
    return lines


async def run_all(bench: Bench, names: list[str]) -> dict[str, list[Metrics]]:
    """The named scenarios (in SCENARIOS order), each `reps` times in a row; progress goes to stderr."""
    results: dict[str, list[Metrics]] = {}
    for name in (name for name in SCENARIOS if name in names):
        for rep in range(1, bench.profile.reps + 1):
            started = time.perf_counter()
            results.setdefault(name, []).append(await SCENARIOS[name](bench))
            took = time.perf_counter() - started
            print(f"  {name} rep {rep}/{bench.profile.reps} done in {took:.1f}s", file=sys.stderr, flush=True)
    return results


def benchmark(profile: Profile, quick: bool, names: list[str], workdir: Path, instances: int | None) -> int:
    """Start the service, run the scenarios, print the results; always stop what was started."""
    wrk, nginx = shutil.which("wrk"), find_nginx()
    print(machine())
    print(
        f"mode: {'quick' if quick else 'full'}, {profile.reps} rep(s) per scenario; loads of"
        f" {profile.load_seconds:g} s from {wrk or 'no wrk'}; WAVs of {profile.one_seconds:g} s (convert-one,"
        f" download, upload-8mbps), {profile.parallel_seconds:g} s (convert-parallel) and"
        f" {profile.memory_seconds:g} s (memory)"
    )
    print(
        f"server: python server.py, LOG_LEVEL={SERVER_LOG_LEVEL} (so the access log does not dominate),"
        f" other settings at their defaults; nginx: {nginx or 'not installed (nginx ratio n/a)'}"
    )
    if instances is not None:
        print(f"instances: {instances} x python server.py behind nginx (deploy/nginx/quiz.conf), round-robin")
    with running_service(workdir, instances) as service:
        print(f"ffmpeg: {service.ffmpeg}", flush=True)
        seconds = sorted({profile.one_seconds, profile.parallel_seconds, profile.memory_seconds})
        wavs = {s: make_wav(s, workdir / f"sine-{s:g}s.wav") for s in seconds}
        bench = Bench(profile, service, asyncio.run(create_user(service.url)), wavs, wrk, nginx)
        print(f"machine CPU busy just before the run (other work): {psutil.cpu_percent(1.0):.0f}%")
        busy_before, ours_before, started = machine_busy_seconds(), our_cpu_seconds(service), time.monotonic()
        try:
            results = asyncio.run(run_all(bench, names))
        except Exception:
            print(service.processes.log("server")[-3000:], file=sys.stderr)
            raise
        others = (machine_busy_seconds() - busy_before) - (our_cpu_seconds(service) - ours_before)
        others_pct = 100 * others / (time.monotonic() - started)
        server_exit = service.stop()
    print(table(results))
    print()
    log = service.processes.log("server").splitlines()
    warnings = [line for line in log if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    print(f"server log: {len(warnings)} WARNING/ERROR lines; exit code on SIGTERM: {server_exit}")
    print(
        "other work on the machine during the run (CPU not used by this run):"
        f" {others_pct:.0f}% of one core on average"
    )
    for line in warnings[:5]:
        print(f"  {line}")
    for line in json_lines(results, quick, instances):
        print(line)
    return 0


def main() -> int:
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
    parser.add_argument(
        "--instances",
        type=int,
        metavar="N",
        help="N server processes behind nginx with the shipped site file, the load sent to nginx",
    )
    args = parser.parse_args()
    if args.instances is not None and not 1 <= args.instances <= 16:
        parser.error("--instances must be from 1 to 16")
    names = args.scenarios or list(SCENARIOS)
    if shutil.which("wrk") is None and set(names) & set(NEED_WRK):
        others = " ".join(name for name in SCENARIOS if name not in NEED_WRK)
        parser.error(
            f"wrk is required for {', '.join(NEED_WRK)} (apt-get install wrk; `make bench` installs it"
            f" when run as root); without it, name the others: {others}"
        )
    profile = QUICK if args.quick else FULL
    return run_in_workdir(
        "bench-", lambda workdir: benchmark(profile, args.quick, names, workdir, args.instances)
    )


if __name__ == "__main__":
    sys.exit(main())
