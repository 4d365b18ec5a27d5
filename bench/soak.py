"""Soak test: `python bench/soak.py` (120 s of mixed load), `--seconds N`, or `--quick` (20 s).

Starts a fresh PostgreSQL database (embedded, or on BENCH_DATABASE_URL's server), the jService stand-in
(20 ms latency, a pool of 1,000,000) and one `python server.py`, then runs 8 workers that loop over a
seeded weighted choice of POST /users, POST /questions, WAV uploads and downloads (with and without
Range). It fails (exit 1) on any 5xx (a 503 for conversion capacity is retried after Retry-After), any
connection error, a lost or wrong upload, server RSS growth over 15% or fd growth over 5 between the
first 20 s (5 s with --quick) and the end, or ffmpeg children / MEDIA_DIR/.tmp files left after the load.
Prints a table and one `SOAK {json}` line, and stops all it started."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/: put the repository root there instead.
if sys.path[0] == str(Path(__file__).resolve().parent):
    sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from bench.client import Connection, Response
from bench.load import percentile
from bench.media import make_wav, upload_body, url_target
from bench.memory import PROC, PeakSampler, process_memory, tree_memory, tree_pids
from bench.processes import (
    HOST,
    STANDIN_LATENCY_MS,
    STANDIN_POOL_SIZE,
    Database,
    Processes,
    create_database,
    die_with_parent,
    drop_database,
    start_server,
    start_standin,
)
from converters.ffmpeg import find_ffmpeg

FULL_SECONDS = 120.0
QUICK_SECONDS = 20.0
FULL_BASELINE_SECONDS = 20.0
QUICK_BASELINE_SECONDS = 5.0
WORKERS = 8
SEED = 20261129
WAV_SECONDS = (1.0, 4.0, 12.0, 30.0)
WEIGHTS = {"users": 2, "questions": 3, "upload": 2, "download": 2, "download_range": 2}
ACTIONS = tuple(WEIGHTS)
FINAL_ACTIONS = ("final_download", "final_range")  # the pass over every record after the load
EXPECTED_STATUS = {
    "users": 201,
    "questions": 200,
    "upload": 201,
    "download": 200,
    "download_range": 206,
    "final_download": 200,
    "final_range": 206,
}
QUESTIONS_MAX = 5
REQUEST_TIMEOUT = 120.0  # one request, upload and conversion included
MAX_ACTIONS_PER_WORKER = 1_000_000
MAX_CAPACITY_RETRIES = 5
MAX_RETRY_AFTER_SECONDS = 30.0
DEFAULT_RETRY_AFTER_SECONDS = 5.0
RANGE_MAX_BYTES = 64 * 1024
RSS_TOLERANCE = 0.15
FD_SLACK = 5
DURATION_TOLERANCE_SECONDS = 0.1
LEFTOVER_DEADLINE_SECONDS = 5.0
POLL_SECONDS = 0.05
SAMPLE_SECONDS = 0.1  # the server tree's peak RSS during the load
SETTLE_SECONDS = 0.5  # after the workers are idle, before RSS and fds are read
PAUSE_DEADLINE_SECONDS = REQUEST_TIMEOUT + MAX_CAPACITY_RETRIES * MAX_RETRY_AFTER_SECONDS + 10
WORKERS_SLACK_SECONDS = PAUSE_DEADLINE_SECONDS  # past the deadline, for the actions in flight
VERIFY_PARALLEL = 2
VERIFY_SECONDS = 900.0
DECODE_TIMEOUT_SECONDS = 120.0
MAX_FAILURES_KEPT = 50
MIB = 1024 * 1024
FAILURE_KINDS = {  # besides 5xx, connection errors and lost uploads
    "status": "unexpected statuses (4xx, or a capacity 503 past every retry)",
    "body": "answers with a wrong body, type or bytes",
    "range": "Range answers with the wrong bytes or Content-Range",
    "keepalive": "early answers without `Connection: close` on a connection the server then closed",
    "harness": "harness problems (workers stuck or crashed)",
}
TIME_RE = re.compile(rb"time=\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class ActionStats:
    """What one kind of request saw."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    connection_errors: int = 0
    capacity_503: int = 0

    @property
    def requests(self) -> int:
        """Requests sent, answered or not."""
        return sum(self.statuses.values()) + self.connection_errors

    def as_json(self) -> dict[str, Any]:
        """Counts and latencies in milliseconds."""
        ordered = sorted(self.latencies)
        return {
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "connection_errors": self.connection_errors,
            "capacity_503_retried": self.capacity_503,
            "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        }


@dataclass(frozen=True)
class Account:
    """A user made during the soak, with its one-time token."""

    id: int
    token: str


@dataclass(frozen=True)
class Record:
    """An upload the server answered 201 to."""

    id: str
    user: int
    target: str  # the download link's path and query
    wav_seconds: float


@dataclass(frozen=True)
class Snapshot:
    """The server's resources at one quiet moment (all workers idle)."""

    at_seconds: float
    rss: int
    tree_rss: int
    tree_processes: int
    fds: int

    def as_json(self) -> dict[str, Any]:
        """Bytes and counts."""
        return {
            "at_s": round(self.at_seconds, 1),
            "rss": self.rss,
            "tree_rss": self.tree_rss,
            "tree_processes": self.tree_processes,
            "fds": self.fds,
        }


@dataclass
class Gate:
    """Lets the controller park every worker between actions, to read RSS and fds at a quiet moment."""

    open: asyncio.Event = field(default_factory=asyncio.Event)
    parked: int = 0
    finished: int = 0

    async def checkpoint(self) -> None:
        """Wait here while the gate is closed."""
        if not self.open.is_set():
            self.parked += 1
            try:
                await self.open.wait()
            finally:
                self.parked -= 1


@dataclass
class Soak:
    """Everything the workers share."""

    port: int
    server_pid: int
    media_dir: Path
    workdir: Path
    wavs: dict[float, Path]
    deadline: float
    stats: dict[str, ActionStats] = field(
        default_factory=lambda: {name: ActionStats() for name in ACTIONS + FINAL_ACTIONS}
    )
    accounts: list[Account] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    references: dict[str, Path] = field(default_factory=dict)  # record id -> first full download
    failures: list[str] = field(default_factory=list)
    failure_kinds: Counter[str] = field(default_factory=Counter)
    range_checks: int = 0
    gate: Gate = field(default_factory=Gate)

    @property
    def failure_count(self) -> int:
        """Failed checks of every kind."""
        return sum(self.failure_kinds.values())

    def fail(self, kind: str, message: str) -> None:
        """Note a failed check (the first MAX_FAILURES_KEPT are kept verbatim)."""
        self.failure_kinds[kind] += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(message)


def fd_count(pid: int) -> int:
    """Open file descriptors of one process (-1 when it is gone)."""
    try:
        return len(os.listdir(PROC / str(pid) / "fd"))
    except OSError:
        return -1


def snapshot(pid: int, started: float) -> Snapshot:
    """RSS of the server itself and of its tree, and its fd count, now."""
    tree = tree_memory(pid)
    return Snapshot(
        at_seconds=time.monotonic() - started,
        rss=process_memory(pid).rss,
        tree_rss=tree.rss,
        tree_processes=len(tree_pids(pid)),
        fds=fd_count(pid),
    )


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def leftover_processes(server_pid: int, media_dir: Path) -> list[str]:
    """The server's child processes, and any process whose command line names MEDIA_DIR."""
    found = {pid: _cmdline(pid) for pid in tree_pids(server_pid) if pid != server_pid}
    marker = str(media_dir)
    for entry in os.scandir(PROC):
        if entry.name.isdigit() and int(entry.name) != server_pid:
            line = _cmdline(int(entry.name))
            if marker in line:
                found[int(entry.name)] = line
    return [f"{pid}: {line[:160]}" for pid, line in sorted(found.items())]


def leftover_temp_files(media_dir: Path) -> list[str]:
    """Names in MEDIA_DIR/.tmp."""
    try:
        return sorted(path.name for path in (media_dir / ".tmp").iterdir())
    except FileNotFoundError:
        return []


def decoded_seconds(ffmpeg: str, mp3: Path) -> float | None:
    """Duration of an MP3 as ffmpeg decodes it (`-f null -`, the last `time=`); None when it fails."""
    command = [ffmpeg, "-nostdin", "-hide_banner", "-i", str(mp3), "-f", "null", "-"]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=DECODE_TIMEOUT_SECONDS,
            check=False,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        return None
    matches = TIME_RE.findall(result.stderr)
    if result.returncode != 0 or not matches:
        return None
    hours, minutes, seconds = matches[-1]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


async def timed(soak: Soak, action: str, request: Awaitable[Response], tag: str = "") -> Response | None:
    """Send one request, count its status and latency; None (counted) on a connection error or timeout."""
    stats = soak.stats[action]
    sent = time.perf_counter()
    try:
        response = await asyncio.wait_for(request, REQUEST_TIMEOUT)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        stats.connection_errors += 1
        soak.fail("connection", f"{action}{tag}: connection error {type(error).__name__}: {error}")
        return None
    stats.latencies.append(time.perf_counter() - sent)
    stats.statuses[str(response.status)] += 1
    if response.status >= 500 and not is_capacity_503(response):
        soak.fail("5xx", f"{action}{tag}: {response.status} {response.body[:300]!r}")
    elif response.status != EXPECTED_STATUS[action] and response.status < 500:
        soak.fail("status", f"{action}{tag}: unexpected {response.status} {response.body[:300]!r}")
    return response


def is_capacity_503(response: Response) -> bool:
    """A 503 with Retry-After for full conversion capacity (retried, not a failure)."""
    return (
        response.status == 503
        and "retry-after" in response.headers
        and b"capacity" in response.body
        and response.headers.get("content-type", "").startswith("application/problem+json")
    )


def _json(response: Response) -> Any:
    try:
        return json.loads(response.body)
    except ValueError:
        return None


async def do_users(soak: Soak, connection: Connection, rng: random.Random) -> None:
    """POST /users; keeps the account for uploads."""
    body = json.dumps({"name": f"soak-{rng.randrange(10**6)}"}).encode()
    headers = {"Content-Type": "application/json"}
    response = await timed(soak, "users", connection.request("POST", "/users", body, headers))
    if response is None or response.status != 201:
        return
    payload = _json(response)
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), int) or "token" not in payload:
        soak.fail("body", f"users: a 201 without id and token: {response.body[:200]!r}")
        return
    soak.accounts.append(Account(payload["id"], str(payload["token"])))


