"""The scenarios; each runs once and returns its metrics (None where a number is not available)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.service import (
    HOST,
    Service,
    children_cpu_seconds,
    raw_convert,
    run_sql,
    start_nginx,
    tree_cpu_seconds,
    tree_memory,
)
from bench.traffic import HealthProbe, LoadResult, Upload, User, download, upload, wrk

Metrics = dict[str, float | None]
MB = 1_000_000
PARALLEL_UPLOADS = 4
MEMORY_UPLOADS = 4
RAW_PARALLEL = 2  # the server's CONVERT_WORKERS default on this 2-core machine (the CPU count)
USERS_CONNECTIONS = 32
QUESTIONS_CONNECTIONS = 32
DOWNLOAD_CONNECTIONS = 16
PACED_RATE = 8 * MB  # bytes/s: an upload over a real network rather than the loopback
MEMORY_SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Profile:
    """How long and how often: the full run or the quick smoke run."""

    reps: int
    load_seconds: float
    one_seconds: float  # the convert-one and paced WAV, also the MP3 the download scenario serves
    parallel_seconds: float
    memory_seconds: float


FULL = Profile(reps=3, load_seconds=10, one_seconds=300, parallel_seconds=30, memory_seconds=300)
QUICK = Profile(reps=1, load_seconds=2, one_seconds=20, parallel_seconds=5, memory_seconds=5)


@dataclass
class Bench:
    """Everything the scenarios share."""

    profile: Profile
    service: Service
    user: User
    wavs: dict[float, Path]
    wrk: str | None
    nginx: str | None
    record_url: str | None = None  # the convert-one MP3, which the download scenario serves

    @property
    def workdir(self) -> Path:
        """The run's temporary directory."""
        return self.service.processes.workdir

    @property
    def www(self) -> Path:
        """Where the MP3 of record_url is kept, for nginx to serve it too."""
        return self.workdir / "www"

    def pid(self, name: str) -> int:
        """The process id of one of the run's processes."""
        return self.service.processes.running[name].pid

    def server_cpu_seconds(self) -> float:
        """CPU seconds of every server instance's process tree (ffmpeg included)."""
        return sum(map(tree_cpu_seconds, self.service.instance_pids))

    def server_memory(self) -> tuple[int, int, int]:
        """RSS and PSS summed over every server instance's process tree, and its process count."""
        trees = [tree_memory(pid) for pid in self.service.instance_pids]
        rss, pss, count = (sum(column) for column in zip(*trees, strict=True))
        return rss, pss, count

    async def load(self, url: str, connections: int, body: bytes = b"") -> LoadResult:
        """wrk at `connections` for the profile's load time."""
        if self.wrk is None:
            raise RuntimeError("this scenario needs wrk")
        return await wrk(self.wrk, url, connections, self.profile.load_seconds, body, "application/json")


async def load_with_cpu(bench: Bench, url: str, connections: int, body: bytes = b"") -> Metrics:
    """A wrk run and what the server, PostgreSQL and the stand-in spent meanwhile."""
    pids = (bench.service.database.pid, bench.pid("standin"), *bench.service.instance_pids)
    before = [tree_cpu_seconds(pid) for pid in pids]
    result = await bench.load(url, connections, body)
    db, standin, *servers = (tree_cpu_seconds(pid) - cpu for pid, cpu in zip(pids, before, strict=True))
    server = sum(servers)  # every instance's
    per_request = 1000 / result.requests if result.requests else 0.0
    return {
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "non2xx": result.non2xx,
        "errors": result.errors,
        "cpu_ms_per_req": server * per_request,
        "cpu_pct": 100 * server / result.seconds,
        "db_cpu_ms_per_req": db * per_request if pids[0] is not None else None,
        "standin_cpu_pct": 100 * standin / result.seconds,
        "client_cpu_pct": result.client_cpu_pct,
        "mb_per_s": result.bytes_per_s / MB,
    }


async def users(bench: Bench) -> Metrics:
    """POST /users {"name": "bench"} at 32 connections."""
    metrics = await load_with_cpu(
        bench, f"{bench.service.url}/users", USERS_CONNECTIONS, b'{"name": "bench"}'
    )
    del metrics["standin_cpu_pct"], metrics["mb_per_s"]
    return metrics


async def questions(bench: Bench) -> Metrics:
    """POST /questions {"questions_num": 5} at 32 connections from an empty questions table, the
    stand-in at 20 ms latency with a pool of 1,000,000 ids; then the stand-in alone as the ceiling."""
    # Every rep starts from the same state: questions stored by earlier reps would turn more of the
    # pool's random picks into duplicates, each costing a second upstream round trip (README).
    run_sql(bench.service.database.url, "TRUNCATE questions")
    url = f"{bench.service.url}/questions"
    metrics = await load_with_cpu(bench, url, QUESTIONS_CONNECTIONS, b'{"questions_num": 5}')
    del metrics["mb_per_s"]
    standin_url = f"http://{HOST}:{bench.service.standin_port}/api/random?count=5"
    standin = await bench.load(standin_url, QUESTIONS_CONNECTIONS)
    return {
        **metrics,
        "standin_rps": standin.rps,
        "standin_p50_ms": standin.p50_ms,
        "standin_p99_ms": standin.p99_ms,
        "ratio": metrics["rps"] / standin.rps if metrics["rps"] and standin.rps else None,
    }


