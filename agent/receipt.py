"""Receipt times: one clock, shared by every live source, that never returns the same time twice.

A reading without a device timestamp is stamped when it is received. Readings often arrive together: the lines
of one serial read, MQTT payloads in one TCP segment, the polls of several Modbus devices in one pass. With
``time.time()`` they shared one time, and the cleaner, which refuses a timestamp that is not after the sensor's
previous one (``duplicate_ts``: meant for devices whose own clock repeats), dropped all but the first — 1,109 of
1,146 lines of a recording sent in bursts of 50.

Why a clock rather than a flag on the Reading telling the cleaner "this is a receipt time": everything after the
source relies on data time increasing per sensor (the cleaner's order check, windows and their gaps, evidence,
alignment, summary periods), so fixing the times at the one place they are made keeps every stage right without
a special case in each. Each time is ``max(time.time(), previous + 1 µs)``: a burst of N readings is spread over
N µs (the real spacing inside one read is unknowable anyway), and receipt times do not go backwards when NTP
steps the wall clock back a little (they then advance 1 µs per reading until the wall clock passes them, instead of
every reading being refused as ``out_of_order`` until then). A step back of more than ``step_back_s`` (the
cleaner's ``MAX_TIME_JUMP_S``, set by the agent at start; 0 = never) is followed instead: frozen for that long, the
stamps would hold every summary, stale check and rate limit still (a clock set back two hours: two hours without a
summary). The cleaner takes such a step as it takes a device clock's (5 readings that agree: the sensor's new time
base, ``gaps.time_step``). Thread-safe: paho's thread, the serial thread and Modbus bus threads share it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

STEP_S = 1e-6  # representable at epoch magnitudes (float64 resolution near 1.7e9 s is 0.24 µs)


class ReceiptClock:
    """Strictly increasing wall-clock times for readings stamped on receipt."""

    def __init__(self, wall: Callable[[], float] = time.time, step_back_s: float = 0.0) -> None:
        self._wall = wall
        self.step_back_s = step_back_s  # a step back of more than this is followed (0: never)
        self._last = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The time of receipt: now, or 1 µs after the previous receipt time when that is not earlier (unless the
        wall clock stepped back more than ``step_back_s``)."""
        with self._lock:
            now = self._wall()
            if now <= self._last:
                if 0 < self.step_back_s < self._last - now:
                    log.warning("the wall clock stepped back %.0f s: readings stamped on receipt follow it", self._last - now)
                else:
                    now = self._last + STEP_S
            self._last = now
            return now


receipt_time = ReceiptClock()  # the one shared by the sources of this process


def follow_steps_beyond(jumps: list[float]) -> None:
    """Set the shared clock's ``step_back_s`` from the cleaners' ``max_time_jump_s`` (every asset's): the largest,
    so that every cleaner takes a followed step as a clock step (a smaller one would be refused as out of order
    until the wall clock caught up); never when one of them has the check off (0)."""
    receipt_time.step_back_s = 0.0 if not jumps or min(jumps) <= 0 else max(jumps)