async def do_questions(soak: Soak, connection: Connection, rng: random.Random) -> None:
    """POST /questions {"questions_num": 1..5}."""
    body = json.dumps({"questions_num": rng.randint(1, QUESTIONS_MAX)}).encode()
    headers = {"Content-Type": "application/json"}
    response = await timed(soak, "questions", connection.request("POST", "/questions", body, headers))
    if response is not None and response.status == 200 and not isinstance(_json(response), dict):
        soak.fail("body", f"questions: a 200 that is not a JSON object: {response.body[:200]!r}")


async def upload_once(soak: Soak, account: Account, wav: Path) -> Response | None:
    """One POST /records on its own connection; after a refusal, check the connection was kept open."""
    # A keep-alive client reuses the connection unless the answer says `Connection: close`, so a
    # refusal read before the body that leaves that out must leave the connection usable.
    connection = Connection(HOST, soak.port)
    body, headers = upload_body(account.id, account.token, wav)
    try:
        response = await timed(
            soak, "upload", connection.request("POST", "/records", body, headers), f" {wav.name}"
        )
        if response is None or response.status == 201 or response.headers.get("connection") == "close":
            return response
        try:
            probe = await asyncio.wait_for(connection.request("GET", "/health"), REQUEST_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            soak.fail(
                "keepalive",
                f"upload {wav.name}: {response.status} without `Connection: close`, yet the next request"
                f" on that connection failed ({type(error).__name__}: {error})",
            )
        else:
            if probe.status != 200:
                soak.fail(
                    "keepalive", f"upload {wav.name}: GET /health after a {response.status}: {probe.status}"
                )
        return response
    finally:
        await connection.close()


def retry_after_seconds(soak: Soak, response: Response) -> float:
    """The Retry-After delay in seconds, capped (a value that is not a number of seconds fails a check)."""
    value = response.headers.get("retry-after", "")
    if not value.isdigit():
        soak.fail("body", f"upload: Retry-After {value!r} is not a number of seconds")
        return DEFAULT_RETRY_AFTER_SECONDS
    return min(MAX_RETRY_AFTER_SECONDS, float(value))


async def do_upload(soak: Soak, connection: Connection, rng: random.Random) -> None:
    """POST /records with a WAV from disk; a capacity 503 is retried after its Retry-After."""
    if not soak.accounts:
        await do_users(soak, connection, rng)
        return
    account = rng.choice(soak.accounts)
    seconds = rng.choice(sorted(soak.wavs))
    wav = soak.wavs[seconds]
    for _ in range(MAX_CAPACITY_RETRIES + 1):
        response = await upload_once(soak, account, wav)
        if response is None:
            return
        if is_capacity_503(response):
            soak.stats["upload"].capacity_503 += 1
            delay = retry_after_seconds(soak, response)
            if time.monotonic() + delay > soak.deadline:
                return  # the soak is over before the retry could go: not a failure
            await asyncio.sleep(delay)
            continue
        break
    else:
        soak.fail("status", f"upload: still 503 after {MAX_CAPACITY_RETRIES} retries")
        return
    if response.status != 201:
        return
    payload = _json(response)
    if not isinstance(payload, dict) or not {"id", "user", "url"} <= payload.keys():
        soak.fail("body", f"upload: a 201 without id, user and url: {response.body[:200]!r}")
        return
    if response.headers.get("location") != payload["url"] or payload["user"] != account.id:
        soak.fail("body", f"upload: Location or user does not match the body: {response.body[:200]!r}")
    soak.records.append(Record(str(payload["id"]), account.id, url_target(payload["url"]), seconds))


async def fetch_full(
    soak: Soak, connection: Connection, record: Record, target: Path, action: str = "download"
) -> bool:
    """GET the whole MP3 into `target`; checks status, type and (if known) the bytes. True when all match."""
    with target.open("wb") as sink:
        response = await timed(
            soak,
            action,
            connection.request("GET", record.target, keep_body=False, sink=sink),
            f" {record.id}",
        )
    if response is None or response.status != 200:
        return False
    if response.headers.get("content-type") != "audio/mpeg" or response.size == 0:
        soak.fail("body", f"{action} {record.id}: {response.headers.get('content-type')}, {response.size} B")
        return False
    reference = soak.references.get(record.id)
    if reference is None:
        reference = soak.workdir / "references" / f"{record.id}.mp3"
        shutil.copyfile(target, reference)
        soak.references[record.id] = reference
    elif not same_bytes(reference, target):
        soak.fail("body", f"{action} {record.id}: the bytes differ from the first download")
        return False
    return True


def same_bytes(first: Path, second: Path) -> bool:
    """Whether two files hold the same bytes."""
    if first.stat().st_size != second.stat().st_size:
        return False
    with first.open("rb") as one, second.open("rb") as two:
        for _ in range(first.stat().st_size // (1024 * 1024) + 2):
            left, right = one.read(1024 * 1024), two.read(1024 * 1024)
            if left != right:
                return False
            if not left:
                return True
    return True


async def do_download(soak: Soak, connection: Connection, rng: random.Random, worker: int) -> None:
    """GET /record of a random upload, whole."""
    if not soak.records:
        await do_questions(soak, connection, rng)
        return
    record = rng.choice(soak.records)
    target = soak.workdir / "downloads" / f"worker-{worker}.mp3"
    await fetch_full(soak, connection, record, target)


def pick_range(rng: random.Random, size: int) -> tuple[str, int, int]:
    """A Range header value of one of the three forms, and the first and last byte it asks for."""
    form = rng.randrange(3)
    if form == 0:
        start = rng.randrange(size)
        end = min(size - 1, start + rng.randrange(RANGE_MAX_BYTES))
        return f"bytes={start}-{end}", start, end
    if form == 1:
        start = rng.randrange(max(0, size - RANGE_MAX_BYTES), size)
        return f"bytes={start}-", start, size - 1
    length = rng.randint(1, min(size, RANGE_MAX_BYTES))
    return f"bytes=-{length}", size - length, size - 1


async def check_range(
    soak: Soak, connection: Connection, rng: random.Random, record: Record, action: str = "download_range"
) -> None:
    """GET with a random Range against a record with a reference copy: 206 and exactly those bytes."""
    reference = soak.references[record.id]
    size = reference.stat().st_size
    value, start, end = pick_range(rng, size)
    response = await timed(
        soak,
        action,
        connection.request("GET", record.target, headers={"Range": value}),
        f" {record.id} {value}",
    )
    if response is None or response.status != 206:
        return
    soak.range_checks += 1
    with reference.open("rb") as file:
        file.seek(start)
        expected = file.read(end - start + 1)
    content_range = response.headers.get("content-range", "")
    if content_range != f"bytes {start}-{end}/{size}":
        soak.fail(
            "range",
            f"{action} {record.id} {value}: Content-Range {content_range!r}, wanted {start}-{end}/{size}",
        )
    elif response.body != expected:
        soak.fail(
            "range",
            f"{action} {record.id} {value}: {len(response.body)} B that differ from bytes {start}-{end}",
        )


async def do_download_range(soak: Soak, connection: Connection, rng: random.Random, worker: int) -> None:
    """GET /record with a Range header (a whole download first when no copy to compare with exists)."""
    known = [record for record in soak.records if record.id in soak.references]
    if not known:
        await do_download(soak, connection, rng, worker)
        return
    await check_range(soak, connection, rng, rng.choice(known))


async def worker(soak: Soak, index: int, seed: int, connection: Connection) -> None:
    """Loop over a seeded weighted choice of actions until the deadline."""
    rng = random.Random(seed * 1000 + index)
    weights = [WEIGHTS[name] for name in ACTIONS]
    try:
        for _ in range(MAX_ACTIONS_PER_WORKER):
            await soak.gate.checkpoint()
            if time.monotonic() >= soak.deadline:
                return
            action = rng.choices(ACTIONS, weights)[0]
            if action == "users":
                await do_users(soak, connection, rng)
            elif action == "questions":
                await do_questions(soak, connection, rng)
            elif action == "upload":
                await do_upload(soak, connection, rng)
            elif action == "download":
                await do_download(soak, connection, rng, index)
            else:
                await do_download_range(soak, connection, rng, index)
    finally:
        soak.gate.finished += 1


async def quiet_snapshot(soak: Soak, started: float) -> tuple[Snapshot, float]:
    """Park the workers between actions, read RSS and fds, reopen; returns the snapshot and pause."""
    paused = time.monotonic()
    soak.gate.open.clear()
    for _ in range(int(PAUSE_DEADLINE_SECONDS / POLL_SECONDS)):
        if soak.gate.parked + soak.gate.finished >= WORKERS:
            break
        await asyncio.sleep(POLL_SECONDS)
    else:
        soak.fail("harness", "the workers did not go idle for the baseline snapshot")
    await asyncio.sleep(SETTLE_SECONDS)
    taken = snapshot(soak.server_pid, started)
    soak.gate.open.set()
    return taken, time.monotonic() - paused


async def wait_clean(soak: Soak) -> tuple[list[str], list[str], float]:
    """Poll a few seconds for no server children and an empty MEDIA_DIR/.tmp; returns what is left."""
    began = time.monotonic()
    processes: list[str] = []
    files: list[str] = []
    for _ in range(int(LEFTOVER_DEADLINE_SECONDS / POLL_SECONDS) + 1):
        processes = leftover_processes(soak.server_pid, soak.media_dir)
        files = leftover_temp_files(soak.media_dir)
        if not processes and not files:
            break
        await asyncio.sleep(POLL_SECONDS)
    return processes, files, time.monotonic() - began


@dataclass
class Verification:
    """The final pass over every record."""

    records: int = 0
    ok: int = 0
    lost: list[str] = field(default_factory=list)
    worst_duration_error: float = 0.0
    seconds: float = 0.0


async def verify_records(soak: Soak, ffmpeg: str, seed: int) -> Verification:
    """Download, decode and time every record once more, and check one random Range of each."""
    result = Verification(records=len(soak.records))
    began = time.monotonic()
    deadline = began + VERIFY_SECONDS
    queue = list(soak.records)
    rng = random.Random(seed)

    async def one_by_one(index: int) -> None:
        connection = Connection(HOST, soak.port)
        target = soak.workdir / "downloads" / f"verify-{index}.mp3"
        try:
            for _ in range(len(soak.records)):
                if not queue or time.monotonic() > deadline:
                    return
                record = queue.pop()
                if not await fetch_full(soak, connection, record, target, "final_download"):
                    result.lost.append(f"{record.id}: no good download")
                    continue
                decoded = await asyncio.to_thread(decoded_seconds, ffmpeg, target)
                if decoded is None:
                    result.lost.append(f"{record.id}: ffmpeg cannot decode it")
                    soak.fail("lost", f"final {record.id}: ffmpeg cannot decode the MP3")
                    continue
                error = abs(decoded - record.wav_seconds)
                result.worst_duration_error = max(result.worst_duration_error, error)
                if error > DURATION_TOLERANCE_SECONDS:
                    result.lost.append(f"{record.id}: {decoded:.3f} s, the WAV has {record.wav_seconds:g} s")
                    soak.fail(
                        "lost",
                        f"final {record.id}: MP3 of {decoded:.3f} s for a {record.wav_seconds:g} s WAV",
                    )
                    continue
                await check_range(soak, connection, rng, record, "final_range")
                result.ok += 1
        finally:
            await connection.close()

    await asyncio.gather(*(one_by_one(index) for index in range(VERIFY_PARALLEL)))
    if queue:
        result.lost += [f"{record.id}: not verified in {VERIFY_SECONDS:g} s" for record in queue]
        soak.fail("lost", f"final: {len(queue)} records not verified within {VERIFY_SECONDS:g} s")
    result.seconds = time.monotonic() - began
    return result


@dataclass
class Outcome:
    """What the soak measured, for the table and the JSON line."""

    seconds: float
    baseline: Snapshot
    end: Snapshot
    after_verify: Snapshot
    leftover_processes: list[str]
    leftover_files: list[str]
    clean_after: float
    verification: Verification
    paused: float
    peak_tree_rss: int
    peak_tree_processes: int


async def run_soak(soak: Soak, seconds: float, baseline_at: float, seed: int, ffmpeg: str) -> Outcome:
    """The load with quiet snapshots at `baseline_at` and at the end, then the leftover and final checks."""
    (soak.workdir / "references").mkdir()
    (soak.workdir / "downloads").mkdir()
    connections = [Connection(HOST, soak.port) for _ in range(WORKERS)]
    started = time.monotonic()
    soak.deadline = started + seconds
    soak.gate.open.set()
    sampler = PeakSampler(soak.server_pid, SAMPLE_SECONDS)
    try:
        async with sampler.running():
            tasks = [
                asyncio.create_task(worker(soak, index, seed, connections[index])) for index in range(WORKERS)
            ]
            await asyncio.sleep(baseline_at)
            baseline, paused = await quiet_snapshot(soak, started)
            soak.deadline += paused  # the pause does not count as load time
            remaining = soak.deadline - time.monotonic()
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, remaining) + WORKERS_SLACK_SECONDS)
            for task in pending:
                task.cancel()
                soak.fail("harness", "a worker was still busy long after the deadline (cancelled)")
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                    soak.fail("harness", f"a worker crashed: {type(outcome).__name__}: {outcome}")
            load_seconds = time.monotonic() - started - paused
        processes, files, clean_after = await wait_clean(soak)
        await asyncio.sleep(SETTLE_SECONDS)
        end = snapshot(soak.server_pid, started)  # the workers' keep-alive connections still open
    finally:
        for connection in connections:
            await connection.close()
    verification = await verify_records(soak, ffmpeg, seed)
    after_verify = snapshot(soak.server_pid, started)
    return Outcome(
        seconds=load_seconds,
        baseline=baseline,
        end=end,
        after_verify=after_verify,
        leftover_processes=processes,
        leftover_files=files,
        clean_after=clean_after,
        verification=verification,
        paused=paused,
        peak_tree_rss=sampler.peak.rss,
        peak_tree_processes=sampler.max_processes,
    )


