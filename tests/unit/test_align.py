"""Alignment: several sensors at slightly different times → one reading per period, gaps counted, never zeros."""

from __future__ import annotations

import pytest

from agent.align import Aligner
from agent.clean import Cleaner, CleaningPolicy
from agent.counters import Counters
from agent.pipeline import Pipeline
from agent.records import Reading
from tests.helpers import outgoing


def _feed(al: Aligner, readings) -> list[Reading]:
    out: list[Reading] = []
    for r in readings:
        out.extend(al.add(r))
    return out


def _split(ts: float, offsets: dict[str, float], value=lambda ch, t: t):
    """One single-channel reading per channel, each from its own sensor at ts + offset."""
    return [Reading(ts=ts + off, values={ch: value(ch, ts)}, sensor=f"dev-{ch}") for ch, off in offsets.items()]


@pytest.mark.parametrize(
    "offsets, ticks, partial_first",
    [
        ({"a": 0.0, "b": 0.0}, range(10, 20), False),  # the same timestamps on two topics
        ({"a": 0.0, "b": 0.3}, range(10, 20), True),  # b a little later: tick 10 has no b yet
        ({"a": 0.7, "b": 0.2}, range(11, 20), False),  # neither on the grid: the first tick is 11
    ],
)
def test_two_sensors_with_offset_timestamps_make_one_reading_per_period(offsets, ticks, partial_first):
    c = Counters()
    al = Aligner(["a", "b"], 1.0, 0.0, "pump", c)
    stream = sorted((r for t in range(10, 20) for r in _split(float(t), offsets)), key=lambda r: r.ts)
    out = _feed(al, stream) + al.flush()
    assert [r.ts for r in out] == [float(t) for t in ticks]
    assert all(r.sensor == "pump" for r in out)
    assert [set(r.values) for r in out] == [{"a"} if partial_first and i == 0 else {"a", "b"} for i in range(len(out))]
    for r in out:  # the latest value at or before each tick (sample and hold)
        for ch, value in r.values.items():
            assert value == max(t for t in range(10, 20) if t + offsets[ch] <= r.ts)
    assert c.snapshot() == {}


def test_tick_waits_until_data_time_has_passed_it():
    al = Aligner(["a", "b"], 1.0, 0.0, "x", Counters())
    assert al.add(Reading(1.0, {"a": 1.0}, "s1")) == []
    assert al.add(Reading(1.0, {"b": 2.0}, "s2")) == []  # same timestamp, another topic: still in time for tick 1
    out = al.add(Reading(1.2, {"a": 3.0}, "s1"))
    assert [(r.ts, dict(r.values)) for r in out] == [(1.0, {"a": 1.0, "b": 2.0})]


def test_a_channel_older_than_the_tolerance_is_left_out_and_counted_by_the_cleaner_not_zeroed():
    c = Counters()
    al = Aligner(["a", "b"], 1.0, 1.5, "x", c)
    cl = Cleaner(["a", "b"], {}, c, max_hold_s=3.0, missing_counter="gap.missing_channel")
    stream = [Reading(0.0, {"a": 1.0, "b": 5.0}, "s")] + [Reading(float(t), {"a": 1.0}, "s1") for t in range(1, 10)]
    aligned = _feed(al, stream)
    assert [sorted(r.values) for r in aligned[:2]] == [["a", "b"], ["a", "b"]]  # b from 0.0 within 1.5 s
    assert all(sorted(r.values) == ["a"] for r in aligned[2:])
    vectors = [cl.clean(r) for r in aligned]
    kept = [v for v in vectors if v is not None]
    assert all(v.values[1] == 5.0 for v in kept)  # held, never 0
    # b's value of 0.0 is in tick 1 (within the tolerance), then held up to max_hold_s after that tick, then stale
    assert [v.ts for v in kept] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert c.get("gap.missing_channel") == len(aligned) - 2
    assert c.get("repaired.held") == 3 and c.get("reject.stale_channel") == len(aligned) - 5
    assert cl.stale == {"x/b"}
    assert "reject.missing_channel" not in c.snapshot()


