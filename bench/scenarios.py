"""The six scenarios; each runs once and returns its metrics (None where a number is not available)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import HealthProbe, Load, LoadResult, run_load
from bench.media import User, download, raw_convert, upload, url_target
from bench.memory import PeakSampler, children_cpu_seconds, tree_cpu_seconds, tree_memory
from bench.processes import HOST, Processes, run_sql, start_nginx

Metrics = dict[str, float | None]
MB = 1_000_000
PARALLEL_UPLOADS = 4
MEMORY_UPLOADS = 4
RAW_PARALLEL = 2  # the server's CONVERT_WORKERS default on this 2-core machine (the CPU count)
USERS_CONNECTIONS = 32
QUESTIONS_CONNECTIONS = 32
DOWNLOAD_CONNECTIONS = 16
QUESTIONS_BODY = b'{"questions_num": 5}'
TRANSFER_TIMEOUT = 600


@dataclass(frozen=True)
class Profile:
    """How long and how often: the full run or the quick smoke run."""

    reps: int
    load_seconds: float
    one_seconds: float  # the convert-one WAV, also the MP3 the download scenario serves
    parallel_seconds: float
    memory_seconds: float


FULL = Profile(reps=3, load_seconds=10, one_seconds=300, parallel_seconds=30, memory_seconds=300)
QUICK = Profile(reps=1, load_seconds=2, one_seconds=20, parallel_seconds=5, memory_seconds=5)


@dataclass
class Bench:
    """Everything the scenarios share."""

    profile: Profile
    processes: Processes
    database_url: str
    server_port: int
    server_pid: int
    standin_port: int
    standin_pid: int
    db_pid: int | None
    ffmpeg: str
    wrk: str | None
    nginx: str | None
    user: User
    wavs: dict[float, Path]
    record_target: str | None = None  # the convert-one MP3's path and query, for download
    www: Path = field(default_factory=Path)  # where nginx serves that same MP3 from

    @property
    def workdir(self) -> Path:
        """The run's temporary directory."""
        return self.processes.workdir


def _cpu(pid: int | None) -> float:
    return tree_cpu_seconds(pid) if pid is not None else 0.0


async def _load_with_cpu(bench: Bench, load: Load) -> tuple[LoadResult, Metrics]:
    """Run a load and the CPU the server, PostgreSQL and the stand-in spent meanwhile."""
    pids = (bench.server_pid, bench.db_pid, bench.standin_pid)
    before = [_cpu(pid) for pid in pids]
    result = await run_load(load, bench.wrk)
    server, db, standin = (_cpu(pid) - start for pid, start in zip(pids, before, strict=True))
    per_request = 1000 / result.requests if result.requests else 0.0
    return result, {
        "cpu_ms_per_req": server * per_request,
        "cpu_pct": 100 * server / result.seconds,
        "db_cpu_ms_per_req": db * per_request if bench.db_pid is not None else None,
        "standin_cpu_pct": 100 * standin / result.seconds,
        "client_cpu_pct": result.client_cpu_pct,
    }


def _latencies(result: LoadResult) -> Metrics:
    return {
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "non2xx": result.non2xx,
        "errors": result.errors,
    }


async def users(bench: Bench) -> Metrics:
    """POST /users {"name": "bench"} at 32 connections."""
    load = Load(
        HOST, bench.server_port, "/users", "POST", b'{"name": "bench"}', "application/json",
        USERS_CONNECTIONS, bench.profile.load_seconds,
    )  # fmt: skip
    result, cpu = await _load_with_cpu(bench, load)
    cpu.pop("standin_cpu_pct")
    return {**_latencies(result), **cpu}


async def questions(bench: Bench) -> Metrics:
    """POST /questions {"questions_num": 5} at 32 connections from an empty questions table, then the
    stand-in alone as the ceiling."""
    # Every rep starts from the same state: questions stored by earlier reps would turn more of the
    # pool's random picks into duplicates, each costing a second upstream round trip (README).
    run_sql(bench.database_url, "TRUNCATE questions")
    seconds = bench.profile.load_seconds
    service = Load(
        HOST, bench.server_port, "/questions", "POST", QUESTIONS_BODY, "application/json",
        QUESTIONS_CONNECTIONS, seconds,
    )  # fmt: skip
    result, cpu = await _load_with_cpu(bench, service)
    ceiling = Load(
        HOST, bench.standin_port, "/api/random?count=5", connections=QUESTIONS_CONNECTIONS, seconds=seconds
    )
    standin = await run_load(ceiling, bench.wrk)
    return {
        **_latencies(result),
        **cpu,
        "standin_rps": standin.rps,
        "standin_p50_ms": standin.p50_ms,
        "standin_p99_ms": standin.p99_ms,
        "ratio": result.rps / standin.rps if standin.rps else None,
    }


