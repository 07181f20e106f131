"""How readings are cleaned (``EDGE_AGENT_CLEANING__*``): the policy and the parsing of configured valid ranges.
Split from agent.clean, which re-exports both."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping


def parse_ranges(text: str) -> dict[str, tuple[float, float]]:
    """``Current:0:50,Pressure:-1:10`` → {channel: (lo, hi)}; an empty bound is open (``Current::50``), a bound
    given must be finite (``nan`` would let every value through or none, ``inf`` is what an empty bound says).

    The channel name is everything before the last two colons, so names may hold spaces (and colons).
    Raises ValueError naming the bad item.
    """
    out: dict[str, tuple[float, float]] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        parts = item.rsplit(":", 2)
        if len(parts) != 3 or not parts[0].strip():
            raise ValueError(f"{item!r}: expected channel:min:max")
        name, lo_text, hi_text = parts[0].strip(), parts[1].strip(), parts[2].strip()
        try:
            lo = float(lo_text) if lo_text else -math.inf
            hi = float(hi_text) if hi_text else math.inf
        except ValueError:
            raise ValueError(f"{item!r}: min and max must be numbers (or empty for no bound)") from None
        if any(t and not math.isfinite(v) for t, v in ((lo_text, lo), (hi_text, hi))):
            raise ValueError(f"{item!r}: min and max must be finite numbers (nan and inf are refused; "
                             "leave a bound empty for none)")
        if lo > hi:
            raise ValueError(f"{item!r}: min must not exceed max")
        if name in out:
            raise ValueError(f"{item!r}: channel {name!r} given twice")
        out[name] = (lo, hi)
    return out


@dataclass(frozen=True)
class CleaningPolicy:
    """How readings are cleaned and aligned (``EDGE_AGENT_CLEANING__*``); the defaults are the settings' defaults."""

    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # over the sidecar's valid_ranges
    max_hold_s: float = 5.0
    spike_window: int = 0  # 0 = no spike filter
    spike_sigmas: float = 5.0
    align_period_s: float = 0.0  # 0 = no alignment
    align_tolerance_s: float = 0.0  # 0 = one period
    align_sensor: str = "aligned"
    max_time_jump_s: float = 600.0  # 0 = off
    max_sensors: int = 1000  # 0 = no limit
    sensor_idle_s: float = 86400.0  # 0 = never forget

    @classmethod
    def from_settings(cls, s: Any) -> "CleaningPolicy":
        """From a ``CleaningSettings`` (ranges still as text)."""
        return cls(
            ranges=parse_ranges(s.ranges), max_hold_s=s.max_hold_s, spike_window=s.spike_window,
            spike_sigmas=s.spike_sigmas, align_period_s=s.align_period_s, align_tolerance_s=s.align_tolerance_s,
            align_sensor=s.align_sensor, max_time_jump_s=s.max_time_jump_s, max_sensors=s.max_sensors,
            sensor_idle_s=s.sensor_idle_s,
        )
