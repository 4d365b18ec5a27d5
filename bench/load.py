"""HTTP load for a fixed time at a fixed concurrency: wrk when installed, else a small asyncio
load generator (keep-alive HTTP/1.1 over raw sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from bench.client import Connection
from bench.memory import harness_cpu_seconds

WRK_SLACK_SECONDS = 30  # wrk gets this long past its duration before it is killed
PYTHON_TOOL = "python loadgen"
MAX_REQUESTS = 2_000_000  # a cap on one python load run, besides its time
MAX_PROBES = 20_000  # a cap on the /health probes of one HealthProbe, besides its time
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass(frozen=True)
class Load:
    """What to send: one request, over `connections` keep-alive connections for `seconds`."""

    host: str
    port: int
    target: str  # path and query
    method: str = "GET"
    body: bytes = b""
    content_type: str | None = None
    connections: int = 32
    seconds: float = 10.0

    @property
    def url(self) -> str:
        """The full URL, as wrk takes it."""
        return f"http://{self.host}:{self.port}{self.target}"


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured."""

    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int  # socket errors and timeouts
    bytes_per_s: float
    client_cpu_pct: float = 0.0  # the load client's CPU, % of one core (shows when it is the limit)


async def run_load(load: Load, wrk: str | None) -> LoadResult:
    """Run the load with wrk when its path is given (in a worker thread), else with the built-in one;
    the client's own CPU use is measured too."""
    before = harness_cpu_seconds()
    if wrk is not None:
        result = await asyncio.to_thread(run_wrk, load, wrk)
    else:
        result = await run_python_load(load)
    client_pct = 100 * (harness_cpu_seconds() - before) / result.seconds if result.seconds else 0.0
    return replace(result, client_cpu_pct=client_pct)


def wrk_script(load: Load) -> str:
    """A wrk Lua script setting the method, body and Content-Type (every byte escaped)."""
    body = "".join(f"\\{byte}" for byte in load.body)
    lines = [f'wrk.method = "{load.method}"', f'wrk.body = "{body}"']
    if load.content_type:
        lines.append(f'wrk.headers["Content-Type"] = "{load.content_type}"')
    return "\n".join(lines) + "\n"


def run_wrk(load: Load, wrk: str) -> LoadResult:
    """One wrk run (1 thread: wrk's C loop is far from the limit here and leaves the cores to the
    servers), bounded by its own duration plus slack."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as directory:
        command = [wrk, "-t1", f"-c{load.connections}", f"-d{load.seconds:g}s", "--timeout", "10s"]
        command.append("--latency")
        if load.method != "GET" or load.body or load.content_type:
            script = Path(directory) / "request.lua"
            script.write_text(wrk_script(load))
            command += ["-s", str(script)]
        result = subprocess.run(
            [*command, load.url],
            capture_output=True,
            text=True,
            timeout=load.seconds + WRK_SLACK_SECONDS,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout}")
    return parse_wrk(result.stdout)


def _number(pattern: str, text: str, default: float | None = None) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        if default is None:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{text}")
        return default
    return float(match.group(1))


def _duration(pattern: str, text: str) -> float:
    match = re.search(pattern + r"\s*([\d.]+)(us|ms|s|m|h)\b", text, re.MULTILINE)
    if match is None:
        raise ValueError(f"wrk output has no match for {pattern!r}:\n{text}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_wrk(text: str) -> LoadResult:
    """The numbers of `wrk --latency` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)(B|KB|MB|GB|TB) read", text)
    if done is None:
        raise ValueError(f"wrk output has no request count:\n{text}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    transfer = re.search(r"Transfer/sec:\s*([\d.]+)(B|KB|MB|GB|TB)", text)
    return LoadResult(
        tool="wrk",
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * UNITS[done.group(3)],
        rps=_number(r"^Requests/sec:\s*([\d.]+)", text),
        p50_ms=_duration(r"^\s*50%", text) * 1000,
        p99_ms=_duration(r"^\s*99%", text) * 1000,
        non2xx=int(_number(r"Non-2xx or 3xx responses:\s*(\d+)", text, 0)),
        errors=sum(int(value) for value in errors.groups()) if errors else 0,
        bytes_per_s=float(transfer.group(1)) * SIZES[transfer.group(2)] if transfer else 0.0,
    )


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list (0 when it is empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


async def run_python_load(load: Load) -> LoadResult:
    """The built-in generator: `connections` workers, each sending requests back to back until the
    deadline or MAX_REQUESTS (a request in flight at the deadline is waited for, at most 30 s more)."""
    headers = {"Content-Type": load.content_type} if load.content_type else {}
    latencies: list[float] = []
    counts = {"non2xx": 0, "errors": 0, "bytes": 0}
    start = time.perf_counter()
    deadline = start + load.seconds

    async def worker() -> None:
        connection = Connection(load.host, load.port)
        try:
            while time.perf_counter() < deadline and len(latencies) + counts["errors"] < MAX_REQUESTS:
                sent = time.perf_counter()
                try:
                    response = await connection.request(
                        load.method, load.target, load.body, headers, keep_body=False
                    )
                except (OSError, asyncio.IncompleteReadError):
                    counts["errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - sent)
                counts["bytes"] += response.size
                if not 200 <= response.status < 300:
                    counts["non2xx"] += 1
        finally:
            await connection.close()

    workers = [asyncio.create_task(worker()) for _ in range(load.connections)]
    _, pending = await asyncio.wait(workers, timeout=load.seconds + WRK_SLACK_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return LoadResult(
        tool=PYTHON_TOOL,
        requests=len(latencies),
        seconds=elapsed,
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        non2xx=counts["non2xx"],
        errors=counts["errors"] + len(pending),
        bytes_per_s=counts["bytes"] / elapsed,
    )


class HealthProbe:
    """GET /health every `interval` seconds on one keep-alive connection while running; keeps the
    longest answer time (a blocked event loop shows here)."""

    def __init__(self, host: str, port: int, interval: float = 0.1) -> None:
        self.connection = Connection(host, port)
        self.interval = interval
        self.longest = 0.0
        self.probes = 0
        self.failures = 0
        self._stop = asyncio.Event()

    async def _loop(self) -> None:
        while not self._stop.is_set() and self.probes < MAX_PROBES:
            sent = time.perf_counter()
            try:
                response = await self.connection.request("GET", "/health")
                self.failures += response.status != 200
            except OSError:
                self.failures += 1
            self.longest = max(self.longest, time.perf_counter() - sent)
            self.probes += 1
            next_probe = sent + self.interval - time.perf_counter()
            if next_probe > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), next_probe)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HealthProbe]:
        """Probe during the `async with` block; the probe in flight at its end is waited for."""
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            self._stop.set()
            try:
                await asyncio.wait_for(task, WRK_SLACK_SECONDS)
            finally:
                await self.connection.close()
