"""Whether readings arrive at all at an asset fed by a live source (serial, Modbus, MQTT): a port that opens but
stays quiet, a topic nobody publishes to, must not look healthy. A replay is never watched (it ends, and its time is
its own).

The asset is silent (status ``degraded: no readings arriving``) once no reading of any of its sensors came for
``max(MAX_HOLD_S, 3 × its arrival interval)`` on the clock since the pipeline loop started or since the last reading.
The arrival interval is learnt like a sensor's reporting interval (agent.clean): the median of the first 8 gaps
between arrivals, the gap from the start to the first reading included; while it is being learnt the longest gap
seen so far stands in for it. So a source that reports every five minutes may be flagged from ``MAX_HOLD_S`` after
the start until its first reading, and between its first and second reading only if the first came within a third
of its interval — together less than one interval — and never again once two readings came at its own pace.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable

from agent.clean import HOLD_INTERVALS, LEARN_INTERVALS

if TYPE_CHECKING:
    from agent.assets import Asset, Feed

log = logging.getLogger(__name__)


class Arrivals:
    """The arrivals of one asset's readings, on the pipeline thread; ``silent`` is read by any thread."""

    def __init__(self, label: str, hold_s: float, clock: Callable[[], float] = time.monotonic):
        self.label, self.hold_s, self._clock = label, hold_s, clock
        self.silent = False
        self._last: float | None = None  # the last arrival, or the first check (the start)
        self._gaps: list[float] = []
        self.interval: float | None = None  # learnt from the first LEARN_INTERVALS gaps

    def tolerance_s(self) -> float:
        """How long without a reading is still normal for this asset."""
        interval = self.interval if self.interval is not None else max(self._gaps, default=None)
        return self.hold_s if interval is None else max(self.hold_s, HOLD_INTERVALS * interval)

    def heard(self) -> None:
        """Readings of the asset reached the pipeline just now."""
        now = self._clock()
        if self._last is not None and self.interval is None:
            self._gaps.append(now - self._last)
            if len(self._gaps) >= LEARN_INTERVALS:
                self.interval = statistics.median(self._gaps)
        self._last = now
        if self.silent:
            self.silent = False
            log.info("%s: readings arriving again", self.label)

    def check(self) -> None:
        """Periodic: mark the asset silent once nothing came for longer than its tolerance."""
        if self.hold_s <= 0:
            return
        now = self._clock()
        if self._last is None:
            self._last = now  # the start: silence counts from here
        elif not self.silent and now - self._last > self.tolerance_s():
            self.silent = True
            log.warning("%s: no reading arrived for %.3g s: degraded (no readings arriving)", self.label,
                        now - self._last)


def watch_arrivals(assets: Iterable[Asset], feeds: Iterable[Feed]) -> set[str]:
    """Give every asset fed by a live source its ``Arrivals``; returns their ids."""
    live = {aid for f in feeds if f.source.live for aid in f.assets}
    for a in assets:
        if a.id in live:
            a.arrivals = Arrivals(f"asset {a.id}" if a.id else "source", a.settings.cleaning.max_hold_s)
    return live