def created(sent: Upload) -> dict[str, Any]:
    """The body of an upload's 201 answer; anything else stops the run."""
    if sent.response.code != 201:
        raise RuntimeError(f"POST /records answered {sent.response.code}: {sent.response.body[:300]!r}")
    record: dict[str, Any] = json.loads(sent.response.body)
    return record


async def download_to(url: str, path: Path) -> int:
    """GET `url` into `path`; its size."""
    with path.open("wb") as sink:
        response = await download(url, sink)
    size = path.stat().st_size
    if response.code != 200 or size == 0:
        raise RuntimeError(f"GET {url} answered {response.code} with {size} bytes")
    return size


async def timed_raw_convert(bench: Bench, wav: Path) -> tuple[float, float]:
    """One raw ffmpeg conversion: (seconds, CPU seconds)."""
    cpu_before = children_cpu_seconds()
    seconds = await raw_convert(bench.service.ffmpeg, wav, bench.workdir / "raw.mp3")
    return seconds, children_cpu_seconds() - cpu_before


async def convert_one(bench: Bench) -> Metrics:
    """Upload one long WAV and download its MP3, probing /health meanwhile, between two runs of raw
    ffmpeg; the ratio is to their mean."""
    # On a shared machine the same conversion's time drifts by 10-20% within a minute: a raw run on
    # each side of the service's cancels a steady drift, where one raw run puts all of it into the
    # ratio. The first raw run also brings the WAV and ffmpeg into memory for both.
    wav = bench.wavs[bench.profile.one_seconds]
    bench.www.mkdir(exist_ok=True)
    raw_before, raw_cpu_before = await timed_raw_convert(bench, wav)
    probe = HealthProbe(bench.service.url)
    cpu_before = bench.server_cpu_seconds()
    async with probe.running():
        sent = await upload(bench.service.url, bench.user, wav)
        url = str(created(sent)["url"])
        size = await download_to(url, bench.www / "record.mp3")
        service = time.perf_counter() - sent.started
    service_cpu = bench.server_cpu_seconds() - cpu_before
    bench.record_url = url
    raw_after, raw_cpu_after = await timed_raw_convert(bench, wav)
    raw, raw_cpu = (raw_before + raw_after) / 2, (raw_cpu_before + raw_cpu_after) / 2
    return {
        "service_s": service,
        "upload_convert_s": sent.answered - sent.started,
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


async def concurrent_uploads(bench: Bench, wav: Path, count: int) -> float:
    """Upload `wav` `count` times at once; seconds until every upload is answered."""
    start = time.perf_counter()
    for sent in await asyncio.gather(*(upload(bench.service.url, bench.user, wav) for _ in range(count))):
        created(sent)
    return time.perf_counter() - start


async def raw_parallel(bench: Bench, wav: Path, as_batch_work: bool) -> tuple[float, float]:
    """The parallel uploads' conversions by raw ffmpeg, RAW_PARALLEL at a time: (seconds, CPU seconds)."""
    slots = asyncio.Semaphore(RAW_PARALLEL)

    async def one(index: int) -> None:
        async with slots:
            await raw_convert(bench.service.ffmpeg, wav, bench.workdir / f"raw-{index}.mp3", as_batch_work)

    cpu_before = children_cpu_seconds()
    start = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(PARALLEL_UPLOADS)))
    return time.perf_counter() - start, children_cpu_seconds() - cpu_before


async def convert_parallel(bench: Bench) -> Metrics:
    """4 concurrent uploads against the same 4 conversions by raw ffmpeg, 2 at a time, run before and
    after them as a user runs it (the ratio is to their mean, as in convert-one), then scheduled as
    the service runs its own (SCHED_BATCH, after them only), to show what that is worth."""
    wav = bench.wavs[bench.profile.parallel_seconds]
    raw_before, raw_cpu_before = await raw_parallel(bench, wav, as_batch_work=False)
    probe = HealthProbe(bench.service.url)
    cpu_before = bench.server_cpu_seconds()
    async with probe.running():
        service = await concurrent_uploads(bench, wav, PARALLEL_UPLOADS)
    service_cpu = bench.server_cpu_seconds() - cpu_before
    raw_after, raw_cpu_after = await raw_parallel(bench, wav, as_batch_work=False)
    raw_batch, _ = await raw_parallel(bench, wav, as_batch_work=True)
    raw, raw_cpu = (raw_before + raw_after) / 2, (raw_cpu_before + raw_cpu_after) / 2
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


