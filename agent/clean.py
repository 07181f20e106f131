"""Validation and repair of readings: every rejection counted by reason, nothing raised.

Runs on the pipeline thread. Reasons (counter ``reject.<reason>``): ``non_numeric``, ``not_finite`` (NaN/inf),
``out_of_range`` (outside the channel's valid range), ``missing_channel`` (a model channel absent from the
reading), ``duplicate_ts`` and ``out_of_order`` (a timestamp not after the sensor's previous one).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from agent.counters import Counters
from agent.records import Reading, Vector


class Cleaner:
    """Turns a Reading into a Vector in the model's channel order, or counts why it cannot."""

    def __init__(self, channels: Sequence[str], valid_ranges: Mapping[str, tuple[float, float]], counters: Counters):
        self.channels = list(channels)
        self.ranges_from(valid_ranges)
        self.counters = counters
        self._last_ts: dict[str, float] = {}

    def ranges_from(self, valid_ranges: Mapping[str, tuple[float, float]]) -> None:
        """Use these per-channel valid ranges from now on (a new model's sidecar)."""
        self._ranges = [valid_ranges.get(c) for c in self.channels]

    def clean(self, r: Reading) -> Vector | None:
        """A Vector, or None after counting the first reason the reading is unusable."""
        last = self._last_ts.get(r.sensor)
        if last is not None and r.ts <= last:
            self.counters.inc("reject.duplicate_ts" if r.ts == last else "reject.out_of_order")
            return None
        out = np.empty(len(self.channels))
        for i, name in enumerate(self.channels):
            reason = None
            raw = r.values.get(name)
            if raw is None:
                reason = "missing_channel"
            else:
                value = _as_float(raw)
                if value is None:
                    reason = "non_numeric"
                elif not math.isfinite(value):
                    reason = "not_finite"
                else:
                    rng = self._ranges[i]
                    if rng is not None and not (rng[0] <= value <= rng[1]):
                        reason = "out_of_range"
            if reason is not None:
                self.counters.inc(f"reject.{reason}")
                return None
            out[i] = value
        self._last_ts[r.sensor] = r.ts
        return Vector(ts=r.ts, values=out, sensor=r.sensor)


def _as_float(raw: float | str) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    try:
        return float(raw.strip())
    except (ValueError, AttributeError):
        return None
