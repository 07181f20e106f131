"""The pipeline on the real bundled model: teach-in, persistence, explanations, summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.counters import Counters
from agent.pipeline import Pipeline
from agent.records import Reading


def _run(p: Pipeline, readings):
    out = []
    for r in readings:
        out.extend(p.process(r))
    return out


def test_no_alert_while_calibrating_and_state_reported(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    assert samples > 0, "the bundled model asks for teach-in"
    p = Pipeline(model, Counters(), "gw", tmp_path, summary_interval_s=1e9)
    assert p.calibrating
    # even a wild disturbance during teach-in raises nothing
    wild = [Reading(r.ts, {**r.values, "Current": r.values["Current"] * (1 + 3 * (i % 2))}) for i, r in enumerate(recording[:samples - 1])]
    assert [m for m in _run(p, wild) if m.kind == "alert"] == []
    assert p.calibrating and p.calibrator.collected == samples - 1


def test_teach_in_persists_across_a_restart(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    p = Pipeline(model, Counters(), "gw", tmp_path)
    _run(p, recording[:samples])
    assert not p.calibrating
    cal = json.loads((tmp_path / "calibration.json").read_text())
    assert cal["model_sha256"] == model.sha256 and cal["samples"] == samples
    assert cal["threshold"] == pytest.approx(p.params.threshold)
    raw = np.array([[r.values[c] for c in model.sidecar.channels] for r in recording[:samples]])
    assert np.allclose(cal["mean"], raw.mean(axis=0))

    again = Pipeline(model, Counters(), "gw", tmp_path)
    assert not again.calibrating
    assert again.params.threshold == pytest.approx(p.params.threshold)
    # the same readings score the same after the restart
    a = [m.payload["score"] for m in _run(p, recording[samples:]) if m.kind == "alert"]
    b = [m.payload["score"] for m in _run(again, recording[samples:]) if m.kind == "alert"]
    assert a == b

    again.calibrator.reset()
    assert not (tmp_path / "calibration.json").exists()
    assert Pipeline(model, Counters(), "gw", tmp_path).calibrating


def test_explanation_points_at_the_disturbed_channel(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    channels = model.sidecar.channels
    # temperatures drift slowly on a real pump; the model tolerates level shifts there by design (models/README.md)
    for victim in ("Current", "Volume Flow RateRMS"):
        p = Pipeline(model, Counters(), "gw", tmp_path / victim)
        _run(p, recording[:samples])
        normal = recording[samples: samples + 120]
        raw = np.array([[r.values[c] for c in channels] for r in recording[:samples]])
        sd = raw[:, channels.index(victim)].std()
        disturbed = [
            Reading(r.ts, {**r.values, victim: r.values[victim] + 8 * sd}) if i >= 30 else r
            for i, r in enumerate(normal)
        ]
        alerts = [m.payload for m in _run(p, disturbed) if m.kind == "alert" and m.payload["state"] == "raised"]
        assert alerts, f"a step of 8 sigma on {victim} raised nothing"
        a = alerts[0]
        assert a["top_channels"][0]["channel"] == victim
        assert a["top_channels"][0]["share"] > 0.5
        assert a["margin"] > 0 and a["score"] > a["threshold"]


def test_rejected_readings_are_counted_in_the_summary(tmp_path, model, recording):
    c = Counters()
    p = Pipeline(model, c, "gw", tmp_path)
    bad = [
        Reading(recording[0].ts, {**recording[0].values, "Current": "n/a"}),
        Reading(recording[1].ts, {**recording[1].values, "Pressure": float("nan")}),
    ]
    _run(p, bad + recording[2:50])
    s = p.finish()[0].payload
    assert s["rejected"] == {"non_numeric": 1, "not_finite": 1}
    # the first reading has no earlier Current to hold: dropped; the NaN Pressure is held from the reading before
    assert s["readings"] == 49 and s["repaired"] == {"held": 1} and s["final"] is True and s["calibrating"] is True


def test_a_silent_live_sensor_closes_its_summary_period_in_data_time(tmp_path, model, recording):
    """Old device timestamps (2020) must not be compared with today's clock: silence is measured monotonic."""
    p = Pipeline(model, Counters(), "gw", tmp_path, summary_interval_s=300)
    from agent.parse import iso

    _run(p, recording[:10])
    span = recording[9].ts - recording[0].ts
    arrival = p._last_arrival
    assert p.tick(arrival + 299 - span) == []
    out = p.tick(arrival + 301 - span)  # the data so far + the silence: the 300 s period is over
    assert len(out) == 1
    s = out[0].payload
    assert s["readings"] == 10 and s["final"] is False
    assert s["period_end"] == iso(recording[0].ts + 301)  # in the recording's time, not today's


def test_summary_reports_drift_against_the_calibrated_normal(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    p = Pipeline(model, Counters(), "gw", tmp_path, summary_interval_s=1e9)
    _run(p, recording[:samples])
    first = p.finish()[0].payload
    # the period holds exactly the teach-in readings: no drift from themselves
    assert first["calibrating"] is False and all(abs(v) < 1e-6 for v in first["drift"].values())
    sd = p.scorer.normaliser.std[model.sidecar.channels.index("Current")]
    shifted = [Reading(r.ts, {**r.values, "Current": r.values["Current"] + 3 * sd}) for r in recording[samples: samples + 50]]
    _run(p, shifted)
    s = p.finish()[0].payload
    assert s["drift"]["Current"] == pytest.approx(3.0, abs=0.6)
    assert abs(s["drift"]["Pressure"]) < 1.5
