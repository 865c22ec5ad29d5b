"""Resident memory and CPU time of processes, from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Peaks:
    """Peak RSS of a changing set of processes over a `with` block.

    `pids` is called again and again: a worker may be replaced while we watch. The peak is
    the kernel's own mark (VmHWM, reset on entry through clear_refs, root only) for the
    processes that lived throughout, and RSS sampled every 5 ms for all of them.
    `growth` is peak minus the RSS a process had when the block began.
    """

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.005) -> None:
        self._pids = pids
        self._interval = interval
        self.before: dict[int, float] = {}
        self.after: dict[int, float] = {}
        self._reset: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def method(self) -> str:
        return "VmHWM reset by clear_refs, and RSS sampled every 5 ms" if self._reset else "RSS sampled every 5 ms"

    def _sample(self) -> None:
        pids: list[int] = []
        listed = 0.0
        while not self._stop.is_set():
            # Listing processes walks /proc: a few times a second, not every sample.
            if time.monotonic() - listed > 0.25:
                pids, listed = self._pids(), time.monotonic()
            for pid in pids:
                with contextlib.suppress(OSError):  # gone
                    self.after[pid] = max(self.after.get(pid, 0.0), rss_mb(pid))
            self._stop.wait(self._interval)

    def __enter__(self) -> Peaks:
        for pid in self._pids():
            if reset_peak(pid):
                self._reset.add(pid)
            with contextlib.suppress(OSError):
                self.before[pid] = rss_mb(pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid in self._reset:
            with contextlib.suppress(OSError):
                self.after[pid] = max(self.after.get(pid, 0.0), peak_mb(pid))

    @property
    def peak(self) -> float:
        return max(self.after.values())

    @property
    def growth(self) -> float:
        return max(peak - self.before.get(pid, 0.0) for pid, peak in self.after.items())


# --- CPU time ------------------------------------------------------------------------------


def cpu_seconds(task: int | str) -> float:
    """User + system CPU time of a process (`pid`: all its threads, not its children) or of
    one thread (`"pid/task/tid"`)."""
    try:
        fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def threads(pid: int) -> list[str]:
    """The threads of a process, as cpu_seconds takes them."""
    try:
        return [f"{pid}/task/{tid.name}" for tid in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


class CpuMeter:
    """CPU seconds per group of processes over a `with` block, and what the rest of the
    machine (other people's jobs) used meanwhile. Groups are callables listing pids, read
    at the start and the end (a process that ends in between loses its share)."""

    def __init__(self, groups: dict[str, Callable[[], list[int | str]]]) -> None:
        self.groups = groups
        self.seconds: dict[str, float] = {}
        self.wall = 0.0

    def _snapshot(self) -> dict[str, dict[int | str, float]]:
        return {name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()}

    def __enter__(self) -> CpuMeter:
        self._start = self._snapshot()
        self._busy = machine_busy_seconds()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        self.wall = time.perf_counter() - self._wall
        busy = machine_busy_seconds() - self._busy
        for name, pids in end.items():
            self.seconds[name] = sum(max(0.0, t - self._start[name].get(pid, 0.0)) for pid, t in pids.items())
        self.seconds["other processes on the machine"] = max(0.0, busy - sum(self.seconds.values()))