@pytest.mark.parametrize(
    "channels, reading, expected",
    [
        (["Current"], Reading(1.0, {"Current": 2.0}, "pump1"), {"Current": 2.0}),  # by name, any sensor
        (["pump1/Current"], Reading(1.0, {"Current": 2.0}, "pump1"), {"pump1/Current": 2.0}),  # sensor/channel
        (["Current"], Reading(1.0, {"value": 2.0}, "Current"), {"Current": 2.0}),  # a bare number on its topic
        (["Current"], Reading(1.0, {"value": 2.0, "x": 1.0}, "Current"), {}),  # ... only when single
        (["Current"], Reading(1.0, {"label": 1.0}, "pump1"), {}),  # not a model channel: ignored
    ],
)
def test_channels_are_matched_by_name_across_sensors(channels, reading, expected):
    al = Aligner(channels, 1.0, 0.0, "x", Counters())
    al.add(reading)
    out = al.flush()
    assert (dict(out[0].values) if out else {}) == expected


def test_silence_skips_ticks_and_the_cleaner_restarts_the_windows():
    c = Counters()
    resets: list[str] = []
    al = Aligner(["a"], 1.0, 0.0, "x", c)
    cl = Cleaner(["a"], {}, c, max_hold_s=5.0, missing_counter="gap.missing_channel", on_reset=resets.append)
    stream = [Reading(float(t), {"a": 1.0}, "s") for t in [*range(0, 5), *range(100, 103)]]
    out = _feed(al, stream) + al.flush()
    assert [r.ts for r in out] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 101.0, 102.0]
    assert c.get("gap.skipped_ticks") == 94  # 6..99
    assert all(cl.clean(r) is not None for r in out)
    assert resets == ["x"] and c.get("gap.time_gap") == 1


def test_per_channel_duplicates_and_out_of_order_are_refused():
    c = Counters()
    al = Aligner(["a", "b"], 1.0, 0.0, "x", c)
    _feed(al, [Reading(1.0, {"a": 1.0}, "s"), Reading(1.0, {"a": 2.0}, "s"), Reading(0.5, {"a": 3.0}, "s"),
               Reading(0.5, {"b": 3.0}, "t")])  # b is new: its first value is fine though late
    assert c.snapshot("reject.") == {"duplicate_ts": 1, "out_of_order": 1}
    assert dict(al.flush()[0].values) == {"a": 1.0, "b": 3.0}


def test_period_must_be_positive():
    with pytest.raises(ValueError):
        Aligner(["a"], 0.0, 0.0, "x", Counters())


# -- in the pipeline, on the real model ------------------------------------------------------------------------


def test_pipeline_aligns_channels_published_on_separate_topics(tmp_path, model, recording):
    """Each channel of the demo recording from its own sensor, a little late; one topic dies for a while."""
    channels = model.sidecar.channels
    offsets = {ch: 0.05 * i for i, ch in enumerate(channels)}
    c = Counters()
    p = Pipeline(model, c, tmp_path, calibration_samples=0, summary_interval_s=1e9,
                 cleaning=CleaningPolicy(align_period_s=1.0, align_tolerance_s=1.5, align_sensor="pump-1"))
    rows = recording[:200]
    dead = range(100, 120)  # Pressure silent for 20 rows
    stale_seen = set()
    scored = []  # (start_ts, end_ts) of every window scored
    for i, r in enumerate(rows):
        for ch in channels:
            if ch == "Pressure" and i in dead:
                continue
            p.process(Reading(r.ts + offsets[ch], {ch: r.values[ch]}, f"dev/{ch}"))
            inf = p.last_inference
            if inf is not None and (not scored or scored[-1] != (inf.window.start_ts, inf.window.end_ts)):
                scored.append((inf.window.start_ts, inf.window.end_ts))
        stale_seen |= p.stale_channels
    assert stale_seen == {"pump-1/Pressure"}
    assert p.stale_channels == set()  # recovered
    s = outgoing(p.finish())[-1].payload
    assert s["gaps"]["missing_channel"] > 0 and s["gaps"]["stale"] == 1
    assert s["rejected"]["stale_channel"] > 0 and s["repaired"]["held"] > 0
    assert s["stale_channels"] == []
    # no window spans the dead stretch: the windows restart after Pressure is back and fill before scoring
    back = rows[dead.stop].ts
    assert not any(a < back - 1.5 and b >= back for a, b in scored)
    after = [w for w in scored if w[1] >= back]
    assert after and after[0][0] >= back - 1.5 and len(after) > 50
    assert s["windows"] == len(scored)