def checks(soak: Soak, outcome: Outcome, server_alive: bool) -> list[str]:
    """The verdict's reasons to fail (empty: PASS)."""
    reasons: list[str] = []
    kinds = soak.failure_kinds
    if kinds["5xx"]:
        reasons.append(f"{kinds['5xx']} 5xx answers (capacity 503s excluded)")
    if kinds["connection"]:
        reasons.append(f"{kinds['connection']} connection errors or timeouts")
    if outcome.verification.lost:
        reasons.append(f"{len(outcome.verification.lost)} of {len(soak.records)} uploads lost or wrong")
    for kind, what in FAILURE_KINDS.items():
        if kinds[kind]:
            reasons.append(f"{kinds[kind]} {what}")
    growth = outcome.end.rss / outcome.baseline.rss - 1 if outcome.baseline.rss else 0.0
    if outcome.baseline.rss == 0 or outcome.end.rss == 0:
        reasons.append("server RSS could not be read")
    elif growth > RSS_TOLERANCE:
        reasons.append(f"server RSS grew {100 * growth:.1f}% (limit {100 * RSS_TOLERANCE:.0f}%)")
    if outcome.end.fds < 0 or outcome.baseline.fds < 0:
        reasons.append("server fds could not be read")
    elif outcome.end.fds > outcome.baseline.fds + FD_SLACK:
        reasons.append(f"server fds grew {outcome.baseline.fds} -> {outcome.end.fds} (slack {FD_SLACK})")
    if outcome.leftover_processes:
        reasons.append(f"{len(outcome.leftover_processes)} ffmpeg/child processes left after the load")
    if outcome.leftover_files:
        reasons.append(f"{len(outcome.leftover_files)} files left in MEDIA_DIR/.tmp after the load")
    if not soak.records:
        reasons.append("no upload succeeded")
    if not server_alive:
        reasons.append("the server exited during the soak")
    return reasons


