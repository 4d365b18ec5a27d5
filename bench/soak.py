"""Soak test: `python -m bench.soak` (120 s of mixed load), `--seconds N`, or `--quick` (20 s).

Starts the service as `python -m bench` does; 8 workers then loop over a seeded weighted choice of
POST /users, POST /questions, WAV uploads (user and token first) and MP3 downloads, through the same
Tornado client. It fails (exit 1) on any 5xx or other unexpected status, any connection error or
timeout, an upload that does not download back as an MP3 of its WAV's length, server RSS growth over
15% or fd growth over 5 from the baseline (taken when the first 20 s of load, 5 s with --quick, have
settled) to the end, or ffmpeg children or MEDIA_DIR/.tmp files left after the load. Prints a table
and one `SOAK {json}` line."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
from tornado.httpclient import HTTPClientError, HTTPResponse

from bench.service import Service, die_with_parent, make_wav, run_in_workdir, running_service, tree
from bench.traffic import Upload, User, download, post_json, upload

WORKERS = 8
SEED = 20261129
WAV_SECONDS = (1.0, 4.0, 12.0, 30.0)
WEIGHTS = {"users": 2, "questions": 3, "upload": 2, "download": 4}
EXPECTED_STATUS = {"users": 201, "questions": 200, "upload": 201, "download": 200, "final download": 200}
RSS_TOLERANCE = 0.15
FD_SLACK = 5
DURATION_TOLERANCE_SECONDS = 0.1
SETTLE_DEADLINE_SECONDS = 5.0  # for the server's children and temporary files to go after the load
VERIFY_PARALLEL = 2
TIME_RE = re.compile(rb"time=\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
Sent = TypeVar("Sent", HTTPResponse, Upload)


@dataclass
class Soak:
    """What the workers share and what they saw."""

    service: Service
    wavs: dict[float, Path]
    statuses: dict[str, Counter[str]] = field(
        default_factory=lambda: {name: Counter() for name in EXPECTED_STATUS}
    )
    latencies: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in EXPECTED_STATUS})
    users: list[User] = field(default_factory=list)
    records: list[tuple[str, float]] = field(default_factory=list)  # download URL, WAV seconds
    failures: list[str] = field(default_factory=list)

    async def send(self, action: str, request: Awaitable[Sent]) -> Sent | None:
        """Await one request and count its status and time; None (a failure) unless it is the expected one."""
        started = time.perf_counter()
        try:
            sent = await request
        except (OSError, HTTPClientError) as error:  # refused, reset, timed out
            self.statuses[action]["error"] += 1
            self.failures.append(f"{action}: {type(error).__name__}: {error}")
            return None
        self.latencies[action].append(time.perf_counter() - started)
        response = sent.response if isinstance(sent, Upload) else sent
        self.statuses[action][str(response.code)] += 1
        if response.code != EXPECTED_STATUS[action]:
            self.failures.append(f"{action}: {response.code} {(response.body or b'')[:200]!r}")
            return None
        return sent


async def make_user(soak: Soak, rng: random.Random) -> None:
    """POST /users; the user is kept for uploads."""
    response = await soak.send(
        "users", post_json(f"{soak.service.url}/users", {"name": f"soak-{rng.randrange(999)}"})
    )
    if response is not None:
        body = json.loads(response.body)
        soak.users.append(User(body["id"], body["token"]))


async def ask_questions(soak: Soak, rng: random.Random) -> None:
    """POST /questions {"questions_num": 1..5}."""
    await soak.send(
        "questions", post_json(f"{soak.service.url}/questions", {"questions_num": rng.randint(1, 5)})
    )


async def upload_wav(soak: Soak, rng: random.Random) -> None:
    """POST /records with one of the WAVs, as one of the users made so far."""
    if not soak.users:
        return await make_user(soak, rng)
    seconds = rng.choice(WAV_SECONDS)
    sent = await soak.send("upload", upload(soak.service.url, rng.choice(soak.users), soak.wavs[seconds]))
    if sent is not None:
        soak.records.append((json.loads(sent.response.body)["url"], seconds))


async def download_mp3(soak: Soak, rng: random.Random) -> None:
    """GET one of the records made so far, whole."""
    if not soak.records:
        return await ask_questions(soak, rng)
    url, _ = rng.choice(soak.records)
    response = await soak.send("download", download(url))
    if response is not None and response.headers.get("Content-Type") != "audio/mpeg":
        soak.failures.append(f"download {url}: Content-Type {response.headers.get('Content-Type')}")


ACTIONS: dict[str, Callable[[Soak, random.Random], Awaitable[None]]] = {
    "users": make_user,
    "questions": ask_questions,
    "upload": upload_wav,
    "download": download_mp3,
}


async def load(soak: Soak, seconds: float, seed: int) -> None:
    """WORKERS workers, each looping over a seeded weighted choice of actions until the deadline."""
    deadline = time.monotonic() + seconds

    async def worker(rng: random.Random) -> None:
        while time.monotonic() < deadline:
            await ACTIONS[rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]](soak, rng)

    await asyncio.gather(*(worker(random.Random(seed * 1000 + index)) for index in range(WORKERS)))


async def settle(soak: Soak) -> tuple[list[str], list[str]]:
    """Wait a few seconds at most for the server to have no children and MEDIA_DIR/.tmp no files;
    what is left."""
    deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
    while True:
        children = [" ".join(child.cmdline())[:160] for child in tree(soak.service.pid)[1:]]
        temp_dir = soak.service.media_dir / ".tmp"
        files = sorted(path.name for path in temp_dir.iterdir()) if temp_dir.exists() else []
        if not (children or files) or time.monotonic() > deadline:
            return children, files
        await asyncio.sleep(0.05)


def snapshot(pid: int) -> dict[str, int]:
    """The server's RSS (bytes) and open file descriptors now."""
    process = psutil.Process(pid)
    return {"rss": process.memory_info().rss, "fds": process.num_fds()}


