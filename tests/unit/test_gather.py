"""Gathering a generic detector's channels with alignment (agent.gather): found in review of the gathering rule."""

from __future__ import annotations

import pytest

from agent.align import Aligner
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


def test_a_replay_sampled_slower_than_the_maximum_still_ends_the_gathering():
    """A recording of two topics sampled every 6 min, replayed (the readings arrive at once): every step is longer
    than the gathering's maximum (300 s), which used to leave it out of the data time for good, so the gathering
    never ended and every reading of the file was refused (no_channels). A long step counts once it is the value's
    cadence (the same as its step before): the gathering ends at its third sample."""
    g = ChannelGather(5.0, lambda: 0.0)
    got = None
    for i in range(2000):
        for s, off in (("Current", 0.0), ("Pressure", 1.0)):
            got = got or g.add(Reading(1e9 + 360.0 * i + off, {"value": 1.0}, s))
        if got:
            break
    assert (i, got) == (2, ["Current", "Pressure"])


def test_a_single_long_step_of_a_replay_is_not_its_cadence():
    """One far-off stamp (a stale first message) then a topic every second: that step is not repeated, so it does
    not count and the gathering lasts its 10 periods of data time."""
    g = ChannelGather(1.0, lambda: 0.0)
    assert g.add(Reading(1000.0 - 3600, {"value": 1.0}, "Flow")) is None
    got = None
    for i in range(30):
        for s in ("Current", "Flow"):
            got = got or g.add(Reading(1000.0 + i, {"value": 1.0}, s))
        if got:
            break
    assert (i, got) == (10, ["Flow", "Current"])


@pytest.mark.parametrize("b_heard", ["once", "after"])
def test_a_bare_number_topic_that_is_not_a_channel_does_not_write_into_the_kept_ones(b_heard):
    """A sends a bare number every second; B one every 400 s, heard once in the gathering (left out) or first after
    it. B's readings are not a channel's: they used to fill the channel `value` (any sensor's bare number matched
    it), overwriting A's. Now the channel is named from everyone who sent that name (A's, when B was heard too), it
    takes A's values only, and B's readings are counted (reject.not_a_channel)."""
    clock = _Clock()
    g = ChannelGather(1.0, clock)
    stream = [(float(i), Reading(float(i), {"value": 1.0}, "A")) for i in range(400)]
    if b_heard == "once":
        stream.append((5.0, Reading(5.0, {"value": 42.0}, "B")))
    got = _gather(g, clock, stream)
    assert got == (["A"] if b_heard == "once" else ["value"])
    c = Counters()
    al = Aligner(got, 1.0, 1.5, "merged", c, sources=g.sources)
    out = []
    for k in range(3):
        out += al.add(Reading(1000 + k + 0.2, {"value": 1.0}, "A"))
        out += al.add(Reading(1000 + k + 0.5, {"value": 999.0}, "B"))
    out += al.flush()
    assert [r.values for r in out] == [{got[0]: 1.0}] * 2  # ticks 1001 and 1002
    assert c.get("reject.not_a_channel") == 3


def test_two_devices_sending_the_same_keys_on_a_topic_each_get_a_channel_per_device_and_key():
    """plant/{sensor}/+ with pump1 and pump2 each publishing Current and Pressure on a topic of their own: the
    channels are pump1/Current, pump2/Current, pump1/Pressure, pump2/Pressure — not pump1 and pump2, each mixing
    the device's Current and Pressure."""
    clock = _Clock()
    g = ChannelGather(1.0, clock)
    stream = [(float(i), Reading(1000.0 + i, {k: v}, s)) for i in range(30) for s in ("pump1", "pump2")
              for k, v in (("Current", 10.0), ("Pressure", 500.0))]
    got = _gather(g, clock, stream)
    assert got == ["pump1/Current", "pump2/Current", "pump1/Pressure", "pump2/Pressure"]
    c = Counters()
    al = Aligner(got, 1.0, 0.0, "m", c, sources=g.sources)
    out = []
    for j in range(3):
        for s, base in (("pump1", 0.0), ("pump2", 1.0)):
            for k, v in (("Current", 10.0), ("Pressure", 500.0)):
                out += al.add(Reading(2000.0 + j + 0.1, {k: v + base}, s))
    out += al.flush()
    assert out and all(r.values == {"pump1/Current": 10.0, "pump2/Current": 11.0, "pump1/Pressure": 500.0,
                                    "pump2/Pressure": 501.0} for r in out)


