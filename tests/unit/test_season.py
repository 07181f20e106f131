"""The generic detector's daily profile (agent/season.py) through the real pipeline: a day that goes wrong inside the
usual range is caught only with it; no profile where there is none; per reading and in blocks alike; it survives a
restart and a false_positive label."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from agent import season
from agent.clean_policy import CleaningPolicy
from agent.counters import Counters
from agent.detectors import open_model, resolve
from agent.evidence import EvidenceStore
from agent.generic import GenericModel
from agent.infer import ModelError
from agent.parse import timestamp
from agent.pipeline import Pipeline
from agent.records import Reading
from tests.helpers import outgoing

STEP = 300.0  # a reading every five minutes
PER_DAY = int(season.DAY / STEP)
T0 = 1_700_006_400.0  # a midnight (UTC)


def daily(days: float, rng: np.random.Generator, amplitude: float = 20.0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, one channel): 50 + a daily swing of +-amplitude peaking at 15:00, plus noise."""
    t = T0 + STEP * np.arange(int(days * PER_DAY))
    x = 50.0 + amplitude * np.cos(2 * math.pi * ((t % season.DAY) / season.DAY - 15 / 24)) + rng.normal(0, noise, len(t))
    return t, x[:, None]


def run(p: Pipeline, t: np.ndarray, x: np.ndarray, names: list[str]) -> list[dict]:
    out = []
    for ts, row in zip(t, x):
        r = Reading(ts=float(ts), values={n: float(v) for n, v in zip(names, row)}, sensor="m1")
        out += [m.payload for m in outgoing(p.process(r)) if m.kind == "alert"]
    return out


def model_without_profile(tmp_path: Path) -> GenericModel:
    spec = json.loads(resolve("generic").read_text())
    spec["detector"]["season"] = 0
    path = tmp_path / "no-season.json"
    path.write_text(json.dumps(spec))
    return open_model(path)