def test_the_generic_detector_takes_its_channels_from_the_aligned_topics_not_the_first_reading(tmp_path):
    """The default model with alignment, each channel a bare number on its own topic (the sensor is the topic's
    last level): its channels are the topics' (Current, Pressure, Flow), gathered over the first GATHER_PERIODS
    periods — not 'value', the key of the first reading alone, which every topic then overwrote."""
    from agent.gather import GATHER_PERIODS
    from agent.bundled import bundled_model
    from agent.detectors import open_model

    model = open_model(bundled_model("generic"))
    c = Counters()
    p = Pipeline(model, c, tmp_path, calibration_samples=50, summary_interval_s=1e9,
                 cleaning=CleaningPolicy(align_period_s=1.0, align_sensor="pump-1"))
    for i in range(120):
        for j, ch in enumerate(("Current", "Pressure", "Flow")):
            p.process(Reading(1000.0 + i + 0.1 * j, {"value": float(j + 1) + 0.01 * (i % 7)}, ch))
    assert list(p.model.sidecar.channels) == ["Current", "Pressure", "Flow"]
    assert not p.calibrating  # the aligned readings (every channel filled) made the teach-in
    assert c.get("reject.no_channels") <= 3 * (GATHER_PERIODS + 1)  # the readings that named the channels
    assert c.get("gap.missing_channel") <= 2  # the first tick after, before every topic spoke again


@pytest.mark.parametrize("layout, expected", [
    ("bare numbers, one topic per channel", ["Current", "Pressure", "Flow"]),
    ("one key per topic, one device", ["Current", "Pressure", "Flow"]),
    ("several keys per reading", ["Current", "Pressure", "Flow"]),
])
def test_aligned_channels_follow_the_topic_layout(tmp_path, layout, expected):
    from agent.bundled import bundled_model
    from agent.detectors import open_model

    p = Pipeline(open_model(bundled_model("generic")), Counters(), tmp_path, calibration_samples=50,
                 summary_interval_s=1e9, cleaning=CleaningPolicy(align_period_s=1.0, align_sensor="pump-1"))
    for i in range(80):
        for j, ch in enumerate(("Current", "Pressure", "Flow")):
            v = float(j + 1) + 0.01 * (i % 7)
            if layout.startswith("bare"):
                r = Reading(1000.0 + i + 0.1 * j, {"value": v}, ch)
            elif layout.startswith("one key"):
                r = Reading(1000.0 + i + 0.1 * j, {ch: v}, "pump1")  # plant/pump1/<ch>, sensor pattern plant/{sensor}/+
            else:
                if j:
                    continue
                r = Reading(1000.0 + i, {"Current": v, "Pressure": v + 1, "Flow": v + 2}, "pump1")
            p.process(r)
    assert list(p.model.sidecar.channels) == expected
    assert not p.calibrating


# -- gathering a generic detector's channels (agent.gather) ----------------------------------------------------