def _mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


def table(soak: Soak, outcome: Outcome, reasons: list[str]) -> str:
    """The human-readable summary."""
    lines = [f"{'action':<15} {'requests':>8}  {'statuses':<28} {'conn err':>8} {'p50 ms':>8} {'p99 ms':>8}"]
    for name, stats in soak.stats.items():
        ordered = sorted(stats.latencies)
        statuses = " ".join(f"{status}:{count}" for status, count in sorted(stats.statuses.items()))
        if stats.capacity_503:
            statuses += f" (503 capacity, retried: {stats.capacity_503})"
        lines.append(
            f"{name:<15} {stats.requests:>8}  {statuses:<28} {stats.connection_errors:>8}"
            f" {percentile(ordered, 0.5) * 1000:>8.1f} {percentile(ordered, 0.99) * 1000:>8.1f}"
        )
    verification = outcome.verification
    base, end, after = outcome.baseline, outcome.end, outcome.after_verify
    growth = 100 * (end.rss / base.rss - 1) if base.rss else 0.0
    lines += [
        "",
        f"load: {outcome.seconds:.1f} s, {WORKERS} workers (paused {outcome.paused:.1f} s for the baseline)",
        f"uploads kept: {len(soak.records)}; final pass: {verification.ok}/{verification.records} download,"
        f" decode and match the WAV (worst duration error {verification.worst_duration_error:.3f} s,"
        f" limit {DURATION_TOLERANCE_SECONDS} s) in {verification.seconds:.1f} s;"
        f" Range answers checked: {soak.range_checks}",
        f"server tree during the load (sampled every {SAMPLE_SECONDS:g} s): peak RSS"
        f" {_mib(outcome.peak_tree_rss)}, up to {outcome.peak_tree_processes} processes (server + ffmpeg)",
        f"{'moment':<28} {'server RSS':>12} {'tree RSS':>12} {'tree procs':>10} {'server fds':>10}",
    ]
    for label, taken in (
        (f"baseline (t={base.at_seconds:.0f} s)", base),
        (f"end of load (t={end.at_seconds:.0f} s)", end),
        ("after the final pass (info)", after),
    ):
        lines.append(
            f"{label:<28} {_mib(taken.rss):>12} {_mib(taken.tree_rss):>12}"
            f" {taken.tree_processes:>10} {taken.fds:>10}"
        )
    lines += [
        f"server RSS growth: {growth:+.1f}% (limit +{100 * RSS_TOLERANCE:.0f}%);"
        f" fds: {end.fds - base.fds:+d} (slack {FD_SLACK})",
        f"after the load: {len(outcome.leftover_processes)} child processes,"
        f" {len(outcome.leftover_files)} files in MEDIA_DIR/.tmp (checked for {outcome.clean_after:.2f} s)",
    ]
    lines += [f"  left: {item}" for item in (outcome.leftover_processes + outcome.leftover_files)[:10]]
    if soak.failures:
        lines.append(f"failed checks ({soak.failure_count}, first {len(soak.failures[:15])}):")
        lines += [f"  {message}" for message in soak.failures[:15]]
    lines.append("verdict: " + ("PASS" if not reasons else "FAIL: " + "; ".join(reasons)))
    return "\n".join(lines)


