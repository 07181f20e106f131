"""Cleaning: every rejection counted by reason."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from agent.clean import Cleaner
from agent.counters import Counters
from agent.records import Reading


@pytest.mark.parametrize(
    "values, reason",
    [
        ({"a": 1.0, "b": "abc"}, "non_numeric"),
        ({"a": 1.0, "b": float("nan")}, "not_finite"),
        ({"a": float("inf"), "b": 1.0}, "not_finite"),
        ({"a": 1.0, "b": "inf"}, "not_finite"),
        ({"a": 1.0}, "missing_channel"),
        ({"a": 1.0, "b": 1000.0}, "out_of_range"),
        ({"a": 1.0, "b": -0.5}, "out_of_range"),
        ({"a": True, "b": 1.0}, "non_numeric"),
    ],
)
def test_rejections_are_counted_by_reason(values, reason):
    c = Counters()
    cl = Cleaner(["a", "b"], {"b": (0.0, 100.0)}, c)
    assert cl.clean(Reading(ts=1.0, values=values)) is None
    assert c.snapshot("reject.") == {reason: 1}


def test_good_reading_in_channel_order_and_extra_columns_ignored():
    c = Counters()
    cl = Cleaner(["b", "a"], {}, c)
    v = cl.clean(Reading(ts=1.0, values={"a": "1.5", "b": 2, "label": "x"}, sensor="s"))
    assert v is not None and list(v.values) == [2.0, 1.5] and v.sensor == "s"
    assert c.snapshot("reject.") == {}


def test_duplicate_and_out_of_order_timestamps():
    c = Counters()
    cl = Cleaner(["a"], {}, c)
    assert cl.clean(Reading(ts=2.0, values={"a": 1})) is not None
    assert cl.clean(Reading(ts=2.0, values={"a": 1})) is None
    assert cl.clean(Reading(ts=1.0, values={"a": 1})) is None
    assert cl.clean(Reading(ts=1.0, values={"a": 1}, sensor="other")) is not None
    assert c.snapshot("reject.") == {"duplicate_ts": 1, "out_of_order": 1}


# -- valid ranges from the settings ----------------------------------------------------------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

from agent.clean import parse_ranges  # noqa: E402


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("Current:0:50,Pressure:-1:10", {"Current": (0.0, 50.0), "Pressure": (-1.0, 10.0)}),
        (" Volume Flow RateRMS : 0 : 1e3 ", {"Volume Flow RateRMS": (0.0, 1000.0)}),
        ("a::5", {"a": (float("-inf"), 5.0)}),
        ("a:-5:", {"a": (-5.0, float("inf"))}),
        ("pump/x:1:2", {"pump/x": (1.0, 2.0)}),
        ("odd:name:1:2", {"odd:name": (1.0, 2.0)}),
    ],
)
def test_parse_ranges(text, expected):
    assert parse_ranges(text) == expected


@pytest.mark.parametrize("text", ["Current", "Current:1", ":0:1", "a:x:1", "a:5:1", "a:0:1,a:0:2", "a:nan:1"])
def test_parse_ranges_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_ranges(text)


@pytest.mark.parametrize(
    "sidecar, configured, value, ok",
    [
        ({"b": (0.0, 100.0)}, {}, 150.0, False),  # the sidecar's range
        ({"b": (0.0, 100.0)}, {"b": (0.0, 200.0)}, 150.0, True),  # the configured range overrides it
        ({"b": (0.0, 100.0)}, {"b": (0.0, 10.0)}, 50.0, False),
        ({}, {"b": (-1.0, 1.0)}, -2.0, False),  # and adds ranges the sidecar lacks
        ({}, {"b": (-1.0, 1.0)}, 0.5, True),
    ],
)
def test_configured_ranges_override_and_add_to_the_sidecar(sidecar, configured, value, ok):
    c = Counters()
    cl = Cleaner(["a", "b"], sidecar, c, ranges=configured)
    assert (cl.clean(Reading(ts=1.0, values={"a": 0.0, "b": value})) is not None) is ok
    assert c.snapshot("reject.") == ({} if ok else {"out_of_range": 1})
    cl.ranges_from(sidecar)  # a model swap keeps the configured ranges on top
    assert (cl.clean(Reading(ts=2.0, values={"a": 0.0, "b": value})) is not None) is ok


def test_configured_range_for_an_unknown_channel_is_a_warning(caplog):
    Cleaner(["a"], {}, Counters(), ranges={"nope": (0.0, 1.0)})
    assert "nope" in caplog.text


# -- hold last value, staleness, holes in time -----------------------------------------------------------------


class Resets:
    def __init__(self):
        self.sensors: list[str] = []

    def __call__(self, sensor: str) -> None:
        self.sensors.append(sensor)


def _cleaner(max_hold_s=5.0, **kw):
    c, resets = Counters(), Resets()
    return Cleaner(["a", "b"], {"b": (0.0, 100.0)}, c, max_hold_s=max_hold_s, on_reset=resets, **kw), c, resets


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"a": 2.0}, "missing_channel"),
        ({"a": 2.0, "b": "err"}, "non_numeric"),
        ({"a": 2.0, "b": float("nan")}, "not_finite"),
        ({"a": 2.0, "b": 1000.0}, "out_of_range"),
    ],
)
def test_a_bad_value_holds_the_last_good_one_within_the_limit(bad, reason):
    cl, c, resets = _cleaner()
    assert cl.clean(Reading(ts=0.0, values={"a": 1.0, "b": 7.0})) is not None
    for ts in (1.0, 3.0, 5.0):  # up to max_hold_s after the last good value
        v = cl.clean(Reading(ts=ts, values=bad))
        assert v is not None and list(v.values) == [2.0, 7.0]
    assert c.snapshot("reject.") == {reason: 3}
    assert c.snapshot("repaired.") == {"held": 3}
    assert cl.stale == set() and resets.sensors == []


def test_past_the_limit_the_channel_is_stale_windows_reset_and_it_recovers():
    cl, c, resets = _cleaner()
    for ts in range(0, 3):
        assert cl.clean(Reading(ts=float(ts), values={"a": 1.0, "b": 7.0}, sensor="p1")) is not None
    for ts in range(3, 8):  # b last good at 2.0: held up to 7.0
        assert cl.clean(Reading(ts=float(ts), values={"a": 1.0}, sensor="p1")) is not None
    assert resets.sensors == []
    for ts in range(8, 12):  # stale from 8.0 on: dropped, windows reset once
        assert cl.clean(Reading(ts=float(ts), values={"a": 1.0}, sensor="p1")) is None
    assert cl.stale == {"p1/b"}
    assert resets.sensors == ["p1"]
    assert c.get("reject.stale_channel") == 4 and c.get("gap.stale") == 1
    assert c.get("repaired.held") == 5 and c.get("reject.missing_channel") == 9
    # a good value again: the reading goes on, the channel is no longer stale, no second reset (windows empty)
    v = cl.clean(Reading(ts=12.0, values={"a": 1.0, "b": 8.0}, sensor="p1"))
    assert v is not None and list(v.values) == [1.0, 8.0]
    assert cl.stale == set() and resets.sensors == ["p1"] and c.get("gap.time_gap") == 0


def test_a_channel_never_seen_goes_stale_after_the_limit():
    cl, c, resets = _cleaner()
    assert cl.clean(Reading(ts=0.0, values={"a": 1.0})) is None
    assert c.snapshot("reject.") == {"missing_channel": 1} and cl.stale == set()  # not yet: maybe it is late
    assert cl.clean(Reading(ts=6.0, values={"a": 1.0})) is None
    assert cl.stale == {"b"} and c.get("reject.stale_channel") == 1
    assert resets.sensors == []  # nothing accepted yet: no windows to reset


def test_channels_arriving_in_turns_fill_each_other_in():
    cl, c, _ = _cleaner()
    assert cl.clean(Reading(ts=0.0, values={"a": 1.0})) is None  # b never seen yet
    v = cl.clean(Reading(ts=0.5, values={"b": 2.0}))  # a from 0.0 held
    assert v is not None and list(v.values) == [1.0, 2.0]
    v = cl.clean(Reading(ts=1.0, values={"a": 3.0}))
    assert v is not None and list(v.values) == [3.0, 2.0]


def test_stale_channels_recover_one_after_the_other():
    cl, c, _ = _cleaner()
    cl.clean(Reading(ts=0.0, values={"a": 1.0, "b": 1.0}))
    assert cl.clean(Reading(ts=10.0, values={})) is None
    assert cl.stale == {"a", "b"}
    assert cl.clean(Reading(ts=11.0, values={"a": 1.0})) is None  # a recovers, b still stale
    assert cl.stale == {"b"}
    assert cl.clean(Reading(ts=12.0, values={"b": 1.0})) is not None  # a held from 11.0
    assert cl.stale == set()


@pytest.mark.parametrize(
    "times, resets_expected",
    [
        ([0, 1, 2, 3, 4, 5], 0),
        ([0, 1, 2, 7.0], 0),  # exactly max_hold_s: still no hole
        ([0, 1, 2, 7.5, 8.5], 1),  # a hole of 5.5 s
        ([0, 1, 240, 241, 600], 2),  # a recording with two holes
    ],
)
def test_a_hole_in_time_resets_the_windows(times, resets_expected):
    cl, c, resets = _cleaner()
    for ts in times:
        assert cl.clean(Reading(ts=float(ts), values={"a": 1.0, "b": 1.0}, sensor="s")) is not None
    assert resets.sensors == ["s"] * resets_expected
    assert c.snapshot("gap.") == ({"time_gap": resets_expected} if resets_expected else {})
    assert c.snapshot("reject.") == {}


def test_hold_off_keeps_the_old_behaviour():
    cl, c, resets = _cleaner(max_hold_s=0.0)
    cl.clean(Reading(ts=0.0, values={"a": 1.0, "b": 1.0}))
    assert cl.clean(Reading(ts=1.0, values={"a": 1.0})) is None
    assert cl.clean(Reading(ts=1000.0, values={"a": 1.0, "b": 1.0})) is not None  # no hole handling either
    assert c.snapshot("reject.") == {"missing_channel": 1} and resets.sensors == [] and cl.stale == set()


def test_a_silent_sensor_is_reported_stale_until_it_speaks():
    now = [0.0]
    cl, c, resets = _cleaner(clock=lambda: now[0])
    cl.clean(Reading(ts=100.0, values={"a": 1.0, "b": 1.0}, sensor="s"))
    now[0] = 4.0
    cl.check_silence()
    assert cl.stale == set()
    now[0] = 6.0
    cl.check_silence()
    assert cl.stale == {"s/a", "s/b"}
    assert resets.sensors == []  # status only: the next reading's timestamp decides about the windows
    assert cl.clean(Reading(ts=101.0, values={"a": 1.0, "b": 1.0}, sensor="s")) is not None
    assert cl.stale == set()


def test_bad_timestamp_is_counted():
    c = Counters()
    assert Cleaner(["a"], {}, c).clean(Reading(ts=float("nan"), values={"a": 1.0})) is None
    assert c.snapshot("reject.") == {"bad_timestamp": 1}


# -- spikes ----------------------------------------------------------------------------------------------------

BASE = [10.0, 10.2, 9.9, 10.1, 10.0, 9.8, 10.1, 10.0, 10.2, 9.9]


@pytest.mark.parametrize(
    "series, repaired_at",
    [
        (BASE + [50.0] + BASE, [10]),  # an isolated spike
        (BASE + [50.0, 51.0] + BASE, [10, 11]),  # a two-sample burst
        (BASE + [-30.0] + BASE, [10]),  # downwards too
        (BASE + BASE, []),  # noise is not a spike
    ],
)
def test_hampel_repairs_spikes_with_the_median(series, repaired_at):
    cl, c, _ = _cleaner(spike_window=7)
    out = [cl.clean(Reading(ts=float(i), values={"a": x, "b": 1.0})) for i, x in enumerate(series)]
    assert all(v is not None for v in out)
    got = [i for i, (v, x) in enumerate(zip(out, series)) if v.values[0] != x]
    assert got == repaired_at
    for i in repaired_at:
        assert 9.8 <= out[i].values[0] <= 10.2
    assert c.snapshot("repaired.") == ({"spike": len(repaired_at)} if repaired_at else {})
    assert c.snapshot("reject.") == {}


def test_a_sustained_step_passes_the_spike_filter():
    cl, c, _ = _cleaner(spike_window=7)
    series = BASE + [50.0] * 20
    out = [cl.clean(Reading(ts=float(i), values={"a": x, "b": 1.0})).values[0] for i, x in enumerate(series)]
    # the first half window of the step is taken for spikes, then the median moves and the step goes through
    assert out[-16:] == [50.0] * 16
    assert c.get("repaired.spike") <= 4


def test_spike_filter_off_passes_everything():
    cl, c, _ = _cleaner()
    series = BASE + [50.0] + BASE
    out = [cl.clean(Reading(ts=float(i), values={"a": x, "b": 1.0})).values[0] for i, x in enumerate(series)]
    assert out == series and c.snapshot("repaired.") == {}


# -- property: never raises, counters only grow ----------------------------------------------------------------

_values = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["1.5", " 2 ", "nan", "-inf", "1e400", ""]), st.integers(-10**6, 10**6), st.booleans(),
)
_readings = st.lists(
    st.tuples(
        st.floats(-1e3, 1e3, allow_nan=False) | st.sampled_from([float("nan"), float("inf")]),
        st.sampled_from(["", "s1", "s2"]),
        st.dictionaries(st.sampled_from(["a", "b", "c", "x"]), _values, max_size=4),
    ),
    max_size=40,
)


@hsettings(max_examples=300, deadline=None)
@given(_readings, st.sampled_from([0.0, 2.0, 5.0]), st.sampled_from([0, 3, 7]), st.sampled_from([0.0, 3.0, 600.0]),
       st.sampled_from([0, 2]))
def test_cleaner_never_raises_and_counters_only_grow(readings, max_hold_s, spike_window, max_jump_s, max_sensors):
    import math

    c = Counters()
    cl = Cleaner(["a", "b", "c"], {"b": (0.0, 100.0)}, c, max_hold_s=max_hold_s, spike_window=spike_window,
                 ranges={"c": (-5.0, 5.0)}, on_reset=lambda s: None, max_time_jump_s=max_jump_s,
                 max_sensors=max_sensors)
    before: dict[str, int] = {}
    for ts, sensor, values in readings:
        v = cl.clean(Reading(ts=ts, values=values, sensor=sensor))
        if v is not None:
            assert v.values.shape == (3,) and all(math.isfinite(x) for x in v.values)
            assert 0 <= v.values[1] <= 100 and -5 <= v.values[2] <= 5
        now = c.snapshot()
        assert all(now.get(k, 0) >= n for k, n in before.items())
        before = now
        assert isinstance(cl.stale, frozenset)
        # the stale view kept up change by change equals the one computed from scratch
        assert cl.stale == {
            f"{sensor}/{cl.channels[i]}" if sensor else cl.channels[i]
            for sensor, st in cl._sensors.items() for i in (range(3) if st.silent else st.stale)
        }


# -- in the pipeline, on the real model ------------------------------------------------------------------------


def test_pipeline_holds_a_bad_value_and_counts_it_in_the_summary(tmp_path, model, recording):
    from agent.pipeline import Pipeline

    p = Pipeline(model, Counters(), tmp_path)
    bad = [
        Reading(recording[0].ts, {**recording[0].values, "Current": "n/a"}),  # nothing to hold yet: dropped
        Reading(recording[1].ts, {**recording[1].values, "Pressure": float("nan")}),  # held
    ]
    for r in bad + recording[2:50]:
        p.process(r)
    s = outgoing(p.finish())[0].payload
    assert s["rejected"] == {"non_numeric": 1, "not_finite": 1}
    assert s["repaired"] == {"held": 1} and s["gaps"] == {} and s["stale_channels"] == []
    assert s["readings"] == 49


def test_pipeline_stale_channel_resets_windows_and_debounce_then_resumes(tmp_path, model, recording):
    from agent.pipeline import Pipeline

    c = Counters()
    p = Pipeline(model, c, tmp_path, calibration_samples=0, summary_interval_s=1e9)
    rows = recording[:120]
    dead = range(40, 60)
    scored: list[tuple[float, float]] = []
    stale_at: list[int] = []
    for i, r in enumerate(rows):
        values = {k: v for k, v in r.values.items() if not (k == "Current" and i in dead)}
        p.process(Reading(r.ts, values, r.sensor))
        if p.stale_channels:
            stale_at.append(i)
            assert p.stale_channels == {"replay/Current"}
            assert list(p.machines["replay"]._scores) == [] or i > stale_at[0]  # debounce restarted
        inf = p.last_inference
        if inf is not None and (not scored or scored[-1] != (inf.window.start_ts, inf.window.end_ts)):
            scored.append((inf.window.start_ts, inf.window.end_ts))
    assert stale_at and stale_at[-1] == dead.stop - 1 and p.stale_channels == set()
    last_good = rows[dead.start - 1].ts
    assert rows[stale_at[0]].ts - last_good > 5.0 >= rows[stale_at[0] - 1].ts - last_good  # held up to 5 s
    back = rows[dead.stop].ts
    assert not any(a <= last_good and b >= back for a, b in scored)  # no window spans the hole
    assert [w for w in scored if w[1] >= back][0][0] == back  # the window refilled from the recovery on
    s = outgoing(p.finish())[-1].payload
    assert s["gaps"] == {"stale": 1}
    assert s["rejected"]["stale_channel"] == len(stale_at)
    assert s["readings"] == len(rows) - len(stale_at)


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"EDGE_AGENT_CLEANING__RANGES": "Current:5:1"}, "min must not exceed max"),
        ({"EDGE_AGENT_CLEANING__RANGES": "Current"}, "expected channel:min:max"),
        ({"EDGE_AGENT_CLEANING__SPIKE_WINDOW": "2"}, "at least 3"),
        ({"EDGE_AGENT_CLEANING__MAX_HOLD_S": "-1"}, "EDGE_AGENT_CLEANING__MAX_HOLD_S"),
        ({"EDGE_AGENT_CLEANING__ALIGN_SENSOR": "a/b"}, "EDGE_AGENT_CLEANING__ALIGN_SENSOR"),
    ],
)
def test_bad_cleaning_settings_name_the_variable(env, problem):
    from agent.settings import ConfigError, load_settings

    with pytest.raises(ConfigError) as e:
        load_settings(None, env)
    assert problem in str(e.value)


@pytest.mark.parametrize("ranges", ["Current:nan:5", "Current:0:NaN", "Current:0:inf", "Current:-inf:", "Current:1e999:",
                                    "Pressure:0:1,Current:-Infinity:Infinity"])
def test_nan_and_inf_bounds_in_the_cleaning_ranges_exit_78_named(tmp_path, ranges):
    """A bound of nan lets every value through (every comparison with it is false) and inf is what an empty bound
    already says: both are refused at configuration time, from the environment and from the file."""
    from agent.settings import ConfigError, load_settings

    item = ranges.split(",")[-1]
    rule = f"{item!r}: min and max must be finite numbers (nan and inf are refused; leave a bound empty for none)"
    with pytest.raises(ConfigError) as e:
        load_settings(None, {"EDGE_AGENT_CLEANING__RANGES": ranges})
    assert e.value.problems == [f"EDGE_AGENT_CLEANING__RANGES={ranges!r}: Value error, {rule}"]
    f = tmp_path / "agent.toml"
    f.write_text(f'[cleaning]\nranges = "{ranges}"\n')
    env = {"PATH": "/usr/bin:/bin", "EDGE_AGENT_CONFIG_FILE": str(f)}
    r = subprocess.run([sys.executable, "-m", "agent", "check-config"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 78, r.stderr
    assert f"cleaning.ranges = {ranges!r} ({f} line 2)" in r.stderr and rule in r.stderr


def test_cleaning_settings_become_the_policy():
    from agent.clean import CleaningPolicy
    from agent.settings import load_settings

    s = load_settings(None, {"EDGE_AGENT_CLEANING__RANGES": "Volume Flow RateRMS:0:10,Current::50",
                             "EDGE_AGENT_CLEANING__ALIGN_PERIOD_S": "2", "EDGE_AGENT_CLEANING__SPIKE_WINDOW": "7"})
    p = CleaningPolicy.from_settings(s.cleaning)
    assert p.ranges == {"Volume Flow RateRMS": (0.0, 10.0), "Current": (float("-inf"), 50.0)}
    assert (p.align_period_s, p.spike_window, p.max_hold_s, p.align_sensor) == (2.0, 7, 5.0, "aligned")
    assert CleaningPolicy.from_settings(load_settings(None, {}).cleaning) == CleaningPolicy()  # same defaults


# -- issue 12 item 8: one bad device timestamp must not blind a sensor; a sustained step is a new time base --------

from agent.clean import TIME_STEP_READINGS  # noqa: E402
from tests.helpers import outgoing  # noqa: E402


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _timed_cleaner(c: Counters, clock: _Clock, resets: list[str] | None = None) -> Cleaner:
    return Cleaner(["a"], {}, c, max_hold_s=5.0, max_time_jump_s=600.0, clock=clock,
                   on_reset=(resets.append if resets is not None else None))


def test_one_reading_a_year_ahead_is_refused_alone():
    c, clock = Counters(), _Clock()
    cl = _timed_cleaner(c, clock)
    base = 1_700_000_000.0
    accepted = 0
    for i in range(100):
        ts = base + i + (365 * 86400 if i == 50 else 0)
        clock.t += 1
        accepted += cl.clean(Reading(ts=ts, values={"a": 1.0})) is not None
    assert accepted == 99
    assert c.snapshot("reject.") == {"future_ts": 1}
    assert c.get("gap.time_step") == 0


def test_a_device_clock_stepped_back_an_hour_is_taken_as_the_new_time_base(caplog):
    caplog.set_level(logging.WARNING, logger="agent.clean")
    c, clock, resets = Counters(), _Clock(), []
    cl = _timed_cleaner(c, clock, resets)
    base = 1_700_000_000.0
    out = []
    for i in range(700):
        ts = base + i - (3600 if i >= 100 else 0)
        clock.t += 1
        out.append(cl.clean(Reading(ts=ts, values={"a": 1.0}, sensor="pump")) is not None)
    assert out[:100] == [True] * 100
    step_at = 100 + TIME_STEP_READINGS - 1
    assert out[100:step_at] == [False] * (TIME_STEP_READINGS - 1)  # refused alone until they agree ...
    assert all(out[step_at:]), "after the step every reading is accepted again"
    assert c.snapshot("reject.") == {"past_ts": TIME_STEP_READINGS - 1}
    assert c.get("gap.time_step") == 1 and resets == ["pump"]
    assert "taken as its new time base" in caplog.text and "-3600 s" in caplog.text


def test_a_small_step_back_stays_out_of_order_and_a_silent_sensor_may_resume_hours_later():
    c, clock = Counters(), _Clock()
    cl = _timed_cleaner(c, clock)
    assert cl.clean(Reading(ts=1000.0, values={"a": 1.0})) is not None
    for ts in (999.0, 990.0, 1000.0, 995.0, 996.0, 997.0, 998.0):  # near: plain out of order, never a new base
        assert cl.clean(Reading(ts=ts, values={"a": 1.0})) is None
    assert c.get("gap.time_step") == 0 and c.snapshot("reject.") == {"out_of_order": 6, "duplicate_ts": 1}
    clock.t += 7200  # two hours of silence on the clock: a reading two hours later is on time
    assert cl.clean(Reading(ts=1000.0 + 7200, values={"a": 1.0})) is not None
    assert c.get("reject.future_ts") == 0


def test_far_readings_that_do_not_agree_never_make_a_step():
    c, clock = Counters(), _Clock()
    cl = _timed_cleaner(c, clock)
    assert cl.clean(Reading(ts=1000.0, values={"a": 1.0})) is not None
    for i in range(20):  # garbage timestamps, each far from the last and from each other
        clock.t += 1
        assert cl.clean(Reading(ts=1e9 + (i % 2) * 1e8 - i * 1e6, values={"a": 1.0})) is None
    assert c.get("gap.time_step") == 0
    clock.t += 1
    assert cl.clean(Reading(ts=1021.0, values={"a": 1.0})) is not None


def test_the_aligner_is_not_blinded_by_one_reading_a_year_ahead():
    from agent.align import Aligner

    c = Counters()
    al = Aligner(["a", "b"], 1.0, 0.0, "aligned", c, max_time_jump_s=600.0, clock=lambda: 0.0)
    out = []
    for i in range(50):
        ts = 1000.0 + i + (365 * 86400 if i == 20 else 0)
        out += al.add(Reading(ts=ts, values={"a": 1.0, "b": 2.0}, sensor="s"))
    assert c.get("reject.future_ts") == 1
    assert len(out) >= 47 and out[-1].ts == 1048.0


# -- issue 12 item 7: per-sensor state is bounded --------------------------------------------------------------


def test_sensors_beyond_the_maximum_are_refused_and_counted(caplog):
    caplog.set_level(logging.WARNING, logger="agent.clean")
    c = Counters()
    cl = Cleaner(["a"], {}, c, max_sensors=3)
    for i in range(10):
        for s in ("s0", "s1", "s2", f"new{i}"):
            cl.clean(Reading(ts=float(i), values={"a": 1.0}, sensor=s))
    assert cl.sensor_count == 3
    assert c.get("reject.too_many_sensors") == 10
    assert caplog.text.count("of new sensors refused") == 1  # logged once, not per reading


def test_a_sensor_id_too_long_to_keep_is_refused():
    c = Counters()
    cl = Cleaner(["a"], {}, c)
    assert cl.clean(Reading(ts=1.0, values={"a": 1.0}, sensor="x" * 100_000)) is None
    assert c.snapshot("reject.") == {"sensor_id_too_long": 1} and cl.sensor_count == 0


def test_a_settled_sensor_accepts_and_refuses_exactly_as_the_first_readings_are_judged():
    """After its interval is learnt a sensor's readings take the common path (agent.clean_block.clean_common):
    the range ends are inside, +-inf and NaN are not finite even where the range is open-ended, any finite float
    passes a channel without a range, and a non-float goes the per-channel way (an int is a number)."""
    cases = [
        ({"a": 1e308, "b": 0.0, "c": 5.0}, [1e308, 0.0, 5.0]),
        ({"a": -1e308, "b": 100.0, "c": 1e300}, [-1e308, 100.0, 1e300]),
        ({"a": 1.0, "b": 100.00000000001, "c": 5.0}, "out_of_range"),
        ({"a": 1.0, "b": -1e-300, "c": 5.0}, "out_of_range"),
        ({"a": float("inf"), "b": 1.0, "c": 5.0}, "not_finite"),
        ({"a": 1.0, "b": 1.0, "c": float("inf")}, "not_finite"),
        ({"a": 1.0, "b": 1.0, "c": float("nan")}, "not_finite"),
        ({"a": 1.0, "b": 1.0, "c": -1.0}, "out_of_range"),
        ({"a": 3, "b": 1.0, "c": 5.0}, [3.0, 1.0, 5.0]),
        ({"a": True, "b": 1.0, "c": 5.0}, "non_numeric"),
    ]
    for settled in (False, True):
        for values, expected in cases:
            c = Counters()
            cl = Cleaner(["a", "b", "c"], {"b": (0.0, 100.0), "c": (0.0, float("inf"))}, c)
            ts = 0.0
            if settled:
                for ts in range(20):
                    assert cl.clean(Reading(ts=float(ts), values={"a": 1.0, "b": 1.0, "c": 1.0})) is not None
                assert cl.interval_of("") == 1.0
            v = cl.clean(Reading(ts=float(ts) + 1.0, values=values))
            if isinstance(expected, str):
                assert v is None and c.snapshot("reject.") == {expected: 1}, (settled, values)
            else:
                assert v is not None and v.values.tolist() == expected and c.snapshot("reject.") == {}, (settled, values)


def test_the_reading_that_teaches_a_slow_sensor_s_interval_is_judged_by_it(caplog):
    # The 9th reading of a sensor every 300 s taught its interval ("gaps tolerated up to 900 s") and was then
    # judged by the 5 s it arrived with: "300.0 s without a reading: its windows start again", one more reset.
    cl, c, resets = _cleaner()
    with caplog.at_level(logging.INFO, logger="agent.clean"):
        for i in range(12):
            assert cl.clean(Reading(ts=300.0 * i, values={"a": 1.0, "b": 2.0})) is not None
    assert cl.interval_of("") == 300.0
    assert c.get("gap.time_gap") == 7  # readings 2 to 8 (a slow sensor's every reading while it is learnt), no more
    assert len(resets.sensors) == 7
    assert "without a reading" not in caplog.text