async def memory(bench: Bench) -> Metrics:
    """4 concurrent long uploads; the server trees' memory sampled every 50 ms."""
    wav = bench.wavs[bench.profile.memory_seconds]
    idle_rss, idle_pss, _ = bench.server_memory()
    peak_rss = peak_pss = most = samples = 0
    uploads = asyncio.ensure_future(concurrent_uploads(bench, wav, MEMORY_UPLOADS))
    while samples == 0 or not uploads.done():
        rss, pss, count = bench.server_memory()
        peak_rss, peak_pss, most, samples = (
            max(peak_rss, rss),
            max(peak_pss, pss),
            max(most, count),
            samples + 1,
        )
        await asyncio.wait({uploads}, timeout=MEMORY_SAMPLE_SECONDS)
    return {
        "idle_rss_mb": idle_rss / MB,
        "peak_rss_mb": peak_rss / MB,
        "rss_delta_mb": (peak_rss - idle_rss) / MB,
        "idle_pss_mb": idle_pss / MB,
        "peak_pss_mb": peak_pss / MB,
        "pss_delta_mb": (peak_pss - idle_pss) / MB,
        "max_processes": most,
        "samples": samples,
        "wall_s": await uploads,
    }


async def download_mp3(bench: Bench) -> Metrics:
    """GET the convert-one MP3 at 16 connections; the same file from nginx (1 worker, sendfile)."""
    if bench.record_url is None:  # run on its own: make the record first
        bench.www.mkdir(exist_ok=True)
        bench.record_url = str(
            created(await upload(bench.service.url, bench.user, bench.wavs[bench.profile.one_seconds]))["url"]
        )
        await download_to(bench.record_url, bench.www / "record.mp3")
    service = await load_with_cpu(bench, bench.record_url, DOWNLOAD_CONNECTIONS)
    nginx: Metrics = {"nginx_mb_per_s": None, "nginx_cpu_pct": None, "nginx_client_cpu_pct": None}
    if bench.nginx is not None:
        port = start_nginx(bench.service.processes, bench.nginx, bench.www, "/record.mp3")
        try:
            cpu_before = tree_cpu_seconds(bench.pid("nginx"))
            result = await bench.load(f"http://{HOST}:{port}/record.mp3", DOWNLOAD_CONNECTIONS)
            nginx = {
                "nginx_mb_per_s": result.bytes_per_s / MB,
                "nginx_cpu_pct": 100 * (tree_cpu_seconds(bench.pid("nginx")) - cpu_before) / result.seconds,
                "nginx_client_cpu_pct": result.client_cpu_pct,
            }
        finally:
            bench.service.processes.stop("nginx")
    rate, nginx_rate = service["mb_per_s"], nginx["nginx_mb_per_s"]
    return {
        **{key: service[key] for key in ("mb_per_s", "rps", "p50_ms", "non2xx", "cpu_pct", "client_cpu_pct")},
        **nginx,
        "ratio": rate / nginx_rate if rate is not None and nginx_rate else None,
    }


async def upload_paced(bench: Bench) -> Metrics:
    """The long WAV uploaded at 8 MB/s, paced by the client as a real network would, with the
    credentials first, so that the service converts it while it arrives: the time from its last byte
    to the 201 (the MP3 is committed by then), against raw ffmpeg's time for the WAV (run before and
    after; the ratio is to their mean), and against the same upload with the credentials after the
    file, which the service converts once the body is in."""
    wav = bench.wavs[bench.profile.one_seconds]
    raw_before, _ = await timed_raw_convert(bench, wav)
    following = await upload(bench.service.url, bench.user, wav, rate=PACED_RATE)
    created(following)
    after_body = await upload(bench.service.url, bench.user, wav, rate=PACED_RATE, fields_first=False)
    created(after_body)
    raw_after, _ = await timed_raw_convert(bench, wav)
    raw = (raw_before + raw_after) / 2
    tail = following.answered - following.last_byte_sent
    tail_after_body = after_body.answered - after_body.last_byte_sent
    return {
        "after_last_byte_s": tail,
        "raw_before_s": raw_before,
        "raw_after_s": raw_after,
        "raw_s": raw,
        "ratio": tail / raw,
        "fields_last_after_last_byte_s": tail_after_body,
        "fields_last_ratio": tail_after_body / raw,
        "upload_s": following.last_byte_sent - following.started,
        "upload_mb_per_s": following.size / MB / (following.last_byte_sent - following.started),
        "wav_mb": wav.stat().st_size / MB,
    }


SCENARIOS: dict[str, Callable[[Bench], Awaitable[Metrics]]] = {
    "users": users,
    "questions": questions,
    "convert-one": convert_one,
    "convert-parallel": convert_parallel,
    "memory": memory,
    "download": download_mp3,
    "upload-8mbps": upload_paced,
}
NEED_WRK = ("users", "questions", "download")
