"""Validation and repair of readings: every rejection and every repair counted by reason, nothing raised.

Runs on the pipeline thread. Counters (all published: ``reject.*`` in every summary's ``rejected`` and the stats
topic, ``repaired.*`` and ``gap.*`` in every summary's ``repaired``/``gaps``; see docs/cleaning.md):

``reject.<reason>``
    a value refused: ``non_numeric``, ``not_finite`` (NaN/inf), ``out_of_range`` (outside the channel's valid
    range), ``missing_channel`` (a model channel absent from the reading); a whole reading refused:
    ``bad_timestamp`` (NaN/inf), ``duplicate_ts`` and ``out_of_order`` (a timestamp not after the sensor's
    previous one), ``future_ts`` / ``past_ts`` (more than ``max_time_jump_s`` ahead of the sensor's time or
    behind it: one bad device timestamp must not blind the sensor), ``stale_channel`` (dropped because a channel
    has had no good value for longer than ``max_hold_s``), ``too_many_sensors`` (a new sensor beyond
    ``max_sensors``), ``sensor_id_too_long`` (a sensor id longer than ``MAX_SENSOR_ID`` characters).
``repaired.<how>``
    ``held`` (a refused or missing value replaced by the channel's last good value, at most ``max_hold_s`` old),
    ``spike`` (a value the Hampel filter took for a spike, replaced by the median of the recent values).
``gap.<what>``
    ``time_gap`` (a sensor's windows reset: more than ``max_hold_s`` of data time since its previous reading),
    ``stale`` (a sensor's windows reset: one of its channels went stale), ``time_step`` (``TIME_STEP_READINGS``
    readings in a row agreed on a time far from the sensor's: its clock was stepped, taken as the new time base).
    The aligner adds its own (``agent.align``).

Per-sensor state is bounded: at most ``max_sensors`` sensors, and a sensor silent for ``idle_s`` (on the clock) is
forgotten by ``forget`` (the pipeline drops its other per-sensor state at the same time).

With ``max_hold_s = 0`` nothing is held and nothing goes stale: a reading with any bad channel is dropped, as
before hold-last-value existed.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from agent.clean_block import clean_common, getter
from agent.clean_policy import CleaningPolicy, parse_ranges  # noqa: F401 - re-exported (agent.clean's names)
from agent.counters import Counters
from agent.logsafe import clip
from agent.records import Reading, Vector
from agent.timebase import TIME_STEP, TIME_STEP_READINGS, TimeBase  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

MAD_SCALE = 1.4826  # MAD x 1.4826 estimates the standard deviation of normal data
LEARN_INTERVALS = 8  # a sensor's reporting interval: the median of its first this many intervals
HOLD_INTERVALS = 3.0  # ... and a value is held, a gap tolerated, for at least this many intervals
MAX_SENSOR_ID = 200  # characters: a sensor id is a dict key in every per-sensor structure and is in every alert
_FLOAT_MAX = sys.float_info.max
_LOG_EVERY_S = 600.0  # repeated warnings (too many sensors) at most this often


class _SensorState:
    """What the cleaner remembers of one sensor."""

    def __init__(self, ts: float, channels: int, spike_window: int, max_jump_s: float):
        self.first_ts = ts  # a channel never seen goes stale max_hold_s after the sensor's first reading
        self.time = TimeBase(max_jump_s)  # its last accepted timestamp, and clock steps
        self.last_seen = 0.0  # clock() when a reading of it last arrived
        self.fresh = True  # windows empty since the last reset (no time_gap reset needed)
        self._good: list[tuple[float, float] | None] = [None] * channels  # last good (ts, value) per channel
        self._all_good: tuple[float, Sequence[float]] | None = None  # or: every channel good at ts, these values
        # spike filter history: none without the filter (an empty deque still costs ~600 bytes, x channels x sensors)
        self.history: list[deque[float]] = [deque(maxlen=spike_window) for _ in range(channels)] if spike_window else []
        self.stale: set[int] = set()
        self.silent = False
        self.intervals: list[float] = []  # the first LEARN_INTERVALS intervals between accepted readings
        self.interval: float | None = None  # their median: the sensor's reporting interval

    @property
    def good(self) -> list[tuple[float, float] | None]:
        """The last good (ts, value) of each channel (a list the caller may change in place)."""
        if self._all_good is not None:
            ts, values = self._all_good
            self._good = [(ts, v) for v in values]
            self._all_good = None
        return self._good

    @good.setter
    def good(self, good: list[tuple[float, float] | None]) -> None:
        self._good, self._all_good = good, None

    def all_good(self, ts: float, values: Sequence[float]) -> None:
        """Every channel was good at ``ts`` with ``values`` (Python floats): what the common case remembers, the
        per-channel list made only when a reading needs it."""
        self._all_good = (ts, values)


class Cleaner:
    """Turns a Reading into a Vector in the model's channel order, or counts why it cannot.

    ``on_reset(sensor)`` is called when the sensor's windows must be forgotten (a hole in time, a stale channel, a
    clock step); ``on_time_step(sensor, delta_s)`` when a sensor's clock stepped. ``stale`` and ``sensor_count``
    change only with ``version`` (the pipeline publishes them in its snapshot when it moved).
    """

    def __init__(
        self, channels: Sequence[str], valid_ranges: Mapping[str, tuple[float, float]], counters: Counters, *,
        ranges: Mapping[str, tuple[float, float]] | None = None, max_hold_s: float = 0.0, spike_window: int = 0,
        spike_sigmas: float = 5.0, missing_counter: str = "reject.missing_channel",
        on_reset: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
        max_time_jump_s: float = 0.0, max_sensors: int = 0, idle_s: float = 0.0,
        on_time_step: Callable[[str, float], None] | None = None,
    ):
        self.channels = list(channels)
        self.counters = counters
        self._override = dict(ranges or {})
        unknown = sorted(set(self._override) - set(self.channels))
        if unknown:
            log.warning("EDGE_AGENT_CLEANING__RANGES names channels the model does not have (ignored): %s",
                        ", ".join(unknown))
        self.ranges_from(valid_ranges)
        self.max_hold_s = max_hold_s
        self.spike_window = spike_window if spike_window >= 3 else 0  # a median of fewer values is no filter
        self.spike_sigmas = spike_sigmas
        self._missing_counter = missing_counter
        self._on_reset = on_reset
        self._on_time_step = on_time_step
        self._clock = clock
        self.max_time_jump_s = max_time_jump_s
        self.max_sensors = max_sensors
        self.idle_s = idle_s
        self._sensors: dict[str, _SensorState] = {}
        self._get = getter(self.channels)
        self.version = 0  # moves whenever ``stale`` or ``sensor_count`` changes
        self._stale_names: set[str] = set()
        self._stale_view: frozenset[str] = frozenset()
        self._stale_view_version = 0
        self._refused_sensors = 0  # new sensors refused since the last warning
        self._refused_logged_at = -math.inf

    def ranges_from(self, valid_ranges: Mapping[str, tuple[float, float]]) -> None:
        """Use these per-channel valid ranges from now on (a new model's sidecar); the configured ones win."""
        merged = {**valid_ranges, **self._override}
        self._ranges = [merged.get(c) for c in self.channels]
        # the common case's range test: lo <= v <= hi against the range clamped to the finite floats, which also
        # refuses NaN and +-inf (a channel without a range: the finite floats)
        self._lows = tuple(max(r[0], -_FLOAT_MAX) if r is not None else -_FLOAT_MAX for r in self._ranges)
        self._highs = tuple(min(r[1], _FLOAT_MAX) if r is not None else _FLOAT_MAX for r in self._ranges)

    @property
    def stale(self) -> frozenset[str]:
        """Channels now stale or silent, as ``sensor/channel`` (just the channel for a nameless sensor)."""
        if self._stale_view_version != self.version:
            self._stale_view = frozenset(self._stale_names)
            self._stale_view_version = self.version
        return self._stale_view

    @property
    def sensor_count(self) -> int:
        return len(self._sensors)

    def _name(self, sensor: str, i: int) -> str:
        return f"{sensor}/{self.channels[i]}" if sensor else self.channels[i]

    def _show_stale(self, sensor: str, idx: Iterable[int], stale: bool) -> None:
        names = [self._name(sensor, i) for i in idx]
        if stale:
            self._stale_names.update(names)
        else:
            self._stale_names.difference_update(names)
        self.version += 1

    def check_silence(self, connected: bool = True) -> None:
        """Mark every channel of a sensor stale (status only) that sent nothing for ``max_hold_s`` on the clock.

        For a live source while it is silent; windows are not touched: the next reading's timestamp decides. Said
        in the log only while the source is ``connected``: a disconnected one says so itself, staleness follows.
        """
        if self.max_hold_s <= 0:
            return
        now = self._clock()
        for sensor, st in self._sensors.items():
            hold = self.hold_s(st)
            if not st.silent and now - st.last_seen > hold:
                st.silent = True
                self._show_stale(sensor, range(len(self.channels)), True)
                if connected:
                    log.warning("sensor %s silent for more than %.3g s: its channels are stale", clip(sensor) or "-",
                                hold)

    def hold_s(self, st: _SensorState) -> float:
        """How long (data time) a value is held and a gap tolerated for this sensor: ``max_hold_s``, or
        ``HOLD_INTERVALS`` of its reporting interval once learnt if that is longer (a sensor that reports every
        five minutes is not stale after five seconds)."""
        if st.interval is None:
            return self.max_hold_s
        return max(self.max_hold_s, HOLD_INTERVALS * st.interval)

    def interval_of(self, sensor: str) -> float | None:
        """The learnt reporting interval of ``sensor`` (None until LEARN_INTERVALS intervals were seen)."""
        st = self._sensors.get(sensor)
        return None if st is None else st.interval

    def idle_sensors(self) -> list[str]:
        """Sensors that sent nothing for ``idle_s`` on the clock (none when ``idle_s`` is 0)."""
        if self.idle_s <= 0:
            return []
        limit = self._clock() - self.idle_s
        return [sensor for sensor, st in self._sensors.items() if st.last_seen < limit]

    def forget(self, sensor: str) -> None:
        """Drop everything the cleaner keeps of ``sensor``; a reading of it later starts afresh."""
        if self._sensors.pop(sensor, None) is not None:
            self._show_stale(sensor, range(len(self.channels)), False)

    def _admit(self, r: Reading, now: float) -> _SensorState | None:
        """The state of a sensor seen for the first time, or None (counted) when there are too many already."""
        if len(r.sensor) > MAX_SENSOR_ID:
            self.counters.inc("reject.sensor_id_too_long")
            return None
        if self.max_sensors and len(self._sensors) >= self.max_sensors:
            self.counters.inc("reject.too_many_sensors")
            self._refused_sensors += 1
            if now - self._refused_logged_at >= _LOG_EVERY_S:
                log.warning(
                    "%d reading(s) of new sensors refused (e.g. %s): already %d sensors "
                    "(EDGE_AGENT_CLEANING__MAX_SENSORS; idle ones are forgotten after EDGE_AGENT_CLEANING__SENSOR_IDLE_S)",
                    self._refused_sensors, clip(r.sensor) or "-", len(self._sensors),
                )
                self._refused_sensors, self._refused_logged_at = 0, now
            return None
        st = self._sensors[r.sensor] = _SensorState(r.ts, len(self.channels), self.spike_window, self.max_time_jump_s)
        self.version += 1
        return st

    def time_stepped(self, sensor: str, ts: float, delta_s: float) -> None:
        """The aligner took a step of ``sensor``'s clock (counted and logged there): as ``_time_step`` from ``ts``."""
        st = self._sensors.get(sensor)
        if st is not None:
            self._time_step(sensor, st, ts, delta_s)

    def _time_step(self, sensor: str, st: _SensorState, ts: float, upstream: float | None = None) -> None:
        """The sensor's clock stepped: its time base, held values and windows start again from ``ts``."""
        delta = st.time.step_s if upstream is None else upstream
        if upstream is None:
            self.counters.inc("gap.time_step")
            log.warning("sensor %s: %d readings in a row are %+.0f s away from its time: taken as its new time base "
                        "(device clock stepped?); its windows start again", clip(sensor) or "-", TIME_STEP_READINGS,
                        delta)
        st.time.reset()
        st.first_ts = ts
        st.good = [None] * len(self.channels)
        if not st.fresh:
            self._reset(sensor, st)
        if self._on_time_step is not None:
            self._on_time_step(sensor, delta)

    def clean(self, r: Reading, now: float | None = None) -> Vector | None:
        """A Vector, or None after counting why the reading is unusable. ``now``: the clock's time, if just read."""
        if now is None:
            now = self._clock()
        v = clean_common(self, r, now)  # the common case, without the per-channel loop below
        if v is not None:
            return v
        if not math.isfinite(r.ts):
            self.counters.inc("reject.bad_timestamp")
            return None
        st = self._sensors.get(r.sensor)
        if st is None:
            st = self._admit(r, now)
            if st is None:
                return None
        else:
            verdict = st.time.judge(r.ts, now)
            if verdict == TIME_STEP:
                self._time_step(r.sensor, st, r.ts)
            elif verdict is not None:
                self.counters.inc(f"reject.{verdict}")
                return None
        st.last_seen = now
        if st.silent:
            st.silent = False
            self._show_stale(r.sensor, [i for i in range(len(self.channels)) if i not in st.stale], False)
        hold = self.max_hold_s > 0
        hold_s = self.hold_s(st)
        out = np.empty(len(self.channels))
        good: list[int] = []
        unusable: list[int] = []
        held = spikes = 0
        for i, name in enumerate(self.channels):
            raw = r.values.get(name)
            value = None if raw is None else _as_float(raw)
            if raw is None:
                reason = "missing_channel"
            elif value is None:
                reason = "non_numeric"
            elif not math.isfinite(value):
                reason = "not_finite"
            elif (rng := self._ranges[i]) is not None and not (rng[0] <= value <= rng[1]):
                reason = "out_of_range"
            else:
                if self.spike_window:
                    value, spiked = self._despike(st.history[i], value)
                    spikes += spiked
                out[i] = value
                good.append(i)
                continue
            self.counters.inc(self._missing_counter if reason == "missing_channel" else f"reject.{reason}")
            if not hold:
                return None  # without hold-last-value the first bad channel drops the reading
            last = st.good[i]
            if last is not None and r.ts - last[0] <= hold_s:
                out[i] = last[1]
                held += 1
            else:
                unusable.append(i)
        if hold:
            # good values count even in a reading that is dropped: channels arriving in turns must be able to
            # recover one after the other
            for i in good:
                st.good[i] = (r.ts, float(out[i]))
                if i in st.stale:
                    st.stale.discard(i)
                    self._show_stale(r.sensor, [i], False)
                    log.info("sensor %s: channel %s recovered", clip(r.sensor) or "-", self.channels[i])
        if unusable:
            newly = [i for i in unusable if i not in st.stale and r.ts - self._since(st, i) > hold_s]
            if newly:
                self._go_stale(r.sensor, st, newly)
            if any(i in st.stale for i in unusable):
                self.counters.inc("reject.stale_channel")
            return None
        if held:
            self.counters.inc("repaired.held", held)
        if spikes:
            self.counters.inc("repaired.spike", spikes)
        last_ts = st.time.last_ts
        if last_ts is not None and st.interval is None:
            st.intervals.append(r.ts - last_ts)
            if len(st.intervals) >= LEARN_INTERVALS:
                st.interval = float(np.median(st.intervals))
                hold_s = self.hold_s(st)  # this reading's gap too is judged by the interval it taught
                if HOLD_INTERVALS * st.interval > self.max_hold_s > 0:
                    log.info("sensor %s reports every %.3g s: values held and gaps tolerated up to %.3g s",
                             clip(r.sensor) or "-", st.interval, self.hold_s(st))
        if hold and last_ts is not None and r.ts - last_ts > hold_s and not st.fresh:
            self.counters.inc("gap.time_gap")
            if st.interval is not None:  # while the interval is being learnt, a slow sensor's every reading is one
                log.info("sensor %s: %.1f s without a reading: its windows start again", clip(r.sensor) or "-",
                         r.ts - last_ts)
            self._reset(r.sensor, st)
        st.time.accept(r.ts, now)
        st.fresh = False
        return Vector(ts=r.ts, values=out, sensor=r.sensor)

    @staticmethod
    def _since(st: _SensorState, i: int) -> float:
        last = st.good[i]
        return last[0] if last is not None else st.first_ts

    def _go_stale(self, sensor: str, st: _SensorState, idx: list[int]) -> None:
        st.stale.update(idx)
        if not st.silent:
            self._show_stale(sensor, idx, True)
        log.warning(
            "sensor %s: no good value of %s for more than %.3g s: stale, its readings are dropped until it recovers",
            clip(sensor) or "-", ", ".join(self.channels[i] for i in idx), self.hold_s(st),
        )
        if not st.fresh:
            self.counters.inc("gap.stale")
            self._reset(sensor, st)

    def _reset(self, sensor: str, st: _SensorState) -> None:
        st.fresh = True
        for h in st.history:
            h.clear()
        if self._on_reset is not None:
            self._on_reset(sensor)

    def _despike(self, hist: deque[float], x: float) -> tuple[float, int]:
        """Hampel filter over the previous values: (value to use, 1 if it was a spike). The raw value is kept in
        the history either way, so a sustained step takes over the median after half a window and passes."""
        full = len(hist) == hist.maxlen
        if full:
            s = sorted(hist)
            med = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
            mad = sorted(abs(v - med) for v in s)
            m = mad[len(mad) // 2] if len(mad) % 2 else (mad[len(mad) // 2 - 1] + mad[len(mad) // 2]) / 2
            scale = max(MAD_SCALE * m, 1e-9 * max(1.0, abs(med)))  # a constant history: any real change counts
        hist.append(x)
        if full and abs(x - med) > self.spike_sigmas * scale:
            return med, 1
        return x, 0


def _as_float(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    try:
        return float(raw.strip())
    except (ValueError, AttributeError, TypeError):
        return None
