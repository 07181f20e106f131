"""Cleaning many rows of one sensor at once: the common case in numpy, everything else left to ``Cleaner.clean``.

The common case is a run of rows in which every model channel is a finite number inside its valid range, the
timestamps increase with no time gap and no time jump, and the sensor is settled (its reporting interval learnt,
no channel stale, not silent, no spike filter). Such rows change nothing but the sensor's time base and its last
good values, and count nothing: ``accept`` does exactly that for the whole run. A row outside it (a NaN, a
missing or non-numeric channel, a duplicate timestamp, a gap, a first reading) goes to ``Cleaner.clean`` alone, in
its turn, so counters, holds, resets and stale marks are the per-reading code's own (bit-for-bit the same output:
``tests/unit/test_evaluate_pin.py`` and ``tests/unit/test_pipeline_block.py``).
"""

from __future__ import annotations

import math
from operator import itemgetter, le
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from agent.records import Reading, Vector

if TYPE_CHECKING:
    from agent.clean import Cleaner


_FLOAT = {float}


def getter(channels: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of ``channels`` from a reading's mapping, as a tuple (KeyError when one is missing)."""
    if len(channels) == 1:
        c = channels[0]
        return lambda d: (d[c],)
    return itemgetter(*channels)


def clean_common(cleaner: "Cleaner", r: Reading, now: float) -> Vector | None:
    """One reading in the common case, accepted as ``Cleaner.clean`` would accept it; None when it is not the
    common case (the caller then runs the full per-reading code, which counts and repairs)."""
    if cleaner.spike_window:
        return None
    st = cleaner._sensors.get(r.sensor)  # noqa: SLF001
    if st is None or st.interval is None or st.silent or st.stale:
        return None
    tb = st.time
    last, ts = tb.last_ts, r.ts
    if last is None or type(ts) is not float or not ts > last:
        return None
    jump = cleaner.max_time_jump_s
    if jump and ts - last - max(0.0, now - tb._at) > jump:  # noqa: SLF001
        return None
    hold = cleaner.max_hold_s > 0
    gap = ts - last  # hold_s(st) is max_hold_s or more: asked only for a gap over max_hold_s
    if hold and gap > cleaner.max_hold_s and gap > cleaner.hold_s(st) and not st.fresh:
        return None
    try:
        values = cleaner._get(r.values)  # noqa: SLF001
    except KeyError:
        return None
    lows, highs = cleaner._lows, cleaner._highs  # noqa: SLF001 - its ranges, clamped to the finite floats
    # Python floats, each finite and inside its channel's range
    if set(map(type, values)) != _FLOAT or not all(map(le, lows, values)) or not all(map(le, values, highs)):
        return None
    st.last_seen = now
    if hold:
        st._all_good = (ts, values)  # noqa: SLF001 - st.all_good(ts, values) and tb.accept(ts, now), inline: this
    tb.last_ts, tb._at, tb._run = ts, now, 0  # noqa: SLF001 - runs per reading, and a call costs more than its body
    st.fresh = False
    return Vector(ts, np.array(values), r.sensor)


def rows_ok(cleaner: "Cleaner", x: np.ndarray) -> np.ndarray:
    """Per row: every channel finite and inside its valid range (the per-reading checks, on the whole block)."""
    ok = np.isfinite(x).all(axis=1)
    for i, rng in enumerate(cleaner._ranges):  # noqa: SLF001 - the cleaner's own ranges, merged
        if rng is not None:
            col = x[:, i]
            ok &= (col >= rng[0]) & (col <= rng[1])
    return ok


class CleanRun:
    """Rows of one sensor (timestamps ``ts``, values ``x`` in the model's channel order, ``ok`` from ``rows_ok``
    and finite timestamps) and which of them may follow each other in bulk."""

    def __init__(self, ts: np.ndarray, x: np.ndarray, ok: np.ndarray):
        self.ts, self.x, self.ok = ts, x, ok
        self._dt = np.diff(ts)
        self._breaks: dict[float, np.ndarray] = {}

    def _breaks_for(self, limit: float) -> np.ndarray:
        """Rows k >= 1 that cannot follow row k - 1 in bulk: not ok, not after it, or more than ``limit`` after."""
        b = self._breaks.get(limit)
        if b is None:
            dt = self._dt
            bad = ~self.ok[1:] | ~(dt > 0)
            if limit < math.inf:
                bad |= dt > limit
            b = self._breaks[limit] = np.flatnonzero(bad) + 1
        return b

    def bulk(self, cleaner: "Cleaner", sensor: str, start: int, now: float) -> int:
        """How many rows from ``start`` on are the common case for this sensor's state now (0: clean ``start``
        with ``Cleaner.clean``)."""
        if cleaner.spike_window or not self.ok[start]:
            return 0
        st = cleaner._sensors.get(sensor)  # noqa: SLF001
        if st is None or st.interval is None or st.silent or st.stale:
            return 0
        tb = st.time
        last = tb.last_ts
        if last is None:
            return 0
        t0 = float(self.ts[start])
        if not t0 > last:
            return 0
        jump = cleaner.max_time_jump_s
        if jump and t0 - last - max(0.0, now - tb._at) > jump:  # noqa: SLF001
            return 0
        hold = cleaner.max_hold_s > 0
        hold_s = cleaner.hold_s(st)
        if hold and t0 - last > hold_s and not st.fresh:
            return 0  # a time gap: counted and reset by the per-reading code
        limit = min(hold_s if hold else math.inf, jump if jump else math.inf)
        breaks = self._breaks_for(limit)
        k = int(np.searchsorted(breaks, start, side="right"))
        end = int(breaks[k]) if k < len(breaks) else len(self.ts)
        return end - start

    def accept(self, cleaner: "Cleaner", sensor: str, start: int, end: int, now: float) -> None:
        """Rows ``start:end`` (a ``bulk`` run) are clean: what ``Cleaner.clean`` would remember of them."""
        st = cleaner._sensors[sensor]  # noqa: SLF001
        st.last_seen = now
        last_ts = float(self.ts[end - 1])
        if cleaner.max_hold_s > 0:
            st.all_good(last_ts, self.x[end - 1].tolist())
        st.time.accept(last_ts, now)
        st.fresh = False
