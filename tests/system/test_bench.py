"""The benchmark harness, smoke-tested: `python -m bench --quick` checks that every scenario reports its
numbers, never how fast they are; without wrk, the scenarios that need it are refused by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import ROOT

TIMEOUT_SECONDS = 300
NEED_WRK = {"users", "questions", "download"}
NGINX_METRICS = {"nginx_mb_per_s", "ratio"}  # download's; null without nginx
PACED = {
    "after_last_byte_s",
    "raw_s",
    "ratio",
    "fields_last_after_last_byte_s",
    "upload_s",
    "upload_mb_per_s",
}

# Every scenario's metrics, and those that must be numbers above 0 (the rest are numbers >= 0).
EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    "users": (
        {"rps", "p50_ms", "p99_ms", "non2xx", "errors", "cpu_ms_per_req", "cpu_pct"},
        {"rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "cpu_pct"},
    ),
    "questions": (
        {"rps", "p50_ms", "p99_ms", "non2xx", "standin_rps", "standin_p50_ms", "standin_p99_ms", "ratio"},
        {"rps", "p50_ms", "p99_ms", "standin_rps", "standin_p50_ms", "standin_p99_ms", "ratio"},
    ),
    "convert-one": (
        {"service_s", "raw_s", "ratio", "health_max_ms", "health_probes", "mp3_mb"},
        {"service_s", "raw_s", "ratio", "health_max_ms", "health_probes", "mp3_mb"},
    ),
    "convert-parallel": (
        {"service_s", "raw_s", "throughput_ratio"},
        {"service_s", "raw_s", "throughput_ratio"},
    ),
    "memory": (
        {
            "idle_rss_mb",
            "peak_rss_mb",
            "rss_delta_mb",
            "idle_pss_mb",
            "peak_pss_mb",
            "pss_delta_mb",
            "samples",
        },
        {"idle_rss_mb", "peak_rss_mb", "idle_pss_mb", "peak_pss_mb", "samples"},
    ),
    "download": ({"mb_per_s", "rps", *NGINX_METRICS}, {"mb_per_s", "rps"}),
    "upload-8mbps": (PACED, PACED),
}


def run_bench(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bench ARGS`; on timeout SIGTERM first, so that it stops what it started."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=60)
        raise AssertionError(f"python -m bench ran over {TIMEOUT_SECONDS}s:\n{stdout}\n{stderr}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def bench_lines(stdout: str) -> dict[str, dict[str, Any]]:
    """The `BENCH {json}` lines by scenario."""
    records = [json.loads(line[6:]) for line in stdout.splitlines() if line.startswith("BENCH ")]
    return {record["scenario"]: record for record in records}


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_quick_benchmark_reports_every_scenario():
    # wrk comes with `make bench` as root (CI); elsewhere the scenarios that need it are left out.
    wrk, nginx = shutil.which("wrk"), shutil.which("nginx")
    scenarios = set(EXPECTED) if wrk else set(EXPECTED) - NEED_WRK
    env = {"BENCH_DATABASE_URL": ""}

    result = run_bench(["--quick"] if wrk else ["--quick", *sorted(scenarios)], env)

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "LOG_LEVEL=WARNING" in result.stdout
    for scenario in scenarios:
        assert f"\n{scenario}" in result.stdout, f"no table for {scenario}:\n{result.stdout}"
    records = bench_lines(result.stdout)
    assert set(records) == scenarios, result.stdout
    for scenario in scenarios:
        keys, positive = EXPECTED[scenario]
        record = records[scenario]
        assert record["reps"] == 1 and record["quick"] is True
        assert record["tool"] == ("wrk" if scenario in NEED_WRK else None)
        metrics = record["metrics"]
        assert keys <= metrics.keys(), (scenario, sorted(metrics))
        for key in keys:
            summary = metrics[key]
            assert {"median", "min", "max", "values"} <= summary.keys(), (scenario, key)
            if scenario == "download" and key in NGINX_METRICS and nginx is None:
                assert summary["median"] is None, (scenario, key, summary)
                continue
            assert is_number(summary["median"]), (scenario, key, summary)
            assert summary["median"] >= 0 or key.endswith("_delta_mb"), (scenario, key, summary)
            if key in positive:
                assert summary["median"] > 0, (scenario, key, summary)


def path_without(hidden: str, shadow: Path) -> str:
    """A PATH of one directory linking every executable on the current PATH but `hidden`."""
    shadow.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory and os.path.isdir(directory):
            for entry in os.scandir(directory):
                link = shadow / entry.name
                if entry.name != hidden and not link.is_symlink() and entry.is_file():
                    link.symlink_to(entry.path)
    return str(shadow)


def test_without_wrk_the_scenarios_needing_it_are_refused_by_name(tmp_path):
    env = {"PATH": path_without("wrk", tmp_path / "bin")}

    result = run_bench(["--quick", "convert-one", "users"], env)

    assert result.returncode == 2, f"{result.stdout}\n{result.stderr}"
    assert "wrk is required for users, questions, download" in result.stderr
    assert "name the others: convert-one convert-parallel memory upload-8mbps" in result.stderr
    assert "BENCH" not in result.stdout
