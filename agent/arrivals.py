"""Whether readings arrive at all at an asset fed by a live source (serial, Modbus, MQTT): a port that opens but
stays quiet, a topic nobody publishes to, must not look healthy. A replay is never watched (it ends, and its time is
its own).

The asset is silent (status ``degraded: no readings arriving``) once no reading of any of its sensors came for
``max(MAX_HOLD_S, 3 × its arrival interval)`` on the clock since the pipeline loop started or since the last reading.
The arrival interval is the longest of the last ``KEEP_GAPS`` gaps between arrivals (the wait from the start to the
first reading included), not their median: an asset's readings often come in clusters — several Modbus devices
polled back to back, several sensors or topics of one machine, a serial block read in pieces — and then most gaps
are the milliseconds inside a cluster, while the pace that matters is the quiet between clusters. So a source that
reports every five minutes may be flagged from ``MAX_HOLD_S`` after the start until its first reading, and between
its first and second cluster only if the first came within a third of its interval — together less than one
interval — and not again at its own pace. A long outage lengthens the tolerance until ``KEEP_GAPS`` more gaps have
come (a source that slows down for good is then never flagged over and over); the time a source was disconnected is
not such a gap (its first reading after a reconnection measures from the reconnection).

Only a connected source is judged: one that is disconnected (or still connecting) says so itself (its warning, ``source
disconnected`` in the status), and the silence then is its consequence, not news. For a Modbus asset that is the link
of its own devices' buses, not of the whole source (connected while any bus is). Silence counts from its return.
A Modbus asset's pace is its own devices' longest poll period, not the slowest on the source.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable

from agent.clean import HOLD_INTERVALS
from agent.sources import CONNECTED, expected_interval, link_state

if TYPE_CHECKING:
    from agent.assets import Asset, Feed
    from agent.sources import Source

log = logging.getLogger(__name__)

KEEP_GAPS = 256  # clusters of up to this many takes still show the quiet between them


class Arrivals:
    """The arrivals of one asset's readings, on the pipeline thread; ``silent`` is read by any thread."""

    def __init__(self, label: str, hold_s: float, clock: Callable[[], float] = time.monotonic,
                 expected_s: float = 0.0, connected: Callable[[], bool] = lambda: True):
        self.label, self.hold_s, self._clock = label, hold_s, clock
        self.connected = connected  # whether its source is connected now (any of them, for several)
        self._back = float("-inf")  # the last check at which it was not connected: silence counts from after it
        self._floor = expected_s  # a pace the source knows (a Modbus poll period): never judged faster than that
        self.silent = False
        self._last: float | None = None  # the last arrival, or the first check (the start)
        self._gaps: deque[float] = deque(maxlen=KEEP_GAPS)
        self.interval: float | None = expected_s or None  # the longest of the recent gaps (at least _floor)

    def tolerance_s(self) -> float:
        """How long without a reading is still normal for this asset."""
        return self.hold_s if self.interval is None else max(self.hold_s, HOLD_INTERVALS * self.interval)

    def heard(self) -> None:
        """Readings of the asset reached the pipeline just now."""
        now = self._clock()
        if self._last is not None:
            gap = now - max(self._last, self._back)  # an outage is not the source's pace
            dropped = self._gaps[0] if len(self._gaps) == KEEP_GAPS else None
            self._gaps.append(gap)
            if self.interval is None or gap >= self.interval:
                self.interval = gap
            elif dropped is not None and dropped >= self.interval:  # the longest left the window: look again
                self.interval = max(max(self._gaps), self._floor)
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
        elif not self.connected():
            self._back = now
        elif not self.silent and now - max(self._last, self._back) > self.tolerance_s():
            self.silent = True
            log.warning("%s: no reading arrived for %.3g s: degraded (no readings arriving)", self.label,
                        now - max(self._last, self._back))


def watch_arrivals(assets: Iterable[Asset], feeds: Iterable[Feed]) -> set[str]:
    """Give every asset fed by a live source its ``Arrivals``; returns their ids."""
    feeds = list(feeds)
    live = {aid for f in feeds if f.source.live for aid in f.assets}
    for a in assets:
        if a.id in live:
            sources = [f.source for f in feeds if a.id in f.assets]
            expected = max((expected_interval(s, a.sensors) for s in sources), default=0.0)
            a.arrivals = Arrivals(f"asset {a.id}" if a.id else "source", a.settings.cleaning.max_hold_s,
                                  expected_s=expected, connected=_connected(sources, a.sensors))
    return live


def _connected(sources: list[Source], sensors: set[str]) -> Callable[[], bool]:
    """Whether any of an asset's sources is connected now: for a Modbus asset, whether the buses of its devices all
    are (a bus down beside a live one is its own outage, not silence)."""
    return lambda: any(link_state(s, sensors) == CONNECTED for s in sources)
