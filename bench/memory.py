"""Resource use of a process tree, read from /proc: CPU time, RSS and PSS (smaps_rollup)."""

from __future__ import annotations

import asyncio
import contextlib
import os
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

    def sample(self) -> Memory:
        """Take one sample now and fold it into the peaks."""
        now = tree_memory(self.root)
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
