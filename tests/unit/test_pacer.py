"""agent.sources.Pacer: when a busy stream's reads wait to gather (the clock of its hand-overs). The Pacer reads
``time.monotonic``; the tests drive that clock by hand so that a slow test machine cannot change the answer."""

from __future__ import annotations

import pytest

import agent.sources
from agent.sources import BUSY_BELOW, BUSY_S, Pacer


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(agent.sources.time, "monotonic", lambda: now[0])
    return now


def test_a_busy_stream_waits_a_slow_one_and_a_flood_do_not(clock):
    p = Pacer(0.04)
    assert p.after(3) == 0.0  # the first hand-over: nothing before it
    clock[0] += BUSY_S / 2
    assert p.after(3) == 0.04  # the next one soon after: busy, let the next readings gather
    clock[0] += BUSY_S * 1.5
    assert p.after(3) == 0.0  # a slow stream is never delayed
    clock[0] += BUSY_S / 2
    assert p.after(BUSY_BELOW) == 0.0  # a flood: every read is full anyway
    off = Pacer(0)
    assert off.after(3) == 0.0 and off.after(3) == 0.0  # GATHER_MS=0: never


def test_a_pass_that_handed_nothing_over_does_not_count_as_a_visit(clock):
    """A pass whose lines were all rejected (or a wake-up with no data) hands over nothing: it must not make the
    next real reading look like part of a busy stream."""
    p = Pacer(0.04)
    assert p.after(3) == 0.0
    clock[0] += BUSY_S * 1.5
    assert p.after(0) == 0.0
    clock[0] += BUSY_S / 2
    assert p.after(3) == 0.0, "the empty pass moved the clock: a slow stream was delayed"
