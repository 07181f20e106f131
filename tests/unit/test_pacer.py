"""agent.sources.Pacer: when a busy stream's reads wait to gather (the clock of its hand-overs). The Pacer reads
``time.monotonic``; the tests drive that clock by hand so that a slow test machine cannot change the answer."""

from __future__ import annotations

import pytest

import agent.sources
from agent.sources import BUSY_BELOW, BUSY_S, FLOOD_BYTES, Pacer


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


def test_a_read_that_fills_much_of_a_port_buffer_is_a_flood_whatever_its_line_count(clock):
    """Long lines: 30 of them can be 3 kB, most of a serial port's 4 KiB kernel buffer. Waiting then would cap the
    stream at a buffer per wait (a pty writer blocks; a real UART without flow control loses bytes)."""
    p = Pacer(0.04)
    assert p.after(30, 600) == 0.0
    clock[0] += BUSY_S / 2
    assert p.after(30, 600) == 0.04  # short lines, few of them: a busy stream, gather
    clock[0] += BUSY_S / 2
    assert p.after(30, FLOOD_BYTES) == 0.0  # as many lines, but long ones: read on at once


def test_the_mqtt_source_paces_by_readings_so_a_flood_of_block_payloads_is_never_held_back(clock, monkeypatch):
    """A block payload of 1,000 samples is 1,000 readings: passes of them come as fast as they can, while a busy
    stream of single readings still gathers (no broker needed: the hand-over after a pass of paho's loop)."""
    import numpy as np

    import agent.sources.mqtt as mqtt_source
    from agent.counters import Counters
    from agent.records import Block, Reading
    from agent.settings import MqttSettings, MqttSourceSettings

    slept: list[float] = []
    monkeypatch.setattr(mqtt_source.time, "sleep", slept.append)
    src = mqtt_source.MqttSource(MqttSourceSettings(topics=["s/#"]), MqttSettings(), Counters())
    got: list[object] = []
    src._sink = got.append
    block = Block(np.arange(1000.0), ("x",), np.zeros((1000, 1)), "s1")
    for _ in range(3):
        src._pending.add(block)
        src._hand_over()
        clock[0] += BUSY_S / 2
    assert len(got) == 3 and slept == [], "a pass of one block payload was held back as if it were one reading"
    for k in range(3):
        src._pending.add(Reading(float(k), {"x": 1.0}, "s1"))
        src._hand_over()
        clock[0] += BUSY_S / 2
    assert slept == [0.04] * 3  # single readings close together: gather (the default EDGE_AGENT_SOURCE__GATHER_MS)