class _Clock:
    """The pipeline's clock (arrival time), moved by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _generic(tmp_path, clock, counters=None, live=False) -> Pipeline:
    from agent.bundled import bundled_model
    from agent.detectors import open_model

    return Pipeline(open_model(bundled_model("generic")), counters or Counters(), tmp_path, calibration_samples=50,
                    summary_interval_s=1e9, clock=clock, live=live,
                    cleaning=CleaningPolicy(align_period_s=1.0, align_tolerance_s=12.0, align_sensor="pump-1"))


@pytest.mark.parametrize("arrival", ["live", "replay"])
def test_a_topic_slower_than_the_first_is_gathered_too(tmp_path, caplog, arrival):
    """Current every second, Pressure every 10 s, first 5.5 s after Current: gathering lasts until every topic heard
    has spoken twice and for several periods of the slowest, so Pressure is a channel. It used to end when Current
    spoke again, and Pressure's bare number then collapsed with Current's into one channel `value`. The same when
    the readings arrive all at once (a replay: data time counts)."""
    import logging

    caplog.set_level(logging.INFO, logger="agent.pipeline")
    clock = _Clock()
    p = _generic(tmp_path, clock, live=arrival == "live")
    for i in range(120):
        clock.t = float(i) if arrival == "live" else 0.0
        p.process(Reading(1000.0 + i, {"value": 1.0 + 0.01 * (i % 7)}, "Current"))
        if i % 10 == 5:
            clock.t += 0.5 if arrival == "live" else 0.0
            p.process(Reading(1000.5 + i, {"value": 2.0 + 0.01 * (i % 3)}, "Pressure"))
    assert list(p.model.sidecar.channels) == ["Current", "Pressure"]
    line = next(r.getMessage() for r in caplog.records if "channels from the first readings" in r.getMessage())
    assert "Current, Pressure;" in line and "Current (value ×" in line and "Pressure (value ×" in line  # heard


@pytest.mark.parametrize("first_ts", [1000.0 - 3600, 1000.0 - 86400 * 365])
def test_a_stale_first_reading_does_not_end_the_gathering(tmp_path, first_ts):
    """Flow's first reading is an hour (a year) old — a stale message, a device clock set wrong — and then it speaks
    in time like the others: its timestamp does not count, so the gathering does not end at the next reading with
    only two topics heard."""
    clock = _Clock()
    p = _generic(tmp_path, clock, live=True)
    p.process(Reading(first_ts, {"value": 3.0}, "Flow"))
    for i in range(60):
        clock.t = float(i + 1)
        for j, ch in enumerate(("Current", "Pressure", "Flow")):
            p.process(Reading(1000.0 + i + 0.1 * j, {"value": float(j + 1) + 0.01 * (i % 7)}, ch))
    assert list(p.model.sidecar.channels) == ["Flow", "Current", "Pressure"]


@pytest.mark.parametrize("arrival", ["live", "replay"])
def test_a_far_off_reading_of_a_topic_heard_once_neither_blocks_nor_joins_the_channels(tmp_path, caplog, arrival):
    """A single reading an hour ahead (a device with a wrong clock, heard once): the gathering is not held for ever
    waiting for data time to pass it; it ends at its maximum and leaves that topic out, saying so."""
    import logging

    from agent.gather import GATHER_MAX_S

    caplog.set_level(logging.INFO, logger="agent.pipeline")
    clock = _Clock()
    p = _generic(tmp_path, clock, live=arrival == "live")
    p.process(Reading(1000.0 + 3600, {"value": 3.0}, "Flow"))
    for i in range(int(GATHER_MAX_S) + 60):
        clock.t = float(i + 1) if arrival == "live" else 0.0
        for j, ch in enumerate(("Current", "Pressure")):
            p.process(Reading(1000.0 + i + 0.1 * j, {"value": float(j + 1) + 0.01 * (i % 7)}, ch))
    assert list(p.model.sidecar.channels) == ["Current", "Pressure"]
    assert "left out Flow/value" in caplog.text


@pytest.mark.parametrize("slow_period, ends_at, channels", [
    (None, 10.0, ["Current"]),  # one topic: GATHER_PERIODS periods
    (2.0, 10.0, ["Current", "Slow"]),  # 3 of its periods are within the 10
    (10.0, 30.0, ["Current", "Slow"]),  # heard at 0.5 and 10.5: 3 of its periods
    (200.0, 300.0, ["Current", "Slow"]),  # heard twice, 3 periods would be 600 s: the maximum
    (400.0, 300.0, ["Current"]),  # heard once by the maximum: left out
])
@pytest.mark.parametrize("bare", [False, True])
def test_gathering_lasts_ten_periods_then_three_of_the_slowest_heard_at_most_the_maximum(slow_period, ends_at,
                                                                                          channels, bare):
    """Current every second, Slow every ``slow_period`` from 0.5 s: keys of one device (plant/pump1/<key>, sensor
    pump1: the topics share the sensor id), or bare numbers on topics named like the channel."""
    from agent.gather import ChannelGather

    def reading(ts: float, ch: str) -> Reading:
        return Reading(ts, {"value": 1.0}, ch) if bare else Reading(ts, {ch: 1.0}, "pump1")

    clock = _Clock()
    g = ChannelGather(1.0, clock)
    stream = [(float(i), reading(1000.0 + i, "Current")) for i in range(400)]
    if slow_period is not None:
        stream += [(0.5 + k * slow_period, reading(1000.5 + k * slow_period, "Slow"))
                   for k in range(int(400 / slow_period))]
    for at, r in sorted(stream, key=lambda x: x[0]):
        clock.t = at
        got = g.add(r)
        if got is not None:
            break
    # a bare number: the channel is 'value' when one topic alone sent it, else named after the topics (Slow too,
    # heard once and left out: 'value' would take its readings too)
    assert (clock.t, got) == (ends_at, channels if not bare or slow_period else ["value"])



# -- a clock step of the merged stream -------------------------------------------------------------------------


def _stepping(layout: str, step_s: float, before: int = 20, after: int = 20) -> list[Reading]:
    """Channels a and b of one device whose clock steps by ``step_s`` after ``before`` seconds; each value says the
    side of the step (1.0 before, 2.0 after)."""
    offsets = {"same ts": {"a": 0.0, "b": 0.0}, "b later": {"a": 0.0, "b": 0.3},
               "b earlier": {"a": 0.3, "b": 0.0}}.get(layout)
    out = []
    for i in range(before + after):
        side = 2.0 if i >= before else 1.0
        ts = 1000.0 + i + (step_s if i >= before else 0.0)
        if offsets is None:  # one topic carrying both
            out.append(Reading(ts, {"a": side, "b": side}, "dev"))
        else:
            out.extend(Reading(ts + off, {ch: side}, f"dev-{ch}") for ch, off in offsets.items())
    return out


@pytest.mark.parametrize("step_s", [-3600.0, 3600.0])
@pytest.mark.parametrize("layout", ["one topic", "same ts", "b later", "b earlier"])
def test_a_clock_step_flushes_the_ticks_before_it_and_restarts_on_the_new_time(layout, step_s):
    """The device's clock steps an hour back (forward): the ticks before the step are all emitted, the aligner then
    starts again on the new time after TIME_STEP_READINGS far readings (the first ones refused), and no tick mixes
    values from both sides. It used to drop the last tick before the step, and never to take the step at all when
    the topics' timestamps were equal or not increasing across topics (every reading refused, for ever back). A
    topic stamping the same time as the other, or a little behind it, keeps the run of far readings going."""
    from agent.timebase import TIME_STEP_READINGS

    c = Counters()
    clock = _Clock()
    al = Aligner(["a", "b"], 1.0, 0.0, "x", c, max_time_jump_s=600.0, clock=clock)
    out = []
    for r in _stepping(layout, step_s):
        clock.t = r.ts - 1000.0 if r.values["a" if "a" in r.values else "b"] == 1.0 else clock.t + 0.5
        out += al.add(r)
    out += al.flush()
    assert c.get("gap.time_step") == 1
    # a step takes TIME_STEP_READINGS far timestamps going forward: the other topic's reading at the same time or
    # just behind each of them is refused too, without counting towards the step
    beside = 2 if layout in ("same ts", "b earlier") else 1
    assert c.get("reject.past_ts" if step_s < 0 else "reject.future_ts") == beside * (TIME_STEP_READINGS - 1)
    assert all(len(set(r.values.values())) == 1 for r in out)  # one side per tick
    before = [r.ts for r in out if 1.0 in r.values.values()]
    after = [r.ts - step_s for r in out if 2.0 in r.values.values()]
    first = 1001.0 if layout == "b earlier" else 1000.0
    assert before == [first + i for i in range(int(1020 - first))]  # every tick up to 1019, the last one too
    assert after == [after[0] + i for i in range(len(after))] and after[-1] == 1039.0
    assert after[0] <= 1020 + TIME_STEP_READINGS  # restarted a few readings after the step
    assert len(out) == len(before) + len(after)


def test_after_the_aligners_clock_step_the_cleaner_takes_the_new_time_at_once(tmp_path):
    """In the pipeline: the aligner takes the step (counted once), the cleaner starts the merged stream's time base,
    held values and windows again from its first tick after it — not after refusing TIME_STEP_READINGS - 1 more
    aligned readings as past_ts and counting the step a second time; no window spans the step."""
    from agent.bundled import bundled_model
    from agent.detectors import open_model
    from agent.timebase import TIME_STEP_READINGS

    c = Counters()
    clock = _Clock()
    p = Pipeline(open_model(bundled_model("generic")), c, tmp_path, calibration_samples=50, summary_interval_s=1e9,
                 channels=["a", "b"], clock=clock,
                 cleaning=CleaningPolicy(align_period_s=1.0, align_sensor="x", max_time_jump_s=600.0))
    windows = set()
    for i in range(200):
        clock.t = float(i)
        ts = 1000.0 + i - (3600.0 if i >= 100 else 0.0)
        p.process(Reading(ts, {"a": 1.0 + 0.01 * (i % 7), "b": 2.0 + 0.01 * (i % 5)}, "dev"))
        if p.last_inference is not None:
            windows.add((p.last_inference.window.start_ts, p.last_inference.window.end_ts))
    assert c.get("gap.time_step") == 1
    assert c.get("reject.past_ts") == TIME_STEP_READINGS - 1
    assert windows and all(0 <= end - start < 100 for start, end in windows)
    assert any(end < 0 for _, end in windows)  # scored again after the step


@pytest.mark.parametrize("good_topics", [2, 5])
def test_one_device_with_a_wrong_clock_on_several_topics_does_not_take_over_the_merged_stream(good_topics):
    """One device an hour behind publishes 5 keys, a topic each, all with the same timestamp (plant/{sensor}/+):
    equal far timestamps are one reading's worth of a step, not five, so its readings are refused for ever and the
    good topics keep the ticks. They used to count 5 towards a step: the wrong device took the stream over (the
    good ones then refused as future_ts), or, beside 5 good topics, the stream flipped every period, no tick out."""
    good = [f"g{i}" for i in range(good_topics)]
    wrong = [f"w{i}" for i in range(5)]
    c = Counters()
    clock = _Clock()
    al = Aligner(good + wrong, 1.0, 0.0, "merged", c, max_time_jump_s=600.0, clock=clock)
    out = []
    for i in range(60):
        clock.t = float(i)
        out += _feed(al, [Reading(1000.0 + i + 0.1, {k: 1.0}, "good") for k in good])
        out += _feed(al, [Reading(1000.0 + i - 3600 + 0.2, {k: 2.0}, "wrong") for k in wrong])
    out += al.flush()
    assert c.get("gap.time_step") == 0
    assert c.get("reject.past_ts") == 5 * 60 and c.get("reject.future_ts") == 0
    assert [r.ts for r in out] == [1001.0 + i for i in range(59)]
    assert all(set(r.values) == set(good) for r in out)