def json_line(soak: Soak, outcome: Outcome, reasons: list[str], args: argparse.Namespace) -> str:
    """One `SOAK {json}` line with every number."""
    payload = {
        "seconds": round(outcome.seconds, 1),
        "quick": args.quick,
        "seed": args.seed,
        "workers": WORKERS,
        "weights": WEIGHTS,
        "wav_seconds": list(WAV_SECONDS),
        "actions": {name: stats.as_json() for name, stats in soak.stats.items()},
        "users_made": len(soak.accounts),
        "records": len(soak.records),
        "verified": outcome.verification.ok,
        "lost": len(outcome.verification.lost),
        "worst_duration_error_s": round(outcome.verification.worst_duration_error, 4),
        "range_checks": soak.range_checks,
        "baseline": outcome.baseline.as_json(),
        "end": outcome.end.as_json(),
        "after_verify": outcome.after_verify.as_json(),
        "peak_tree_rss": outcome.peak_tree_rss,
        "peak_tree_processes": outcome.peak_tree_processes,
        "rss_growth_pct": round(100 * (outcome.end.rss / outcome.baseline.rss - 1), 2)
        if outcome.baseline.rss
        else None,
        "fd_growth": outcome.end.fds - outcome.baseline.fds,
        "leftover_processes": len(outcome.leftover_processes),
        "leftover_tmp_files": len(outcome.leftover_files),
        "failed_checks": soak.failure_count,
        "failure_kinds": dict(sorted(soak.failure_kinds.items())),
        "verdict": "PASS" if not reasons else "FAIL",
        "reasons": reasons,
    }
    return "SOAK " + json.dumps(payload, separators=(",", ":"))


