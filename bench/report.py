"""The results: a table of median [min - max] per metric, and one `BENCH {json}` line per scenario."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from bench.scenarios import (
    DOWNLOAD_CONNECTIONS,
    MEMORY_UPLOADS,
    PARALLEL_UPLOADS,
    QUESTIONS_CONNECTIONS,
    RAW_PARALLEL,
    USERS_CONNECTIONS,
    Metrics,
    Profile,
)

LOAD_SCENARIOS = ("users", "questions", "download")


@dataclass(frozen=True)
class Summary:
    """One metric over the reps (None values are reps where it was not available)."""

    values: list[float | None]

    @property
    def known(self) -> list[float]:
        """The values that are numbers."""
        return [value for value in self.values if value is not None]

    @property
    def median(self) -> float | None:
        """The median of the known values."""
        return statistics.median(self.known) if self.known else None

    def as_json(self) -> dict[str, Any]:
        """median, min, max and every value, to 6 significant digits."""
        known = self.known
        return {
            "median": _rounded(self.median),
            "min": _rounded(min(known)) if known else None,
            "max": _rounded(max(known)) if known else None,
            "values": [_rounded(value) for value in self.values],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def titles(profile: Profile) -> dict[str, str]:
    """What each scenario does, with this profile's numbers."""
    load = f"{profile.load_seconds:g} s"
    return {
        "users": f'POST /users {{"name": "bench"}}, {USERS_CONNECTIONS} connections, {load}',
        "questions": f'POST /questions {{"questions_num": 5}}, {QUESTIONS_CONNECTIONS} connections, {load};'
        " stand-in at 20 ms, pool 1,000,000",
        "convert-one": f"one {profile.one_seconds:g} s stereo WAV: upload until the MP3 is downloaded,"
        " vs raw ffmpeg run before and after it",
        "convert-parallel": f"{PARALLEL_UPLOADS} concurrent {profile.parallel_seconds:g} s uploads"
        f" vs raw ffmpeg {RAW_PARALLEL} at a time, before and after them",
        "memory": f"{MEMORY_UPLOADS} concurrent {profile.memory_seconds:g} s uploads, server tree sampled"
        " every 50 ms",
        "download": f"GET the {profile.one_seconds:g} s MP3, {DOWNLOAD_CONNECTIONS} connections, {load};"
        " vs nginx (1 worker, sendfile)",
    }


# What every HTTP load scenario against the service reports.
HTTP_LOAD_ROWS = [
    ("rps", "requests/s"),
    ("p50_ms", "p50 latency, ms"),
    ("p99_ms", "p99 latency, ms"),
    ("non2xx", "non-2xx responses"),
    ("errors", "socket errors"),
    ("cpu_ms_per_req", "server CPU ms / request"),
    ("cpu_pct", "server CPU, % of one core"),
    ("db_cpu_ms_per_req", "PostgreSQL CPU ms / request"),
]

