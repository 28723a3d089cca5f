"""Simulated time for the fleet and its devices, and the process's memory (for per-device figures).

``FleetClock`` is the fleet's notion of now: the newest dispatched event in
``sim`` mode (time jumps from event to event, faster than real time), or wall
time scaled by ``speed`` in ``wall`` mode. ``DeviceClock`` is what a device's
runtime and cloud client read: the time of the event the device is handling.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB (Linux /proc)."""
    cur = peak = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


class FleetClock:
    """The fleet's simulated time: the newest dispatched event (sim) or scaled wall time (wall)."""

    def __init__(self, mode: str = "sim", speed: float = 1.0) -> None:
        self.mode = mode
        self.speed = speed
        self.now = 0.0
        self._wall0 = time.monotonic()

    def start(self, t: float) -> None:
        self.now = t
        self._wall0 = time.monotonic() - t / self.speed

    def __call__(self) -> float:
        if self.mode == "wall":
            return (time.monotonic() - self._wall0) * self.speed
        return self.now

    def wall_delay(self, t: float) -> float:
        """Wall seconds until simulated time ``t`` (wall mode)."""
        return max(0.0, t / self.speed - (time.monotonic() - self._wall0))


class DeviceClock:
    """One device's clock: the simulated time of the event it is handling."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def single_threaded_blas() -> None:
    """Keep BLAS to one thread in this process.

    The fleet's numpy work is tiny matrix-vector products (simulated users);
    a BLAS thread pool only fights the gRPC, SQLite and ONNX threads for the
    cores (measured: SVD of the item space 5x slower with two BLAS threads on
    a busy 2-core machine). Uses threadpoolctl when it is installed.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) another process has used so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