def test_in_the_pipeline_a_bare_number_topic_left_out_is_counted_not_taken_for_the_kept_one(tmp_path):
    """The daemon's way: A every second, B once in the gathering, then every 400 s: the channel is A's, and B's
    readings are counted (reject.not_a_channel) instead of filling it."""
    from agent.bundled import bundled_model
    from agent.clean import CleaningPolicy
    from agent.detectors import open_model
    from agent.pipeline import Pipeline

    c = Counters()
    clock = _Clock()
    p = Pipeline(open_model(bundled_model("generic")), c, tmp_path, calibration_samples=50, summary_interval_s=1e9,
                 clock=clock, live=True, cleaning=CleaningPolicy(align_period_s=1.0, align_sensor="pump-1"))
    for i in range(1000):
        clock.t = float(i)
        p.process(Reading(1000.0 + i, {"value": 1.0 + 0.01 * (i % 7)}, "A"))
        if i % 400 == 5:
            p.process(Reading(1000.5 + i, {"value": 999.0}, "B"))
    assert list(p.model.sidecar.channels) == ["A"]
    assert c.get("reject.not_a_channel") == 2  # B at 405 and 805 s


def _machine(p, clock: _Clock, start: int, n: int, late: bool = False) -> None:
    """M sends two keys, F a bare number (its channel: ``value``); T, ``late``, a bare number first heard now."""
    for i in range(start, start + n):
        clock.t = float(i)
        p.process(Reading(1000.0 + i, {"x": 1.0 + 0.01 * (i % 7), "y": 2.0 + 0.01 * (i % 5)}, "M"))
        p.process(Reading(1000.2 + i, {"value": 3.0 + 0.01 * (i % 3)}, "F"))
        if late:
            p.process(Reading(1000.4 + i, {"value": 99.0}, "T"))


def _pipeline(tmp_path, samples: int, c: Counters, clock: _Clock):
    from agent.bundled import bundled_model
    from agent.clean import CleaningPolicy
    from agent.detectors import open_model
    from agent.pipeline import Pipeline

    return Pipeline(open_model(bundled_model("generic")), c, tmp_path, calibration_samples=samples,
                    summary_interval_s=1e9, clock=clock, live=True,
                    cleaning=CleaningPolicy(align_period_s=1.0, align_sensor="pump-1"))


@pytest.mark.parametrize("stored", ["calibration.json", "teach-in.npz"])
@pytest.mark.parametrize("before", [False, True])
def test_the_sensors_of_gathered_channels_are_kept_with_them_across_a_restart(tmp_path, stored, before):
    """The channels gathered are stored with the teach-in (done: calibration.json; running: teach-in.npz), and the
    sensors of each with them: after a restart T's bare number is counted, not written into F's ``value``. A file
    of the version before (no sensors kept: ``before``) still loads, with the behaviour of then (T fills it)."""
    import json

    import numpy as np

    clock = _Clock()
    p = _pipeline(tmp_path, 50 if stored == "calibration.json" else 10**6, Counters(), clock)
    _machine(p, clock, 0, 120)
    assert list(p.model.sidecar.channels) == ["x", "y", "value"]
    if stored == "teach-in.npz":
        assert p.calibrator.checkpoint()
    assert p.calibrator.active is (stored == "teach-in.npz")
    path = tmp_path / stored
    if before:  # as the version before wrote it
        if stored == "calibration.json":
            data = json.loads(path.read_text())
            assert data.pop("sources") == {"x": ["M"], "y": ["M"], "value": ["F"]}
            path.write_text(json.dumps(data))
        else:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files if k != "sources"}
            with open(path, "wb") as f:
                np.savez(f, **arrays)

    c = Counters()
    p = _pipeline(tmp_path, 50 if stored == "calibration.json" else 10**6, c, clock)
    assert list(p.model.sidecar.channels) == ["x", "y", "value"]
    assert p.calibrator.resumed if stored == "teach-in.npz" else p.calibrator.result is not None  # not taught again
    _machine(p, clock, 1000, 30, late=True)
    assert c.get("reject.not_a_channel") == (0 if before else 30)
    assert p.gather.sources == (None if before else {"x": ["M"], "y": ["M"], "value": ["F"]})
