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

import math
from array import array
from collections.abc import Sequence
from typing import Any, Iterable, cast

import numpy as np

from agent.parse import _decode, _from_object, _json_value, loads_json, number, timestamp
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
                obj = loads_json(text)
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
        if t0 < 0 or not math.isfinite(t0 + (n - 1) * period):
            return "block_bad_period"  # samples before 1970 or past any date
        ts = t0 + np.arange(n, dtype=np.float64) * period
        if n > 1 and not (ts[1:] > ts[:-1]).all():  # closer than a timestamp resolves (each step: rounding differs)
            return "block_bad_period"
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
    c = Coalescer(min_run)
    for r in records:
        c.add(r)
    return c.take()


class Coalescer:
    """``coalesce``, one record at a time, for a source that receives a burst message by message: the same output
    for the same records, but a run that is long enough is held as two arrays of floats (timestamps, values row
    after row) instead of its Reading objects — 8 channels: 72 bytes a reading instead of about a kilobyte of
    dict, key strings and float objects, so a burst waiting for its hand-over costs a tenth of the memory."""

    def __init__(self, min_run: int = BLOCK_MIN) -> None:
        self.min_run = max(2, min_run)
        self.held = 0  # records added since the last take (a Block counts one)
        self.rows = 0  # readings added since the last take (a Block counts its rows)
        self._out: list[Reading | Block] = []
        self._run: list[Reading] = []  # the current run while it is shorter than min_run
        self._first: Reading | None = None  # the current run's first reading (sensor, asset)
        self._names: tuple[str, ...] = ()
        self._last = 0.0  # the current run's last timestamp
        self._ts: array | None = None  # the current run as columns, once it reached min_run
        self._values: array | None = None

    def add(self, r: Reading | Block) -> None:
        self.held += 1
        self.rows += len(r) if type(r) is Block else 1
        first = self._first
        if type(r) is not Reading or not _FLOATS.issuperset(map(type, r.values.values())):
            if first is not None:
                self._close()
            self._out.append(r)
            return
        if (first is not None and r.sensor == first.sensor and r.asset == first.asset and r.ts > self._last
                and tuple(r.values) == self._names):
            self._last = r.ts
            if self._ts is not None:
                self._ts.append(r.ts)
                self._values.extend(r.values.values())  # type: ignore[union-attr]
                return
            run = self._run
            run.append(r)
            if len(run) >= self.min_run:  # long enough for a Block: from now on as columns
                self._ts = array("d", [x.ts for x in run])
                self._values = values = array("d")
                for x in run:  # floats only: each reading was checked as it was added (_FLOATS)
                    values.extend(cast("Iterable[float]", x.values.values()))
                run.clear()
            return
        if first is not None:
            self._close()
        self._first, self._names, self._last = r, tuple(r.values), r.ts
        self._run.append(r)

    def take(self) -> list[Reading | Block]:
        """Everything added since the last take, in order, the current run included."""
        try:
            if self._first is not None:
                self._close()
            return self._out
        finally:  # a fresh start even if closing failed (a bug costs this pass, not every later one)
            self._out, self._run, self.held, self.rows = [], [], 0, 0
            self._first = self._ts = self._values = None

    def _close(self) -> None:
        first, ts, values = self._first, self._ts, self._values
        assert first is not None
        if ts is None:
            self._out.extend(self._run)
            self._run.clear()
        else:
            n = len(ts)
            self._out.append(Block(np.frombuffer(ts, dtype=np.float64),
                                   self._names, np.frombuffer(values, dtype=np.float64).reshape(n, len(self._names)),  # type: ignore[arg-type]
                                   first.sensor, first.asset))
        self._first, self._ts, self._values = None, None, None
