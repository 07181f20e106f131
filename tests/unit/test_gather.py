"""Gathering a generic detector's channels with alignment (agent.gather): found in review of the gathering rule."""

from __future__ import annotations

import pytest

from agent.counters import Counters
from agent.gather import ChannelGather
from agent.records import Reading


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _gather(g: ChannelGather, clock: _Clock, stream: list[tuple[float, Reading]]) -> list[str] | None:
    """Feed ``(arrival, reading)`` in arrival order until the channels are known."""
    for at, r in sorted(stream, key=lambda x: x[0]):
        clock.t = at
        got = g.add(r)
        if got is not None:
            return got
    return None


@pytest.mark.parametrize("step_s", [0.0, 200.0, -200.0])
def test_a_live_sources_clock_step_during_the_gathering_does_not_shorten_it(step_s):
    """Wall-clock timestamps, the gateway's clock stepped by NTP 40 s after boot (a Pi without RTC): a live
    gathering is timed by arrival alone, so it still lasts the 300 s and the topic heard every 280 s is a channel.
    The data time a topic covered used to count too: a step forward of 200 s ended it at 100 s, Slow left out."""
    clock = _Clock()
    g = ChannelGather(1.0, clock, live=True)
    ev = [(float(i), "Current") for i in range(600)] + [(5.0 + 280 * k, "Slow") for k in range(3)]
    stream = [(at, Reading(1.7e9 + at + (step_s if at >= 40 else 0.0), {"value": 1.0}, s)) for at, s in ev]
    assert _gather(g, clock, stream) == ["Current", "Slow"]
    assert clock.t == 300.0


@pytest.mark.parametrize("kind, live", [("mqtt", True), ("replay", False)])
def test_the_daemons_pipeline_times_the_gathering_by_arrival_for_a_live_source(tmp_path, kind, live):
    from agent.assets import build_pipeline
    from agent.bundled import bundled_model
    from agent.detectors import open_model
    from agent.settings import Settings

    src = {"path": str(tmp_path / "x.csv")} if kind == "replay" else {"topics": ["plant/+/+"]}
    s = Settings(source={"kind": kind, **src},
                 cleaning={"align_period_s": 1.0}, state_dir=tmp_path)
    p = build_pipeline(s, open_model(bundled_model("generic")), Counters())
    assert p.gather.live is live