async def convert_one(bench: Bench) -> Metrics:
    """Upload one long WAV and download its MP3, probing /health meanwhile, between two runs of raw
    ffmpeg; the ratio is to their mean."""
    # On a shared machine the same conversion's time drifts by 10-20% within a minute: a raw run on
    # each side of the service's cancels a steady drift, where one raw run puts all of it into the
    # ratio. The first raw run also brings the WAV and ffmpeg into memory for both.
    wav = bench.wavs[bench.profile.one_seconds]
    bench.www = bench.workdir / "www"
    bench.www.mkdir(exist_ok=True)
    mp3 = bench.www / "record.mp3"
    raw_target = bench.workdir / "raw-one.mp3"
    raw_before, raw_cpu_before = await _timed_raw_convert(bench, wav, raw_target)
    probe = HealthProbe(HOST, bench.server_port)
    cpu_before = tree_cpu_seconds(bench.server_pid)
    async with probe.running():
        start = time.perf_counter()
        record = await upload(bench.server_port, bench.user, wav, TRANSFER_TIMEOUT)
        answered = time.perf_counter()
        target = url_target(str(record["url"]))
        size = await download(bench.server_port, target, mp3, TRANSFER_TIMEOUT)
        service = time.perf_counter() - start
    service_cpu = tree_cpu_seconds(bench.server_pid) - cpu_before
    bench.record_target = target
    raw_after, raw_cpu_after = await _timed_raw_convert(bench, wav, raw_target)
    raw = (raw_before + raw_after) / 2
    raw_cpu = (raw_cpu_before + raw_cpu_after) / 2
    return {
        "service_s": service,
        "upload_convert_s": answered - start,
        "raw_before_s": raw_before,
        "raw_after_s": raw_after,
        "raw_s": raw,
        "ratio": service / raw,
        "service_cpu_s": service_cpu,
        "raw_cpu_s": raw_cpu,
        "cpu_ratio": service_cpu / raw_cpu if raw_cpu else None,
        "health_max_ms": probe.longest * 1000,
        "health_probes": probe.probes,
        "health_failures": probe.failures,
        "wav_mb": wav.stat().st_size / MB,
        "mp3_mb": size / MB,
    }


async def _timed_raw_convert(bench: Bench, wav: Path, target: Path) -> tuple[float, float]:
    """One raw ffmpeg conversion: (seconds, CPU seconds)."""
    cpu_before = children_cpu_seconds()
    seconds = await raw_convert(bench.ffmpeg, wav, target)
    return seconds, children_cpu_seconds() - cpu_before


async def convert_parallel(bench: Bench) -> Metrics:
    """4 concurrent uploads against the same 4 conversions by raw ffmpeg, 2 at a time, run before and
    after them as a user runs it (the ratio is to their mean, as in convert-one), then scheduled as
    the service runs its own (SCHED_BATCH, after them only), to show what that is worth."""
    wav = bench.wavs[bench.profile.parallel_seconds]
    raw_before, raw_cpu_before = await _raw_parallel(bench, wav, as_batch_work=False)
    probe = HealthProbe(HOST, bench.server_port)
    cpu_before = tree_cpu_seconds(bench.server_pid)
    async with probe.running():
        service = await _concurrent_uploads(bench, wav, PARALLEL_UPLOADS)
    service_cpu = tree_cpu_seconds(bench.server_pid) - cpu_before
    raw_after, raw_cpu_after = await _raw_parallel(bench, wav, as_batch_work=False)
    raw_batch, _ = await _raw_parallel(bench, wav, as_batch_work=True)
    raw = (raw_before + raw_after) / 2
    raw_cpu = (raw_cpu_before + raw_cpu_after) / 2
    return {
        "service_s": service,
        "raw_before_s": raw_before,
        "raw_after_s": raw_after,
        "raw_s": raw,
        "throughput_ratio": raw / service,
        "service_cpu_s": service_cpu,
        "raw_cpu_s": raw_cpu,
        "cpu_ratio": service_cpu / raw_cpu if raw_cpu else None,
        "raw_batch_s": raw_batch,
        "batch_ratio": raw_batch / service,
        "health_max_ms": probe.longest * 1000,
    }


