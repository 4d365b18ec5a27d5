"""The benchmark harness, smoke-tested: `python bench/run.py --quick` on a machine without wrk and
nginx (hidden from PATH), checking that every scenario reports its numbers, never how fast they are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import ROOT

HIDDEN = ("wrk", "nginx")
TIMEOUT_SECONDS = 300

# Every scenario's metrics, and those that must be numbers above 0 (the rest are numbers >= 0 or,
# where the nginx comparison is not available, null).
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
    "download": ({"mb_per_s", "rps", "nginx_mb_per_s", "ratio"}, {"mb_per_s", "rps"}),
}


def path_without(hidden: tuple[str, ...], shadow: Path) -> str:
    """A PATH of one directory linking every executable on the current PATH except `hidden`."""
    shadow.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = shadow / entry.name
            if entry.name in hidden or link.is_symlink() or not os.access(entry.path, os.X_OK):
                continue
            if entry.is_file():
                link.symlink_to(entry.path)
    return str(shadow)


def run_quick(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python bench/run.py --quick`; on timeout SIGTERM first, so it stops what it started."""
    process = subprocess.Popen(
        [sys.executable, "bench/run.py", "--quick"],
        cwd=ROOT,
        env=env,
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
        raise AssertionError(
            f"bench/run.py --quick ran over {TIMEOUT_SECONDS}s:\n{stdout}\n{stderr}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def bench_lines(stdout: str) -> dict[str, dict[str, Any]]:
    """The `BENCH {json}` lines by scenario."""
    records = [
        json.loads(line.removeprefix("BENCH ")) for line in stdout.splitlines() if line.startswith("BENCH ")
    ]
    return {record["scenario"]: record for record in records}


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_quick_benchmark_reports_every_scenario_without_wrk_or_nginx(tmp_path):
    path = path_without(HIDDEN, tmp_path / "bin")
    assert all(shutil.which(name, path=path) is None for name in HIDDEN)
    env = {**os.environ, "PATH": path}
    env.pop("BENCH_DATABASE_URL", None)

    result = run_quick(env)

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "(python loadgen)" in result.stdout
    assert "LOG_LEVEL=WARNING" in result.stdout
    records = bench_lines(result.stdout)
    assert set(records) == set(EXPECTED), result.stdout
    for scenario, (keys, positive) in EXPECTED.items():
        record = records[scenario]
        assert record["reps"] == 1 and record["quick"] is True
        metrics = record["metrics"]
        assert keys <= metrics.keys(), (scenario, sorted(metrics))
        for key in keys:
            summary = metrics[key]
            assert {"median", "min", "max", "values"} <= summary.keys(), (scenario, key)
            if scenario == "download" and key in ("nginx_mb_per_s", "ratio"):
                assert summary["median"] is None, (scenario, key, summary)  # nginx is hidden: n/a
                continue
            assert is_number(summary["median"]), (scenario, key, summary)
            assert summary["median"] >= 0 or key.endswith("_delta_mb"), (scenario, key, summary)
            if key in positive:
                assert summary["median"] > 0, (scenario, key, summary)
    assert records["users"]["tool"] == records["download"]["tool"] == "python loadgen"