def test_a_day_without_its_afternoon_peak_is_alerted_only_with_the_daily_profile(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agent.calibrate")
    t, x = daily(14, np.random.default_rng(1))
    bad_day = 10 * PER_DAY
    afternoon = slice(bad_day + 12 * 12, bad_day + 18 * 12)  # 12:00-18:00 of day 10: the peak stays away
    x[afternoon, 0] = 50.0 + np.random.default_rng(2).normal(0, 1.0, afternoon.stop - afternoon.start)
    teach_in = 7 * PER_DAY
    with_profile = Pipeline(open_model("generic"), Counters(), tmp_path / "a", calibration_samples=teach_in)
    alerts = run(with_profile, t, x, ["temperature"])
    assert "season" in with_profile.calibrator.result.params and with_profile.scorer.timed
    assert "a daily profile for temperature" in caplog.text
    assert with_profile.snapshot.calibration_daily == ("temperature",)
    from agent.payloads import _snapshot
    from agent.status import _machine

    shown = _machine({}, with_profile.snapshot, [])  # the retained status: what the control room sees ...
    assert shown["calibration"]["daily_profile"] == ["temperature"]
    assert _snapshot({**shown, "model": {"name": "generic"}}).calibration_daily == ("temperature",)  # ... read back
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1, raised  # the bad afternoon, and nothing on the four normal days after the teach-in
    at = (timestamp(raised[0]["window_end"]) - T0) / STEP
    assert afternoon.start <= at < afternoon.start + 12 * 2  # within two hours of the peak going missing
    without = Pipeline(model_without_profile(tmp_path), Counters(), tmp_path / "b", calibration_samples=teach_in)
    assert [a for a in run(without, t, x, ["temperature"]) if a["state"] == "raised"] == []  # the level alone: blind


def test_hourly_readings_whose_windows_span_hours_raise_nothing_on_normal_days(tmp_path):
    """A window of 10 hourly readings averages part of the daily swing away: the scorer takes out the profile's
    mean over the window's span, as the teach-in took it out of every reading, not its value at one instant."""
    rng = np.random.default_rng(6)
    t = T0 + 3600.0 * np.arange(28 * 24)
    x = 50.0 + 20.0 * np.cos(2 * math.pi * ((t % season.DAY) / season.DAY - 15 / 24)) + rng.normal(0, 1.0, len(t))
    replay = dataclasses.replace(CleaningPolicy(), max_time_jump_s=0.0)  # an hour of data time per call, as a replay
    c = Counters()
    p = Pipeline(open_model("generic"), c, tmp_path, calibration_samples=7 * 24, cleaning=replay)
    assert run(p, t, x[:, None], ["temperature"]) == []
    assert p.scorer.timed and c.get("pipeline.windows") > 20 * 24


def test_a_profile_must_hold_both_ways_and_needs_every_readings_time():
    rng = np.random.default_rng(7)
    t = T0 + STEP * np.arange(8 * PER_DAY)
    phase = 2 * math.pi * ((t % season.DAY) / season.DAY)
    amplitude = np.where((np.floor(t / season.DAY) % 2) == 0, 10.0, 4.0)  # even days swing 10, odd days 4 ...
    uneven = (amplitude * np.cos(phase) + rng.normal(0, 1.0, len(t)))[:, None]
    uneven[np.floor(t / season.DAY) % 2 == 1] *= -1  # ... and the other way round: no shape holds from day to day
    assert season.fit_profile(uneven, t) is None
    steady = (10.0 * np.cos(phase) + rng.normal(0, 1.0, len(t)))[:, None]
    assert season.fit_profile(steady, t) is not None
    holes = t.copy()
    holes[5] = np.nan  # one reading without a time (stored before times were kept): no profile rather than a guess
    model = open_model("generic").with_channels(["a"])
    assert "season" not in model.fit(steady, ts=holes) and "season" in model.fit(steady, ts=t)


def test_no_profile_where_the_data_has_none_or_the_teach_in_is_shorter_than_three_days():
    rng = np.random.default_rng(3)
    t, x = daily(7, rng)
    flat = 10.0 + rng.normal(0, 1.0, (len(t), 1))
    profile = season.fit_profile(np.hstack([x, flat]), t)
    assert profile is not None
    assert np.ptp(profile[:, 0]) > 30  # the daily swing of +-20 is learnt ...
    assert np.all(profile[:, 1] == 0)  # ... and none for the channel without one
    assert season.fit_profile(flat, t) is None
    assert season.fit_profile(np.full((len(t), 1), 7.0), t) is None  # a constant channel: nothing to take out
    assert season.fit_profile(np.hstack([x, np.full((len(t), 1), 7.0)]), t)[:, 1].tolist() == [0.0] * season.BINS
    assert season.fit_profile(x[: int(2.5 * PER_DAY)], t[: int(2.5 * PER_DAY)]) is None  # too short
    one_hz = 1_700_000_000.0 + np.arange(400.0)  # SKAB's 400-reading teach-in at 1 Hz: never a profile
    assert season.fit_profile(np.ones((400, 1)), one_hz) is None
    model = open_model("generic").with_channels(["a"])
    assert "season" not in model.fit(np.ones((400, 1)) + rng.normal(0, 1, (400, 1)), ts=one_hz)


def test_scores_per_reading_and_in_blocks_agree_with_a_profile():
    rng = np.random.default_rng(4)
    t, x = daily(9, rng)
    x = np.hstack([x, 10.0 + rng.normal(0, 1.0, (len(x), 1))])  # two channels: one with a profile, one without
    model = open_model("generic").with_channels(["temperature", "pressure"])
    params = model.fit(x[: 7 * PER_DAY], ts=t[: 7 * PER_DAY])
    assert "season" in params
    one, block = model.scorer(params), model.scorer(params)
    length = model.sidecar.window.length
    ends = np.arange(7 * PER_DAY, len(x))
    windows = np.stack([x[e - length + 1:e + 1] for e in ends])
    first, last = t[ends - length + 1], t[ends]
    singles = np.array([one.score(w, "s", float(a), float(b))[0] for w, a, b in zip(windows, first, last)])
    batch, _ = block.score_windows(windows, "s", first, last)
    assert np.array_equal(singles, batch)
    assert singles.max() < model.sidecar.threshold  # normal days after the teach-in stay under the threshold


def test_the_profile_survives_a_restart_and_a_false_positive_label(tmp_path):
    rng = np.random.default_rng(5)
    t, x = daily(9, rng)
    x[8 * PER_DAY + 36:8 * PER_DAY + 60, 0] += 25.0  # a two-hour bump at 03:00 on day 8
    store = EvidenceStore(tmp_path / "evidence.db")
    p = Pipeline(open_model("generic"), Counters(), tmp_path, calibration_samples=7 * PER_DAY, evidence=store)
    raised = [a for a in run(p, t, x, ["temperature"]) if a["state"] == "raised"]
    assert len(raised) == 1
    assert len(store.get(raised[0]["alert_id"])["ts"]) == len(store.get(raised[0]["alert_id"])["values"])
    learned = p.learn(raised[0]["alert_id"], "false_positive")
    assert learned["learned"] and "season" in p.calibrator.result.params and p.scorer.timed
    again = Pipeline(open_model("generic"), Counters(), tmp_path, calibration_samples=7 * PER_DAY, evidence=store)
    assert not again.calibrating and again.scorer.timed
    assert again.calibrator.result.folded == [raised[0]["alert_id"]]
    assert again.calibrator.result.params["season"] == p.calibrator.result.params["season"]
    store.close()


def test_a_long_fast_teach_in_keeps_readings_from_every_day_and_learns_the_profile(tmp_path):
    """Four days at one reading every 2 s (172,800 readings) are thinned to at most MAX_ROWS, spread evenly over the
    whole teach-in (not the last hours dense and the first days almost empty), so the daily profile is found."""
    from agent.calibrate import MAX_ROWS, Calibrator

    rng = np.random.default_rng(8)
    model = open_model("generic").with_channels(["temperature"])
    cal = Calibrator(model, 0, tmp_path, duration_s=4 * season.DAY)
    t = T0 + 2.0 * np.arange(int(4 * season.DAY / 2.0) + 1)
    x = 50.0 + 20.0 * np.cos(2 * math.pi * (t % season.DAY) / season.DAY) + rng.normal(0, 1.0, len(t))
    done = None
    for ts, v in zip(t, x):
        done = cal.add(np.array([v]), float(ts)) or done
    assert done is not None and "season" in done.params
    with np.load(tmp_path / "calibration.npz") as z:
        kept = np.asarray(z["ts"])
    assert len(kept) <= MAX_ROWS + 1
    per_day = np.bincount(((kept - T0) // season.DAY).astype(int), minlength=4)[:4]
    assert per_day.min() > 0.8 * per_day.max(), per_day


def test_a_machine_on_local_time_is_followed_across_a_daylight_saving_change(tmp_path):
    """A machine whose day follows Berlin's clock (its peak at 15:00 local), taught a week before the clocks go
    forward (29 March 2026), watched three weeks on. On UTC days its peak comes an hour early after the change, and
    the profile, taken out an hour off, raises an alert twice a day; on the zone's days nothing is raised, and an
    afternoon whose peak stays away after the change is still alerted."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    t0 = datetime(2026, 3, 15, tzinfo=berlin).timestamp()
    t = t0 + STEP * np.arange(24 * PER_DAY)
    local_hour = np.array([datetime.fromtimestamp(v, berlin).hour + datetime.fromtimestamp(v, berlin).minute / 60
                           for v in t])
    rng = np.random.default_rng(4)
    x = (50.0 + 20.0 * np.cos(2 * math.pi * (local_hour - 15) / 24) + rng.normal(0, 1.0, len(t)))[:, None]
    bad_day = 20 * PER_DAY  # 4 April: the peak stays away, 12:00-18:00 local
    afternoon = slice(bad_day + 11 * 12, bad_day + 17 * 12)  # local 12:00 is 10:00 UTC, 11 h after local midnight
    faulty = x.copy()
    faulty[afternoon, 0] = 50.0 + rng.normal(0, 1.0, afternoon.stop - afternoon.start)
    teach_in = 7 * PER_DAY

    def alerts(clock: str, data: np.ndarray, d: str) -> list[dict]:
        p = Pipeline(open_model("generic"), Counters(), tmp_path / d, calibration_samples=teach_in,
                     calibration_clock=clock)
        out = [a for a in run(p, t, data, ["temperature"]) if a["state"] == "raised"]
        assert "season" in p.calibrator.result.params
        assert p.calibrator.result.params["season"].get("timezone", "UTC") == clock
        return out

    assert len(alerts("UTC", x, "utc")) >= 10  # twice a day after the change
    assert alerts("Europe/Berlin", x, "berlin") == []
    raised = alerts("Europe/Berlin", faulty, "berlin-fault")
    assert len(raised) == 1
    at = (timestamp(raised[0]["window_end"]) - t0) / STEP
    assert afternoon.start <= at < afternoon.start + 12 * 2


def test_the_profile_s_clock_survives_a_restart_and_blocks_score_as_single_readings(tmp_path):
    t, x = daily(5, np.random.default_rng(6))
    model = open_model("generic").with_channels(["temperature"])
    from agent.calibration import fit, make_scorer, parse_calibration

    cal = fit(model, x[: 4 * PER_DAY], ts=t[: 4 * PER_DAY], clock="America/New_York")
    assert cal.params["season"]["timezone"] == "America/New_York"
    a, b = make_scorer(model, cal), make_scorer(model, cal)
    rest, times = x[4 * PER_DAY:], t[4 * PER_DAY:]
    windows = np.stack([rest[i:i + 10] for i in range(len(rest) - 9)])
    starts, ends = times[: len(windows)], times[9: 9 + len(windows)]
    single = np.array([a.score(w, "s", s, e)[0] for w, s, e in zip(windows, starts, ends)])
    block, _ = b.score_windows(windows, "s", starts, ends)
    assert np.array_equal(single, block)
    cal.write(tmp_path / "calibration.json")  # a restart reads the clock back with the profile
    again = make_scorer(model, parse_calibration((tmp_path / "calibration.json").read_bytes()))
    assert np.array_equal(single, np.array([again.score(w, "s", s, e)[0] for w, s, e in zip(windows, starts, ends)]))
    utc = make_scorer(model, fit(model, x[: 4 * PER_DAY], ts=t[: 4 * PER_DAY]))
    assert not np.array_equal(single, np.array([utc.score(w, "s", s, e)[0] for w, s, e in zip(windows, starts, ends)]))
    bad = dict(cal.params, season=dict(cal.params["season"], timezone="Mars/Base"))
    import dataclasses

    with pytest.raises(ModelError, match="unknown time zone 'Mars/Base'"):
        make_scorer(model, dataclasses.replace(cal, params=bad))


def test_a_window_across_a_daylight_saving_change_takes_out_the_profile_of_the_clock_times_it_spans(tmp_path):
    """The clock goes back an hour (an hour repeated) or forward (an hour skipped) inside a window: the profile's
    share is its mean over the clock times the window's readings had, as if taken out reading by reading; and a
    block of windows gives the same bits as one window at a time."""
    from datetime import datetime, timezone

    tz = season.zone("Europe/Berlin")
    profile = 20 * np.cos(2 * math.pi * ((np.arange(season.BINS) + 0.5) / season.BINS - 21 / 24))[:, None]  # steep at 03:00
    table = season.fine(profile)
    cum = season.cumulative(table)
    for when in (datetime(2026, 10, 25, 0, 40), datetime(2026, 3, 29, 0, 40), datetime(2026, 3, 29, 0, 55),
                 datetime(2026, 6, 1, 3, 0)):
        s = when.replace(tzinfo=timezone.utc).timestamp()
        e = s + 45 * 60
        got = season.share(table, cum, np.array([s]), np.array([e]), season.DAY, tz)[0, 0]
        t = np.linspace(s, e, 20_001)
        reading_by_reading = table[season.index(season.local(t, tz))][:, 0].mean()
        assert got == pytest.approx(reading_by_reading, abs=2e-3), when
    model = open_model("generic").with_channels(["temperature"])
    from agent.calibration import fit, make_scorer

    start = datetime(2026, 10, 20, tzinfo=timezone.utc).timestamp()
    t = start + STEP * np.arange(8 * PER_DAY)
    hour = np.array([datetime.fromtimestamp(v, tz).hour + datetime.fromtimestamp(v, tz).minute / 60 for v in t])
    x = (50 + 20 * np.cos(2 * math.pi * (hour - 21) / 24) + np.random.default_rng(3).normal(0, 1, len(t)))[:, None]
    cal = fit(model, x[: 4 * PER_DAY], ts=t[: 4 * PER_DAY], clock="Europe/Berlin")
    a, b = make_scorer(model, cal), make_scorer(model, cal)
    rest, times = x[4 * PER_DAY:], t[4 * PER_DAY:]  # 24 October on: the change on the 25th
    windows = np.stack([rest[i:i + 10] for i in range(len(rest) - 9)])
    starts, ends = times[: len(windows)], times[9: 9 + len(windows)]
    single = np.array([a.score(w, "s", s, e)[0] for w, s, e in zip(windows, starts, ends)])
    block, _ = b.score_windows(windows, "s", starts, ends)
    assert np.array_equal(single, block)
    assert single.max() < 6  # nothing near the threshold at the change


def _taught_on_berlin_days(state: Path) -> GenericModel:
    t, x = daily(4, np.random.default_rng(7))
    p = Pipeline(open_model("generic"), Counters(), state, calibration_samples=3 * PER_DAY + 10,
                 calibration_clock="Europe/Berlin")
    run(p, t, x, ["temperature"])
    assert p.calibrator.result.params["season"]["timezone"] == "Europe/Berlin"
    return p.model


def test_a_stored_profile_on_an_unknown_zone_is_set_aside_and_teach_in_starts_again(tmp_path, caplog):
    """A state directory restored on a gateway whose time zone database lacks the zone: not a crash."""
    from agent.calibrate import Calibrator

    model = _taught_on_berlin_days(tmp_path)
    stored = json.loads((tmp_path / "calibration.json").read_text())
    stored["params"]["season"]["timezone"] = "Mars/Base"
    (tmp_path / "calibration.json").write_text(json.dumps(stored))
    again = Calibrator(model, 100, tmp_path, clock="Europe/Berlin")
    assert again.result is None and again.active
    assert not (tmp_path / "calibration.json").exists() and list(tmp_path.glob("calibration.json.corrupt-*"))
    assert "unknown time zone 'Mars/Base'" in caplog.text


def test_edge_agent_calibrate_refits_a_new_model_on_the_configured_zone_s_days(tmp_path):
    """``edge-agent calibrate`` with another version of the spec refits from the stored readings: on the configured
    zone's days, as the daemon would; it only shows the refit (an agent may run on the files), the file stays."""
    import os
    import subprocess
    import sys

    _taught_on_berlin_days(tmp_path / "state")
    before = (tmp_path / "state" / "calibration.json").read_bytes()
    spec = json.loads(resolve("generic").read_text())
    spec["version"] = "9.9.9"
    (tmp_path / "generic2.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(EDGE_AGENT_STATE_DIR=str(tmp_path / "state"), EDGE_AGENT_MODEL__PATH=str(tmp_path / "generic2.json"),
               EDGE_AGENT_CALIBRATION__TIMEZONE="Europe/Berlin")
    r = subprocess.run([sys.executable, "-m", "agent", "calibrate"], capture_output=True, text=True, env=env,
                       timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["params"]["season"]["timezone"] == "Europe/Berlin"
    assert shown["alert_levels"]["daily_profile"] is True
    assert shown["model_sha256"] != json.loads(before)["model_sha256"]  # the refit for the new spec, shown
    assert (tmp_path / "state" / "calibration.json").read_bytes() == before  # ... and not written over the stored one