async def mp3_seconds(ffmpeg: str, mp3: Path) -> float | None:
    """The duration ffmpeg decodes from an MP3 (the last `time=` of `-f null -`); None if it cannot."""
    process = await asyncio.create_subprocess_exec(
        ffmpeg, "-nostdin", "-hide_banner", "-i", str(mp3), "-f", "null", "-",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
    )  # fmt: skip
    _, stderr = await process.communicate()
    times = TIME_RE.findall(stderr)
    if process.returncode != 0 or not times:
        return None
    hours, minutes, seconds = times[-1]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


async def verify(soak: Soak) -> int:
    """Download and decode every record once more: each must be an MP3 as long as its WAV. The
    number that are."""
    queue = list(soak.records)
    good = 0

    async def check(url: str, seconds: float, path: Path) -> None:
        nonlocal good
        with path.open("wb") as sink:
            if await soak.send("final download", download(url, sink)) is None:
                return
        decoded = await mp3_seconds(soak.service.ffmpeg, path)
        if decoded is None or abs(decoded - seconds) > DURATION_TOLERANCE_SECONDS:
            soak.failures.append(f"final download {url}: an MP3 of {decoded} s for a {seconds:g} s WAV")
        else:
            good += 1

    async def one_by_one(path: Path) -> None:
        while queue:
            url, seconds = queue.pop()
            await check(url, seconds, path)

    workdir = soak.service.processes.workdir
    await asyncio.gather(*(one_by_one(workdir / f"verify-{index}.mp3") for index in range(VERIFY_PARALLEL)))
    return good


def percentile_ms(values: list[float], fraction: float) -> float:
    """A percentile of the latencies, in ms (0 without any)."""
    if len(values) < 2:
        return 1000 * (values[0] if values else 0.0)
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


async def soak_test(service: Service, seconds: float, warm_up: float, seed: int) -> dict[str, Any]:
    """The warm-up load, the baseline, the rest of the load, the checks; the outcome as JSON."""
    workdir = service.processes.workdir
    soak = Soak(service, {s: make_wav(s, workdir / f"soak-{s:g}s.wav") for s in WAV_SECONDS})
    await load(soak, warm_up, seed)
    await settle(soak)
    baseline = snapshot(service.pid)
    await load(soak, seconds - warm_up, seed + 1)
    children, files = await settle(soak)
    end = snapshot(service.pid)
    load_failures = len(soak.failures)
    verified = await verify(soak)
    growth = end["rss"] / baseline["rss"] - 1
    reasons = [f"{len(soak.failures)} failed requests or checks"] if soak.failures else []
    if growth > RSS_TOLERANCE:
        reasons.append(f"server RSS grew {100 * growth:.1f}% (limit {100 * RSS_TOLERANCE:.0f}%)")
    if end["fds"] > baseline["fds"] + FD_SLACK:
        reasons.append(f"server fds grew {baseline['fds']} -> {end['fds']} (slack {FD_SLACK})")
    if children or files:
        reasons.append(
            f"left after the load: {len(children)} child processes, {len(files)} MEDIA_DIR/.tmp files"
        )
    if not soak.records:
        reasons.append("no upload succeeded")
    return {
        "seconds": seconds,
        "seed": seed,
        "workers": WORKERS,
        "weights": WEIGHTS,
        "actions": {
            name: {
                "requests": sum(soak.statuses[name].values()),
                "statuses": dict(sorted(soak.statuses[name].items())),
                "p50_ms": round(percentile_ms(soak.latencies[name], 0.50), 1),
                "p99_ms": round(percentile_ms(soak.latencies[name], 0.99), 1),
            }
            for name in EXPECTED_STATUS
        },
        "records": len(soak.records),
        "verified": verified,
        "baseline": baseline,
        "end": end,
        "rss_growth_pct": round(100 * growth, 2),
        "fd_growth": end["fds"] - baseline["fds"],
        "left_children": children,
        "left_tmp_files": files,
        "failures_during_load": load_failures,
        "failures": soak.failures[:20],
        "verdict": "FAIL" if reasons else "PASS",
        "reasons": reasons,
    }


