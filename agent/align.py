"""Alignment: readings of several sensors (topics, lines) at slightly different times → one reading per period.

Runs on the pipeline thread, before the cleaner. Off unless ``EDGE_AGENT_CLEANING__ALIGN_PERIOD_S`` > 0.

* Ticks lie on a grid of ``period_s`` in data time (multiples of the period since the epoch). The reading of tick
  ``T`` holds, for every model channel, its latest value with a timestamp at or before ``T`` (sample and hold),
  when that value is at most ``tolerance_s`` old. An older one is left out and counted ``gap.missing_channel``
  (by the cleaner, which then holds the last good value or marks the channel stale): never a silent zero.
* Tick ``T`` is emitted once data time has passed it — when a value with a timestamp after ``T`` arrives — so
  values stamped exactly ``T`` on other topics still make it. ``flush`` emits the last one (end of a replay).
* A tick where no channel has a value within the tolerance (every sensor silent) is skipped and counted
  ``gap.skipped_ticks``; the cleaner then sees the hole in time and restarts the windows.
* Timestamps are checked per channel: a value not newer than the channel's latest is refused (counted
  ``reject.duplicate_ts`` / ``reject.out_of_order``). A reading far from the stream's time (``max_time_jump_s``)
  is refused alone (``reject.future_ts`` / ``reject.past_ts``): one bad timestamp must not move the ticks a year
  ahead; a sustained step (far readings at ``TIME_STEP_READINGS`` timestamps going forward; other topics may stamp
  the same time, or up to the tolerance behind, without counting) is taken
  as the new time base (``gap.time_step``), as the cleaner does per sensor: the ticks before it are emitted (their
  data is all in), the latest values forgotten, and the ticks start again from the new time, so no tick mixes
  values from both sides. ``on_time_step(sensor, ts, delta_s)`` is called before the first tick after a step is
  emitted (the pipeline's cleaner then starts the merged stream's time base and windows again from ``ts``).

Channels are matched by name across sensors: a reading's value ``name`` from sensor ``s`` fills the model
channel ``name``, else ``s/name``, else — for a single-value reading such as a bare number on its own topic —
the model channel named like the sensor ``s``. Values matching no model channel are ignored. Channels gathered by
agent.gather are filled only by the sensors they were learnt from (``sources``): a reading of another sensor is
counted ``reject.not_a_channel`` (a topic first heard after the gathering, or left out of it).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Collection, Mapping, Sequence

from agent.clean import TIME_STEP, TIME_STEP_READINGS, TimeBase
from agent.counters import Counters
from agent.records import Reading

log = logging.getLogger(__name__)


class Aligner:
    """Merges the latest value of every channel, whichever sensor sent it, into one Reading per ``period_s``."""

    def __init__(
        self, channels: Sequence[str], period_s: float, tolerance_s: float, sensor: str, counters: Counters, *,
        max_time_jump_s: float = 0.0, clock: Callable[[], float] = time.monotonic,
        on_time_step: Callable[[str, float, float], None] | None = None,
        sources: Mapping[str, Collection[str]] | None = None,
    ):
        if period_s <= 0:
            raise ValueError("the alignment period must be > 0")
        self.channels = list(channels)
        self._known = set(self.channels)
        # the sensors each gathered channel was learnt from (agent.gather): only they fill it
        self._sources = None if sources is None else {ch: frozenset(s) for ch, s in sources.items()}
        self.period_s = period_s
        self.tolerance_s = tolerance_s if tolerance_s > 0 else period_s
        self.sensor = sensor
        self.counters = counters
        self._latest: dict[str, tuple[float, float | str]] = {}  # model channel -> (ts, raw value)
        self._k: int | None = None  # the next tick to emit, as a multiple of the period
        self._seen = -math.inf  # the newest timestamp so far
        # far-off timestamps and clock steps of the stream: a step needs far timestamps going forward, other topics
        # may stamp the same time or up to the tolerance behind
        self._time = TimeBase(max_time_jump_s, ordered=False, behind_s=self.tolerance_s)
        self._clock = clock
        self._on_time_step = on_time_step
        self._stepped: float | None = None  # a step taken, its first tick not emitted yet: how far it stepped

    def channel_of(self, sensor: str, name: str, single: bool) -> str | None:
        """The model channel a value named ``name`` from ``sensor`` fills, if any: the first of ``name``,
        ``sensor/name`` and (a single value) ``sensor`` that is a model channel ``sensor`` may fill."""
        sources = self._sources
        for ch in (name, f"{sensor}/{name}", sensor) if single else (name, f"{sensor}/{name}"):
            if ch in self._known and (sources is None or ch not in sources or sensor in sources[ch]):
                return ch
        return None

    def add(self, r: Reading) -> list[Reading]:
        """Take one reading; the aligned readings of the ticks that data time has now passed."""
        if not math.isfinite(r.ts):
            self.counters.inc("reject.bad_timestamp")
            return []
        single = len(r.values) == 1
        filled = [(ch, raw) for name, raw in r.values.items() 
                  if (ch := self.channel_of(r.sensor, name, single)) is not None]
        if not filled and self._sources is not None:
            self.counters.inc("reject.not_a_channel")  # a sensor the channels were not gathered from
            return []
        now = self._clock()
        verdict = self._time.judge(r.ts, now)
        out: list[Reading] = []
        if verdict == TIME_STEP:
            self.counters.inc("gap.time_step")
            log.warning("alignment: %d readings in a row are %+.0f s away from the stream's time: taken as its new "
                        "time base (a device clock stepped?); the ticks start again", TIME_STEP_READINGS,
                        self._time.step_s)
            out = self.flush()  # the ticks before the step, the last one too: nothing more is coming for them
            self._latest.clear()
            self._k, self._seen, self._stepped = None, -math.inf, self._time.step_s
            self._time.reset()
        elif verdict in ("future_ts", "past_ts"):
            self.counters.inc(f"reject.{verdict}")
            return []
        out += self._emit(r.ts, inclusive=False)
        for ch, raw in filled:
            prev = self._latest.get(ch)
            if prev is not None and r.ts <= prev[0]:
                self.counters.inc("reject.duplicate_ts" if r.ts == prev[0] else "reject.out_of_order")
                continue
            self._latest[ch] = (r.ts, raw)
        if r.ts > self._seen:
            self._seen = r.ts
            self._time.accept(r.ts, now)
        return out

    def flush(self) -> list[Reading]:
        """The ticks up to the newest timestamp seen (end of the stream)."""
        return self._emit(self._seen, inclusive=True)

    def _emit(self, until: float, inclusive: bool) -> list[Reading]:
        """The ticks before ``until`` (or at it too, when ``inclusive``) not emitted yet."""
        if not math.isfinite(until):
            return []
        p = self.period_s
        end = math.floor(until / p) + 1 if inclusive else math.ceil(until / p)  # the first tick not to emit
        if self._k is None:
            self._k = math.ceil(until / p)  # the first tick at or after the first reading
        out: list[Reading] = []
        while self._k < end:
            t = self._k * p
            values = {ch: raw for ch, (ts, raw) in self._latest.items() if 0 <= t - ts <= self.tolerance_s}
            if not values:
                # every channel too old here, so at the later ticks too until new data: skip them all
                self.counters.inc("gap.skipped_ticks", end - self._k)
                self._k = end
                break
            if self._stepped is not None:
                if self._on_time_step is not None:
                    self._on_time_step(self.sensor, t, self._stepped)
                self._stepped = None
            out.append(Reading(ts=t, values=values, sensor=self.sensor))
            self._k += 1
        return out
