"""A generic detector's channels, learnt from the stream before the stages that need them are built.

Without alignment they are the numeric values of the first reading, in their order. With alignment (readings of
several topics merged by agent.align) one reading names only its topic's channels: they are gathered from the first
readings of every topic instead (``ChannelGather``), by agent.align's rule for a value's channel.

How long: at least ``GATHER_PERIODS`` alignment periods (a topic reporting that slowly has been heard), then until
every value heard (by sensor and name: a topic) has come at least twice and ``GATHER_SLOWEST`` periods of the
slowest of them have passed (a topic as slow as that would have been heard too), at most ``GATHER_MAX_S`` (or
3 x ``GATHER_PERIODS`` periods, when longer). Time is the arrival time (the clock) for a live source: its data
time may step (NTP setting the clock after boot). A replay, whose readings arrive at once, is measured by the data
time each value's own timestamps cover, counting only its steps forward shorter than that maximum, or longer ones
repeating the step before (its cadence: a recording sampled that slowly): a far-off timestamp (a stale message, a
device with a wrong clock) neither ends the gathering early nor holds it. A value
heard only once by the maximum is left out, with a warning.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from agent.logsafe import clip
from agent.records import Reading
from agent.sources.replay import LABEL_COLUMNS

log = logging.getLogger("agent.pipeline")  # the pipeline's own lines, as before the split

GATHER_PERIODS = 10  # with alignment, channels are gathered for at least this many alignment periods ...
GATHER_SLOWEST = 3  # ... and this many periods of the slowest topic heard, every topic heard at least twice ...
GATHER_MAX_S = 300.0  # ... but at most this long (3 x GATHER_PERIODS periods when longer)
_LOG_SENSORS = 20  # the sensors a log line names at most
_CADENCE = 0.1  # a step longer than the maximum counts when within this fraction of the value's step before


class _Heard:
    """One value (by sensor and name) during the gathering."""

    __slots__ = ("count", "first", "last", "last_ts", "span", "step")

    def __init__(self, at: float, ts: float):
        self.count = 0
        self.first = self.last = at  # the gathering's time at its first and latest reading
        self.last_ts = ts  # its latest timestamp
        self.span = 0.0  # the data time its readings cover, far-off steps left out
        self.step = 0.0  # its latest step forward in data time

    def period(self) -> float:
        return (self.last - self.first) / (self.count - 1) if self.count > 1 else 0.0


class ChannelGather:
    """The channels of a detector that learns them, from the first reading (``period_s`` = 0, no alignment) or
    gathered from the first readings of every sensor (``period_s`` > 0, the alignment period). ``add`` returns
    None until they are known (those readings only name the channels)."""

    def __init__(self, period_s: float = 0.0, clock: Callable[[], float] = time.monotonic, live: bool = False):
        self.period_s = period_s
        self.live = live  # a live source: the gathering is timed by arrival alone (its data time may step, NTP)
        self.min_s = GATHER_PERIODS * period_s
        self.max_s = max(GATHER_MAX_S, 3 * self.min_s)
        self._clock = clock
        self._start: float | None = None  # clock() at the first reading
        self._heard: dict[tuple[str, str], _Heard] = {}  # (sensor, value name) -> how it was heard
        self._seen: dict[tuple[str, bool], dict[str, None]] = {}  # (name, lone) -> the sensors that sent it, in order
        self.sources: dict[str, list[str]] | None = None  # once gathered: each channel's sensors (agent.align)

    def add(self, r: Reading) -> list[str] | None:
        if self.period_s <= 0:
            channels = numeric_names(r)
            if channels:
                log.info("channels from the first reading: %s", ", ".join(channels))
            return channels or None
        return self._aligned(r)

    def elapsed(self, now: float) -> float:
        """The gathering's time: the clock's (a live source), else the later of it and the data time a value's
        readings cover (a replay, whose readings arrive at once)."""
        start = now if self._start is None else self._start
        if self.live:
            return now - start
        return max([now - start, *(h.span for h in self._heard.values())])

    def _aligned(self, r: Reading) -> list[str] | None:
        """Each numeric value's name (agent.align's rule: a value's name, else its sensor's for a lone value); but a
        lone value whose name several sensors share (a bare number, ``EDGE_AGENT_SOURCE__CHANNEL``, or the same key
        on every topic) is its sensor's channel, ``sensor/name`` when that sensor sends several such names. None
        until the gathering is over (see the module's text). What is heard is each value by name and sensor: the
        topics of one device may share its sensor id."""
        names = numeric_names(r)
        if not names:
            return None
        now = self._clock()
        if self._start is None:
            self._start = now
        lone = len(r.values) == 1
        for k in names:
            self._seen.setdefault((k, lone), {}).setdefault(r.sensor, None)
            h = self._heard.get((r.sensor, k))
            if h is None:
                h = self._heard[r.sensor, k] = _Heard(self.elapsed(now), r.ts)
            elif r.ts > h.last_ts:
                d = r.ts - h.last_ts
                if d <= self.max_s or abs(d - h.step) <= _CADENCE * h.step:  # long, but its cadence: a slow recording
                    h.span += d
                h.step = d
            h.last_ts = r.ts
            h.count += 1
        t = self.elapsed(now)
        for k in names:
            self._heard[r.sensor, k].last = t
        if t < self.min_s:
            return None
        if t < self.max_s:
            if any(x.count < 2 for x in self._heard.values()):
                return None
            if t < GATHER_SLOWEST * max(x.period() for x in self._heard.values()):
                return None
        return self._finish(t)

    def _finish(self, t: float) -> list[str] | None:
        heard, seen = self._heard, self._seen
        self._start, self._heard, self._seen = None, {}, {}
        once = {key for key, x in heard.items() if x.count < 2}
        if len(once) == len(heard):
            once = set()  # nothing heard twice: what was heard is all there is
        if once:
            log.warning("channels: left out %s, heard only once in %.0f s (slower than that, or a stray reading)",
                        _names([f"{s}/{k}" for s, k in heard if (s, k) in once]), t)
        shared: dict[str, int] = {}  # a sensor -> the lone names it sends that other sensors send too
        for (name, lone_value), by in seen.items():
            for s in by if lone_value and len(by) > 1 else ():
                shared[s] = shared.get(s, 0) + 1
        channels: dict[str, list[str]] = {}  # each channel -> its sensors
        for (name, lone_value), by in seen.items():
            sensors = [s for s in by if (s, name) not in once]
            if lone_value and len(by) > 1:  # named from every sensor that sent it, one heard once too
                for s in sensors:
                    channels.setdefault(f"{s}/{name}" if shared[s] > 1 else s, []).append(s)
            elif sensors:
                channels.setdefault(name, []).extend(sensors)
        self.sources = channels
        if channels:
            by_sensor: dict[str, list[str]] = {}
            for (s, k), x in heard.items():
                if (s, k) not in once:
                    by_sensor.setdefault(s, []).append(f"{clip(k)} ×{x.count}")
            log.info("channels from the first readings (aligned): %s; gathered for %.0f s, heard: %s",
                     ", ".join(clip(c) for c in channels), t,
                     _names([f"{s} ({', '.join(v)})" for s, v in by_sensor.items()]))
        return list(channels) or None


def _names(items: list[str]) -> str:
    shown = ", ".join(clip(s) for s in items[:_LOG_SENSORS])
    return shown + (f" and {len(items) - _LOG_SENSORS} more" if len(items) > _LOG_SENSORS else "")


def numeric_names(r: Reading) -> list[str]:
    """The names of ``r``'s numeric values (a label column is none), in their order."""
    return [k for k, v in r.values.items() if k not in LABEL_COLUMNS and (isinstance(v, float) or _numeric(v))]


def _numeric(v: Any) -> bool:
    try:
        float(str(v).strip())
    except ValueError:
        return False
    return True
