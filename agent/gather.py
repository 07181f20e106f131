"""A generic detector's channels, learnt from the stream before the stages that need them are built.

Without alignment they are the numeric values of the first reading, in their order. With alignment (readings of
several topics merged by agent.align) one reading names only its topic's channels: they are gathered from the first
readings of every topic instead (``ChannelGather``), by agent.align's rule for a value's channel.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.records import Reading
from agent.sources.replay import LABEL_COLUMNS

log = logging.getLogger("agent.pipeline")  # the pipeline's own lines, as before the split

GATHER_PERIODS = 10  # with alignment, channels are gathered for at most this many periods of data time


class ChannelGather:
    """The channels of a detector that learns them, from the first reading (``period_s`` = 0, no alignment) or
    gathered from the first readings of every sensor (``period_s`` > 0, the alignment period). ``add`` returns
    None until they are known (those readings only name the channels)."""

    def __init__(self, period_s: float = 0.0):
        self.period_s = period_s
        self._first: tuple[str, float] | None = None  # the first sensor and its reading's timestamp
        self._seen: dict[tuple[str, bool], dict[str, None]] = {}  # (name, lone) -> the sensors that sent it, in order

    def add(self, r: Reading) -> list[str] | None:
        if self.period_s <= 0:
            channels = numeric_names(r)
            if channels:
                log.info("channels from the first reading: %s", ", ".join(channels))
            return channels or None
        gathered = self._aligned(r)
        if gathered:
            log.info("channels from the first readings (aligned): %s", ", ".join(gathered))
        return gathered

    def _aligned(self, r: Reading) -> list[str] | None:
        """Each numeric value's name (agent.align's rule: a value's name, else its sensor's for a lone value); but a
        lone value whose name several sensors share (a bare number, ``EDGE_AGENT_SOURCE__CHANNEL``, or the same key
        on every topic) is its sensor's channel. Gathered until the first sensor speaks again at least one period
        later (every topic has had its turn), at most GATHER_PERIODS periods; None until then."""
        if self._first is None:
            self._first = (r.sensor, r.ts)
        sensor, ts0 = self._first
        lone = len(r.values) == 1
        for k in numeric_names(r):
            self._seen.setdefault((k, lone), {}).setdefault(r.sensor, None)
        period = self.period_s
        if r.ts - ts0 < period or (r.sensor != sensor and r.ts - ts0 < GATHER_PERIODS * period):
            return None
        seen, self._first, self._seen = self._seen, None, {}
        channels: dict[str, None] = {}
        for (name, lone_value), sensors in seen.items():
            for ch in (sensors if lone_value and len(sensors) > 1 else [name]):
                channels.setdefault(ch, None)
        return list(channels) or None


def numeric_names(r: Reading) -> list[str]:
    """The names of ``r``'s numeric values (a label column is none), in their order."""
    return [k for k, v in r.values.items() if k not in LABEL_COLUMNS and (isinstance(v, float) or _numeric(v))]


def _numeric(v: Any) -> bool:
    try:
        float(str(v).strip())
    except ValueError:
        return False
    return True
