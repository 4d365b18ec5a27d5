"""Resource use of a process tree, read from /proc: CPU time, RSS and PSS (smaps_rollup)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat counted from the one after the command name: 0 is field 3 (state).
PPID, UTIME, STIME, CUTIME, CSTIME = 1, 11, 12, 13, 14


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None when the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants (ffmpeg children included)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[PPID]), []).append(int(entry.name))
    found: list[int] = []
    queue = [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of the tree, including children it already reaped (cutime, cstime)."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(fields[index]) for index in (UTIME, STIME, CUTIME, CSTIME))
    return ticks / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU seconds of the harness's children that have been reaped (wrk, raw ffmpeg)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def harness_cpu_seconds() -> float:
    """CPU seconds of the harness itself and its reaped children: what a load client costs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + children_cpu_seconds()


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(value) for value in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have been busy since boot (anyone's work)."""
    return _machine_jiffies()[0] / CLOCK_TICKS


def machine_busy_percent(seconds: float = 1.0) -> float:
    """How busy all CPUs were over the next `seconds`, e.g. from other work."""
    busy_before, total_before = _machine_jiffies()
    time.sleep(seconds)
    busy_after, total_after = _machine_jiffies()
    return 100 * (busy_after - busy_before) / max(1, total_after - total_before)


@dataclass(frozen=True)
class Memory:
    """Resident and proportional set sizes, in bytes."""

    rss: int
    pss: int


def process_memory(pid: int) -> Memory:
    """RSS and PSS of one process from /proc/<pid>/smaps_rollup (zero when it is gone)."""
    rss = pss = 0
    try:
        lines = (PROC / str(pid) / "smaps_rollup").read_text().splitlines()
    except OSError:
        return Memory(0, 0)
    for line in lines:
        name, _, rest = line.partition(":")
        if name == "Rss":
            rss = int(rest.split()[0]) * 1024
        elif name == "Pss":
            pss = int(rest.split()[0]) * 1024
    return Memory(rss, pss)


def tree_memory(root: int) -> Memory:
    """RSS and PSS summed over the tree."""
    parts = [process_memory(pid) for pid in tree_pids(root)]
    return Memory(sum(part.rss for part in parts), sum(part.pss for part in parts))


class PeakSampler:
    """Samples the tree's memory every `interval` seconds while running; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak = Memory(0, 0)
        self.samples = 0
        self.max_processes = 0

    def sample(self) -> Memory:
        """Take one sample now and fold it into the peaks."""
        pids = tree_pids(self.root)
        parts = [process_memory(pid) for pid in pids]
        now = Memory(sum(part.rss for part in parts), sum(part.pss for part in parts))
        self.max_processes = max(self.max_processes, len(pids))
        self.peak = Memory(max(self.peak.rss, now.rss), max(self.peak.pss, now.pss))
        self.samples += 1
        return now

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PeakSampler]:
        """Sample in the background for the duration of the `async with` block."""
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample()