def report(outcome: dict[str, Any]) -> str:
    """The human-readable summary."""
    lines = [f"{'action':<14} {'requests':>8}  {'statuses':<24} {'p50 ms':>8} {'p99 ms':>8}"]
    for name, seen in outcome["actions"].items():
        statuses = " ".join(f"{status}:{count}" for status, count in seen["statuses"].items())
        lines.append(
            f"{name:<14} {seen['requests']:>8}  {statuses:<24} {seen['p50_ms']:>8} {seen['p99_ms']:>8}"
        )
    base, end = outcome["baseline"], outcome["end"]
    lines += [
        f"uploads: {outcome['records']}, of which {outcome['verified']} download back as an MP3 of their"
        f" WAV's length (within {DURATION_TOLERANCE_SECONDS} s)",
        f"server RSS {base['rss'] / 2**20:.1f} -> {end['rss'] / 2**20:.1f} MiB"
        f" ({outcome['rss_growth_pct']:+.1f}%, limit +{100 * RSS_TOLERANCE:.0f}%);"
        f" fds {base['fds']} -> {end['fds']} (slack {FD_SLACK})",
        f"left after the load: {len(outcome['left_children'])} child processes,"
        f" {len(outcome['left_tmp_files'])} files in MEDIA_DIR/.tmp",
        *(f"  {failure}" for failure in outcome["failures"][:10]),
        "verdict: " + ("PASS" if not outcome["reasons"] else "FAIL: " + "; ".join(outcome["reasons"])),
    ]
    return "\n".join(lines)


def run(seconds: float, warm_up: float, seed: int, workdir: Path) -> int:
    """Start the service, soak it, print the outcome; 1 when a check failed."""
    print(
        f"soak: {seconds:g} s, {WORKERS} workers, seed {seed}, weights {WEIGHTS},"
        f" baseline after {warm_up:g} s"
    )
    with running_service(workdir) as service:
        outcome = asyncio.run(soak_test(service, seconds, warm_up, seed))
        server_exit = service.stop()
    if server_exit != 0:
        outcome["reasons"].append(f"the server exited with {server_exit} on SIGTERM")
        outcome["verdict"] = "FAIL"
    print(report(outcome))
    log = service.processes.log("server").splitlines()
    problems = [line for line in log if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    print(f"server log: {len(problems)} WARNING/ERROR/Traceback lines; exit code on SIGTERM: {server_exit}")
    for line in problems[:5]:
        print(f"  {line}")
    print("SOAK " + json.dumps(outcome, separators=(",", ":")))
    return 1 if outcome["reasons"] else 0


def main() -> int:
    """Parse the command line and run the soak in a temporary directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="load duration (default 120)")
    parser.add_argument("--quick", action="store_true", help="20 s, baseline after 5 s (overrides --seconds)")
    parser.add_argument("--seed", type=int, default=SEED, help="the workers' RNG seed")
    args = parser.parse_args()
    seconds, warm_up = (20.0, 5.0) if args.quick else (args.seconds, 20.0)
    if seconds <= warm_up:
        parser.error(f"--seconds must be more than the {warm_up:g} s warm-up")
    return run_in_workdir("soak-", lambda workdir: run(seconds, warm_up, args.seed, workdir))


if __name__ == "__main__":
    sys.exit(main())