async def _concurrent_uploads(bench: Bench, wav: Path, count: int) -> float:
    """Upload `wav` `count` times at once; seconds until every upload is answered."""
    start = time.perf_counter()
    await asyncio.gather(
        *(upload(bench.server_port, bench.user, wav, TRANSFER_TIMEOUT) for _ in range(count))
    )
    return time.perf_counter() - start


async def _raw_parallel(bench: Bench, wav: Path, as_batch_work: bool) -> tuple[float, float]:
    """The parallel scenario's conversions by raw ffmpeg, RAW_PARALLEL at a time: (seconds, CPU seconds)."""
    slots = asyncio.Semaphore(RAW_PARALLEL)

    async def one(index: int) -> None:
        async with slots:
            target = bench.workdir / f"raw-parallel-{index}.mp3"
            await raw_convert(bench.ffmpeg, wav, target, as_batch_work)

    cpu_before = children_cpu_seconds()
    start = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(PARALLEL_UPLOADS)))
    return time.perf_counter() - start, children_cpu_seconds() - cpu_before


async def memory(bench: Bench) -> Metrics:
    """4 concurrent long uploads; the server tree's memory sampled every 50 ms."""
    wav = bench.wavs[bench.profile.memory_seconds]
    idle = tree_memory(bench.server_pid)
    sampler = PeakSampler(bench.server_pid, interval=0.05)
    async with sampler.running():
        wall = await _concurrent_uploads(bench, wav, MEMORY_UPLOADS)
    peak = sampler.peak
    return {
        "idle_rss_mb": idle.rss / MB,
        "peak_rss_mb": peak.rss / MB,
        "rss_delta_mb": (peak.rss - idle.rss) / MB,
        "idle_pss_mb": idle.pss / MB,
        "peak_pss_mb": peak.pss / MB,
        "pss_delta_mb": (peak.pss - idle.pss) / MB,
        "max_processes": sampler.max_processes,
        "samples": sampler.samples,
        "wall_s": wall,
    }


async def download_mp3(bench: Bench) -> Metrics:
    """GET the convert-one MP3 at 16 connections; the same file from nginx (1 worker, sendfile)."""
    if bench.record_target is None:
        raise RuntimeError("the download scenario needs the convert-one record")
    seconds = bench.profile.load_seconds
    load = Load(
        HOST, bench.server_port, bench.record_target, connections=DOWNLOAD_CONNECTIONS, seconds=seconds
    )
    result, cpu = await _load_with_cpu(bench, load)
    nginx_rate = nginx_cpu = nginx_client_cpu = None
    if bench.nginx is not None:
        port = start_nginx(bench.processes, bench.nginx, bench.www, "/record.mp3")
        try:
            nginx_pid = bench.processes.running["nginx"].pid
            nginx_load = Load(HOST, port, "/record.mp3", connections=DOWNLOAD_CONNECTIONS, seconds=seconds)
            cpu_before = tree_cpu_seconds(nginx_pid)
            nginx_result = await run_load(nginx_load, bench.wrk)
            nginx_cpu = 100 * (tree_cpu_seconds(nginx_pid) - cpu_before) / nginx_result.seconds
            nginx_rate = nginx_result.bytes_per_s / MB
            nginx_client_cpu = nginx_result.client_cpu_pct
        finally:
            bench.processes.stop("nginx")
    rate = result.bytes_per_s / MB
    return {
        "mb_per_s": rate,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "non2xx": result.non2xx,
        "cpu_pct": cpu["cpu_pct"],
        "client_cpu_pct": result.client_cpu_pct,
        "nginx_mb_per_s": nginx_rate,
        "nginx_cpu_pct": nginx_cpu,
        "nginx_client_cpu_pct": nginx_client_cpu,
        "ratio": rate / nginx_rate if nginx_rate else None,
    }


SCENARIOS: dict[str, Callable[[Bench], Awaitable[Metrics]]] = {
    "users": users,
    "questions": questions,
    "convert-one": convert_one,
    "convert-parallel": convert_parallel,
    "memory": memory,
    "download": download_mp3,
}


async def run_all(bench: Bench, names: Collection[str]) -> dict[str, list[Metrics]]:
    """The named scenarios (in SCENARIOS order), each `reps` times in a row; progress goes to stderr."""
    results: dict[str, list[Metrics]] = {}
    for name, scenario in SCENARIOS.items():
        if name not in names:
            continue
        for rep in range(1, bench.profile.reps + 1):
            started = time.perf_counter()
            metrics = await scenario(bench)
            results.setdefault(name, []).append(metrics)
            took = time.perf_counter() - started
            print(f"  {name} rep {rep}/{bench.profile.reps} done in {took:.1f}s", file=sys.stderr, flush=True)
    return results
