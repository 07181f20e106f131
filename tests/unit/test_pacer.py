"""agent.sources.Pacer: when a busy stream's reads wait to gather (the clock of its hand-overs)."""

from __future__ import annotations

import time

from agent.sources import BUSY_BELOW, BUSY_S, Pacer


def test_a_busy_stream_waits_a_slow_one_and_a_flood_do_not():
    p = Pacer(0.04)
    assert p.after(3) == 0.0  # the first hand-over: nothing before it
    assert p.after(3) == 0.04  # a second one at once: busy, let the next readings gather
    time.sleep(BUSY_S * 1.5)
    assert p.after(3) == 0.0  # a slow stream is never delayed
    assert p.after(BUSY_BELOW) == 0.0  # a flood: every read is full anyway
    assert Pacer(0).after(3) == 0.0 and Pacer(0).after(3) == 0.0  # GATHER_MS=0: never


def test_a_pass_that_handed_nothing_over_does_not_count_as_a_visit():
    """A pass whose lines were all rejected (or a wake-up with no data) hands over nothing: it must not make the
    next real reading look like part of a busy stream."""
    p = Pacer(0.04)
    assert p.after(3) == 0.0
    time.sleep(BUSY_S * 1.5)
    assert p.after(0) == 0.0
    assert p.after(3) == 0.0, "the empty pass moved the clock: a slow stream was delayed"