ROWS: dict[str, list[tuple[str, str]]] = {
    "users": [*HTTP_LOAD_ROWS, ("client_cpu_pct", "load client CPU, % of one core")],
    "questions": [
        *HTTP_LOAD_ROWS,
        ("standin_cpu_pct", "stand-in CPU, % of one core"),
        ("client_cpu_pct", "load client CPU, % of one core"),
        ("standin_rps", "stand-in alone: requests/s"),
        ("standin_p50_ms", "stand-in alone: p50 latency, ms"),
        ("standin_p99_ms", "stand-in alone: p99 latency, ms"),
        ("ratio", "RATIO service / stand-in (req/s)"),
    ],
    "convert-one": [
        ("service_s", "service: upload to MP3 downloaded, s"),
        ("upload_convert_s", "  of which upload + convert, s"),
        ("raw_before_s", "raw ffmpeg before it, s"),
        ("raw_after_s", "raw ffmpeg after it, s"),
        ("raw_s", "raw ffmpeg, mean of the two, s"),
        ("ratio", "RATIO service / raw (time)"),
        ("service_cpu_s", "service CPU (server + its ffmpeg), s"),
        ("raw_cpu_s", "raw ffmpeg CPU, mean, s"),
        ("cpu_ratio", "RATIO service / raw (CPU)"),
        ("health_max_ms", "longest GET /health meanwhile, ms"),
        ("health_probes", "GET /health probes"),
        ("health_failures", "GET /health failures"),
        ("wav_mb", "WAV size, MB"),
        ("mp3_mb", "MP3 size, MB"),
    ],
    "convert-parallel": [
        ("service_s", "service: all 4 answered, s"),
        ("raw_before_s", "raw ffmpeg before the uploads, s"),
        ("raw_after_s", "raw ffmpeg after the uploads, s"),
        ("raw_s", "raw ffmpeg, mean of the two, s"),
        ("throughput_ratio", "RATIO throughput service/raw (>=0.95)"),
        ("service_cpu_s", "service CPU (server + its ffmpeg), s"),
        ("raw_cpu_s", "raw ffmpeg CPU, mean, s"),
        ("cpu_ratio", "RATIO service / raw (CPU)"),
        ("raw_batch_s", "raw ffmpeg as batch work (after), s"),
        ("batch_ratio", "ratio throughput service/raw batch work"),
        ("health_max_ms", "longest GET /health meanwhile, ms"),
    ],
    "memory": [
        ("idle_rss_mb", "idle RSS, MB"),
        ("peak_rss_mb", "peak RSS, MB"),
        ("rss_delta_mb", "peak - idle RSS, MB"),
        ("idle_pss_mb", "idle PSS, MB"),
        ("peak_pss_mb", "peak PSS, MB"),
        ("pss_delta_mb", "peak - idle PSS, MB"),
        ("max_processes", "most processes in the tree"),
        ("wall_s", "all 4 answered, s"),
        ("samples", "samples"),
    ],
    "download": [
        ("mb_per_s", "service MB/s"),
        ("rps", "service requests/s"),
        ("p50_ms", "service p50 latency, ms"),
        ("non2xx", "non-2xx responses"),
        ("cpu_pct", "server CPU, % of one core"),
        ("client_cpu_pct", "load client CPU, % of one core"),
        ("nginx_mb_per_s", "nginx MB/s"),
        ("nginx_cpu_pct", "nginx CPU, % of one core"),
        ("nginx_client_cpu_pct", "load client CPU vs nginx, % of one core"),
        ("ratio", "RATIO service / nginx (MB/s)"),
    ],
}


def summarize(runs: list[Metrics]) -> dict[str, Summary]:
    """Each metric's values over the reps."""
    keys = list(dict.fromkeys(key for run in runs for key in run))
    return {key: Summary([run.get(key) for run in runs]) for key in keys}


def number(value: float | None) -> str:
    """A number with as many decimals as its size calls for; n/a for None."""
    if value is None:
        return "n/a"
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(summary: Summary) -> str:
    """median [min - max]."""
    known = summary.known
    if not known:
        return "n/a"
    return f"{number(summary.median)} [{number(min(known))} - {number(max(known))}]"


def table(results: dict[str, list[Metrics]], profile: Profile, tool: str) -> str:
    """The whole table, scenario by scenario."""
    lines: list[str] = []
    for name, title in titles(profile).items():
        if name not in results:
            continue
        summaries = summarize(results[name])
        label = f"{name} ({tool})" if name in LOAD_SCENARIOS else name
        lines += ["", f"{label}: {title}"]
        for key, text in ROWS[name]:
            if key in summaries:
                lines.append(f"  {text:<40} {cell(summaries[key])}")
    return "\n".join(lines)


def json_lines(results: dict[str, list[Metrics]], profile: Profile, tool: str, quick: bool) -> list[str]:
    """One `BENCH {json}` line per scenario."""
    lines = []
    for name, runs in results.items():
        record = {
            "scenario": name,
            "tool": tool if name in LOAD_SCENARIOS else None,
            "reps": len(runs),
            "quick": quick,
            "metrics": {key: summary.as_json() for key, summary in summarize(runs).items()},
        }
        lines.append("BENCH " + json.dumps(record))
    return lines
