"""Health: per-stage heartbeats, the systemd watchdog, degraded reasons, the stats payload.

The ``health`` thread pings the systemd watchdog (``WATCHDOG=1``) only while every watched stage has beaten
within ``stall_s``: a hung inference or a wedged uplink stops the pings and systemd restarts the service
(``WatchdogSec=`` in the unit). It also publishes ``stats`` every ``stats_interval_s`` and re-publishes the
retained status when the state or its reasons change, and hands the C heap's free pages back every second
(agent/heap.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import resource
import threading
import time
from typing import Any, Callable

from agent import heap, sdnotify

log = logging.getLogger(__name__)

TRIM_EVERY_S = 1.0  # the health thread hands the C heap's free pages back this often (agent/heap.py: ~3 us)


class Heartbeats:
    """Last time each stage showed progress (monotonic seconds). Any thread may beat."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def beat(self, stage: str) -> None:
        self._last[stage] = time.monotonic()

    def stalled(self, stall_s: float) -> dict[str, float]:
        """Stages silent for longer than ``stall_s``, with how long."""
        now = time.monotonic()
        return {s: now - t for s, t in list(self._last.items()) if now - t > stall_s}

    def forget(self, stage: str) -> None:
        self._last.pop(stage, None)


class LatencyRing:
    """The last ``size`` inference latencies, written by the pipeline thread, read by the health thread."""

    def __init__(self, size: int = 1024):
        self._buf = [0.0] * size  # a list: one item set per window is cheaper than into an array
        self._size = size
        self._n = 0
        self._cached: tuple[int, dict[str, float] | None] = (0, None)  # (_n, percentiles) of the last ask

    def add(self, seconds: float) -> None:
        n = self._n
        self._buf[n % self._size] = seconds
        self._n = n + 1

    def kept(self) -> list[float]:
        """The latencies kept (seconds, unordered), a copy."""
        return self._buf[:min(self._n, self._size)]

    def percentiles_ms(self) -> dict[str, float] | None:
        """p50 and p99 of the latencies kept, in ms; computed again only after a new latency came in."""
        total = self._n
        cached_at, cached = self._cached
        if total == cached_at:
            return None if cached is None else dict(cached)
        out = percentiles_ms(sorted(self.kept()))
        self._cached = (total, out)
        return dict(out)


def percentiles_ms(ordered: list[float]) -> dict[str, float]:
    """p50 and p99 in ms of latencies in seconds, sorted ascending, not empty, rounded to 0.1 µs. A sort (one C call)
    and two picks: ``np.quantile`` gives the same numbers at 2-5x the cost (~0.5 ms on a cold cache, every stats)."""
    return {"p50": round(quantile_ms(ordered, 0.5), 4), "p99": round(quantile_ms(ordered, 0.99), 4)}


def quantile_ms(ordered: list[float], q: float) -> float:
    """``np.quantile(np.array(ordered) * 1000, q)`` (its default, linear method: the same float operations in the
    same order, so the same bits) of latencies in seconds (perf_counter differences: not NaN, not negative), sorted
    ascending, not empty."""
    n = len(ordered)
    v = (n - 1) * q  # numpy's virtual index for the linear method
    if v >= n - 1:
        b = ordered[-1] * 1000
        return b - (b - b) * 0.0  # numpy's _lerp of b and b: b itself, NaN for an infinite b (as numpy gives)
    if v < 0:
        return ordered[0] * 1000
    lo = math.floor(v)
    g = v - lo
    a, b = ordered[lo] * 1000, ordered[lo + 1] * 1000
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g  # numpy's _lerp


_TIME_ERROR = 5  # adjtimex(2): clock not synchronised
_libc: ctypes.CDLL | None = None


TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"  # touched by systemd-timesyncd once it has synchronised


def clock_synchronised() -> bool | None:
    """What the kernel says (adjtimex, as timedatectl's NTPSynchronized); None when it cannot be asked.

    Under the unit's ProtectClock=yes adjtimex is refused; then systemd-timesyncd's flag file answers.
    """
    if os.path.exists(TIMESYNC_FLAG):
        return True
    global _libc
    try:
        if _libc is None:  # find_library runs ldconfig: once per process, not on every health tick
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0 only reads
        state = _libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def process_usage() -> dict[str, float]:
    """Resident memory and CPU time of this process."""
    rss = 0
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"rss_bytes": rss, "cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "threads": threading.active_count()}


class HealthMonitor:
    """The ``health`` thread: watchdog pings, stats, status changes."""

    def __init__(
        self, heartbeats: Heartbeats, stall_s: float, stats_interval_s: float,
        stats: Callable[[], dict[str, Any]], publish_stats: Callable[[dict[str, Any]], object],
        status_key: Callable[[], Any], publish_status: Callable[[], None], stop: threading.Event,
        published_key: Callable[[], Any],
    ):
        self.heartbeats = heartbeats
        self.stall_s = stall_s
        self.stats_interval_s = stats_interval_s
        self._stats = stats
        self._publish_stats = publish_stats
        self._status_key = status_key
        self._publish_status = publish_status
        self._published_key = published_key
        self._stop = stop
        self.watchdog_s = sdnotify.watchdog_interval_s()
        self.pings = 0
        self._stall_logged: set[str] = set()

    def run(self) -> None:
        ping_every = self.watchdog_s / 2 if self.watchdog_s else None
        next_ping = next_stats = time.monotonic()
        next_stats += self.stats_interval_s
        next_trim = next_ping  # the first trim at the first tick: what building the stages freed
        while not self._stop.wait(0.5):
            now = time.monotonic()
            stalled = self.heartbeats.stalled(self.stall_s)
            for stage, age in stalled.items():
                if stage not in self._stall_logged:
                    self._stall_logged.add(stage)
                    log.error("stage %s made no progress for %.0f s: watchdog pings stopped", stage, age)
            self._stall_logged &= set(stalled)
            if ping_every and now >= next_ping and not stalled:
                if sdnotify.watchdog():
                    self.pings += 1
                next_ping = now + ping_every
            # against what was last published, not what this thread saw last: a source that connected between
            # the birth message and this thread's start would otherwise stay "connecting" in the retained status
            if self._status_key() != self._published_key():
                self._publish_status()  # a no-op while the uplink is down; its reconnect publishes the status
            if now >= next_trim:
                next_trim = now + TRIM_EVERY_S
                heap.trim()  # the C heap's free pages back to the system (agent/heap.py)
            if now >= next_stats:
                next_stats = now + self.stats_interval_s
                self._publish_stats(self._stats())