def server_log_problems(processes: Processes) -> list[str]:
    """The server log's WARNING, ERROR and Traceback lines (at LOG_LEVEL=WARNING, the whole log)."""
    try:
        text = processes.log_path("server").read_text(errors="replace")
    except OSError:
        return []
    return [
        line for line in text.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line
    ]


def soak_run(args: argparse.Namespace, workdir: Path) -> int:
    """Start what the soak needs, run it, print the results; always stop what was started."""
    ffmpeg = find_ffmpeg(None)
    seconds = QUICK_SECONDS if args.quick else args.seconds
    baseline_at = QUICK_BASELINE_SECONDS if args.quick else FULL_BASELINE_SECONDS
    print(
        f"soak: {seconds:g} s, {WORKERS} workers, seed {args.seed}, weights {WEIGHTS},"
        f" baseline at {baseline_at:g} s;"
        f" stand-in {STANDIN_LATENCY_MS} ms latency, pool {STANDIN_POOL_SIZE:,}; ffmpeg: {ffmpeg}",
        flush=True,
    )
    processes = Processes(workdir)
    database: Database | None = None
    server_exit: int | None = None
    try:
        database = create_database(workdir)
        wavs = {s: make_wav(ffmpeg, s, workdir / f"soak-{s:g}s.wav") for s in WAV_SECONDS}
        standin_port = start_standin(processes)
        port = start_server(processes, database.url, standin_port)
        server = processes.running["server"]
        soak = Soak(
            port=port,
            server_pid=server.pid,
            media_dir=workdir / "media",
            workdir=workdir,
            wavs=wavs,
            deadline=0.0,
        )
        outcome = asyncio.run(run_soak(soak, seconds, baseline_at, args.seed, ffmpeg))
        server_alive = server.poll() is None
        server_exit = processes.stop("server")
    finally:
        processes.stop_all()
        if database is not None:
            drop_database(database)
    reasons = checks(soak, outcome, server_alive)
    if server_exit not in (0, None):
        reasons.append(f"the server exited with {server_exit} on SIGTERM")
    print(table(soak, outcome, reasons))
    problems = server_log_problems(processes)
    print(f"server log: {len(problems)} WARNING/ERROR/Traceback lines; exit code on SIGTERM: {server_exit}")
    for line in problems[:5]:
        print(f"  {line}")
    print(json_line(soak, outcome, reasons, args))
    return 0 if not reasons else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the soak in a temporary directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=FULL_SECONDS, help="load duration (default 120)")
    parser.add_argument(
        "--quick", action="store_true", help="20 s, baseline after 5 s (a smoke run; overrides --seconds)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="the workers' RNG seed")
    args = parser.parse_args(argv)
    if not args.quick and args.seconds <= FULL_BASELINE_SECONDS:
        parser.error(f"--seconds must be more than the {FULL_BASELINE_SECONDS:g} s baseline")
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        return soak_run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
