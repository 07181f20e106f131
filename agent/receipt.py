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
N µs (the real spacing inside one read is unknowable anyway), and receipt times never go backwards, also when NTP
steps the wall clock back (they then advance 1 µs per reading until the wall clock passes them, instead of every
reading being refused as ``out_of_order`` until then). Thread-safe: paho's thread, the serial thread and Modbus
bus threads share it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

STEP_S = 1e-6  # representable at epoch magnitudes (float64 resolution near 1.7e9 s is 0.24 µs)


class ReceiptClock:
    """Strictly increasing wall-clock times for readings stamped on receipt."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._last = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The time of receipt: now, or 1 µs after the previous receipt time when that is not earlier."""
        with self._lock:
            now = self._wall()
            if now <= self._last:
                now = self._last + STEP_S
            self._last = now
            return now


receipt_time = ReceiptClock()  # the one shared by the sources of this process
