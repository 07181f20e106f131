"""MQTT payloads -> ``Reading`` or ``Block``: a JSON object (channel -> value, optional timestamp), a bare number,
or a block of samples of one sensor (one timestamp, a sample period, an array per channel) — how vibration and
current sensors publish a burst of samples, and ThingsBoard's ``{"ts": ..., "values": {...}}`` shape with arrays:

    {"ts": 1732960000.0, "period_s": 0.001, "values": {"accel_x": [0.1, 0.2, ...], "accel_y": [...]}}

Sample ``i`` is at ``ts + i * period_s`` (``ts``: the parser's timestamp field, as for single readings; absent =
the LAST sample is the time of receipt). ``null`` in an array is a sample without a number (NaN: the cleaner counts
it as for any reading). A block is refused whole, with a reason from ``BLOCK_REASONS``: channels that are not all
arrays, arrays of unequal length, anything but numbers and null in them, more samples than the limit, no period or
one that is not a positive number, empty arrays; an unreadable timestamp is ``bad_timestamp``. Other keys beside
``ts``, ``period_s`` and ``values`` are ignored. Pure functions of the input (no I/O, no logging); never raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.parse import _decode, _from_object, _json_value, number, timestamp
from agent.records import BLOCK_MIN, Block, Reading

# Why a block payload ({"ts": ..., "period_s": ..., "values": {"ch": [...], ...}}) is refused as a whole.
BLOCK_REASONS = frozenset({"block_not_array", "block_length_mismatch", "block_not_number", "block_too_large",
                           "block_no_period", "block_bad_period", "block_empty"})
BLOCK_VALUES = "values"  # the object of arrays: channel -> samples, oldest first
BLOCK_PERIOD = "period_s"  # seconds between two samples
DEFAULT_MAX_BLOCK_SAMPLES = 10000
_NUMBER_TYPES = frozenset({float, int, type(None)})


class PayloadParser:
    """Parses one MQTT payload: a JSON object (channel -> value, optional timestamp), a bare number, or a block of
    samples: ``{"ts": t0, "period_s": p, "values": {"ch": [v0, v1, ...], ...}}`` (sample i at ``t0 + i * p``)."""

    def __init__(self, channel: str = "value", timestamp_field: str = "ts", sensor: str = "",
                 max_block_samples: int = DEFAULT_MAX_BLOCK_SAMPLES) -> None:
        self.channel = channel
        self.timestamp_field = timestamp_field
        self.sensor = sensor
        self.max_block_samples = max_block_samples

    def parse(self, payload: bytes | bytearray, received_ts: float, sensor: str | None = None,
              asset: str = "") -> Reading | Block | str:
        """A Reading or a Block (sensor from the argument, else the parser's) or a rejection reason; never raises."""
        sensor = self.sensor if sensor is None else sensor
        try:
            raw = payload.strip()
            if not raw:
                return "empty"
            text = _decode(raw)
            if text is None:
                return "not_utf8"
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError):
                v = number(text)  # plain text such as "nan" or "12.5 " that JSON does not take
                if isinstance(v, str):
                    return "malformed"
                return Reading(received_ts, {self.channel: v}, sensor, asset)
            if type(obj) is dict:
                if BLOCK_VALUES in obj and _is_block(obj[BLOCK_VALUES]):
                    return self._block(obj, received_ts, sensor, asset)
                return _from_object(obj, self.timestamp_field, received_ts, sensor, asset)
            if isinstance(obj, bool) or not isinstance(obj, (int, float, str)):
                return "malformed"
            return Reading(received_ts, {self.channel: _json_value(obj)}, sensor, asset)
        except Exception:  # a bug here must cost one message, not the MQTT network thread
            return "malformed"

    def _block(self, obj: dict[str, Any], received_ts: float, sensor: str, asset: str) -> Block | str:
        """A block payload as one Block; a reason from ``BLOCK_REASONS`` (or ``bad_timestamp``) refuses it whole."""
        arrays = list(obj[BLOCK_VALUES].values())
        if any(type(a) is not list for a in arrays):
            return "block_not_array"  # some channels arrays, others not
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            return "block_length_mismatch"
        if n == 0:
            return "block_empty"
        if n > self.max_block_samples:
            return "block_too_large"
        period = obj.get(BLOCK_PERIOD)
        if period is None:
            return "block_no_period"
        if type(period) not in (int, float) or not 0 < period < math.inf:
            return "block_bad_period"
        for a in arrays:  # numbers, and null for a sample the sensor missed (NaN: the cleaner counts it)
            if not _NUMBER_TYPES.issuperset(map(type, a)):
                return "block_not_number"
        try:
            values = np.array(arrays, dtype=np.float64).T.copy()  # (n, channels), C order
        except (OverflowError, ValueError):
            return "block_not_number"
        if self.timestamp_field in obj:
            t0 = timestamp(obj[self.timestamp_field])
            if t0 is None:
                return "bad_timestamp"
        else:
            t0 = received_ts - (n - 1) * period  # without a timestamp the last sample is the time of receipt
        period = float(period)
        if t0 < 0 or not math.isfinite(t0 + (n - 1) * period) or (n > 1 and not t0 + period > t0):
            return "block_bad_period"  # samples before 1970, past any date, or closer than a timestamp resolves
        ts = t0 + np.arange(n, dtype=np.float64) * period
        return Block(ts, tuple(obj[BLOCK_VALUES]), values, sensor, asset)


def _is_block(values: Any) -> bool:
    """True when ``values`` (the payload's ``values`` field) is an object holding at least one array."""
    return type(values) is dict and len(values) > 0 and any(type(v) is list for v in values.values())


_FLOATS = frozenset({float})


def coalesce(records: Sequence[Reading | Block], min_run: int = BLOCK_MIN) -> list[Reading | Block]:
    """Records received together (a burst of messages), with every run of at least ``min_run`` consecutive Readings
    of one sensor and asset, with the same channels in the same order, only numbers and increasing timestamps, made
    into one Block. Order is kept; a Reading holding text (the cleaner counts it ``non_numeric``), one whose
    timestamp does not advance (the cleaner's ``duplicate_ts``/``out_of_order``) and a Block stay as they are; a
    shorter run stays Readings (cheaper so: agent.records.BLOCK_MIN)."""
    out: list[Reading | Block] = []
    i, n = 0, len(records)
    while i < n:
        r = records[i]
        j = i + 1
        if type(r) is Reading and _FLOATS.issuperset(map(type, r.values.values())):
            names, last = tuple(r.values), r.ts
            while j < n:
                x = records[j]
                if (type(x) is not Reading or x.sensor != r.sensor or x.asset != r.asset or not x.ts > last
                        or tuple(x.values) != names or not _FLOATS.issuperset(map(type, x.values.values()))):
                    break
                last = x.ts
                j += 1
        if j - i < max(2, min_run):
            out.extend(records[i:j])
        else:
            run = records[i:j]
            out.append(Block(np.array([x.ts for x in run], dtype=np.float64), names,
                             np.array([list(x.values.values()) for x in run], dtype=np.float64), r.sensor, r.asset))
        i = j
    return out
