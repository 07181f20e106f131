"""The generic detector through the real pipeline: any channel count, slow sensors, drift, teach-in checks, feedback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.calibrate import Calibrator
from agent.counters import Counters
from agent.decide import AlertMachine
from agent.detectors import open_model, resolve
from agent.contamination import contamination
from agent.generic import GenericModel
from agent.infer import ModelError
from agent.pipeline import Pipeline
from agent.records import Inference, Reading, Window
from agent.settings import parse_duration
from tests.helpers import outgoing


def readings(x: np.ndarray, names: list[str], t0: float = 1.7e9, step_s: float = 1.0, sensor: str = "m1") -> list[Reading]:
    return [Reading(ts=t0 + i * step_s, values={n: float(v) for n, v in zip(names, row)}, sensor=sensor)
            for i, row in enumerate(x)]


def run(p: Pipeline, rs: list[Reading]) -> list[dict]:
    out = []
    for r in rs:
        out += [m.payload for m in outgoing(p.process(r)) if m.kind == "alert"]
    return out


def pipeline(tmp_path: Path, samples: int = 400, **kw) -> Pipeline:
    return Pipeline(open_model("generic"), Counters(), tmp_path, calibration_samples=samples, **kw)


def noise(rng: np.random.Generator, n: int, c: int, level: float = 10.0) -> np.ndarray:
    return level + rng.normal(0, 1, (n, c))


@pytest.mark.parametrize("channels", [1, 5, 32])
def test_any_channel_count_learns_from_the_first_reading_and_names_the_faulty_channel(tmp_path, channels):
    rng = np.random.default_rng(channels)
    names = [f"ch{i}" for i in range(channels)]
    x = noise(rng, 1400, channels)
    x[900:1200, channels - 1] += 8.0  # a step of 8 sigma on the last channel
    p = pipeline(tmp_path)
    alerts = run(p, readings(x, names))
    assert p.model.sidecar.channels == names
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1, alerts
    assert 900 <= _row(raised[0]) < 960  # caught within a minute of the step
    assert raised[0]["top_channels"][0]["channel"] == names[-1]
    assert raised[0]["score"] > raised[0]["threshold"]
    assert any(a["state"] == "cleared" for a in alerts)  # and cleared when it is over


def _row(alert: dict) -> int:
    from agent.parse import timestamp

    return int(round(timestamp(alert["window_end"]) - 1.7e9))


def _drift_capacity(p: Pipeline, channel: int) -> float:
    """How fast (per reading) the detector's baseline can follow a drift: adapt x clip x the fitted scale."""
    d = p.model.sidecar.detector
    return d.adapt * d.clip * p.calibrator.result.std[channel]


def test_noise_and_slow_drift_raise_nothing(tmp_path):
    rng = np.random.default_rng(1)
    x = noise(rng, 6000, 3)
    p = pipeline(tmp_path)
    rs = readings(x, ["a", "b", "c"])
    assert run(p, rs[:400]) == []  # teach-in
    rate = 0.5 * _drift_capacity(p, 0)  # a drift at half the speed the baseline can follow, for 5,600 readings
    drifted = [Reading(r.ts, {**r.values, "a": r.values["a"] + rate * i}, r.sensor) for i, r in enumerate(rs[400:])]
    assert rate * 5600 > 10 * p.calibrator.result.std[0]  # ... ten scales away from the teach-in by the end
    assert run(p, drifted) == []


def test_drift_does_not_blind_the_detector(tmp_path):
    rng = np.random.default_rng(2)
    x = noise(rng, 5000, 2)
    p = pipeline(tmp_path)
    rs = readings(x, ["a", "b"])
    run(p, rs[:400])
    rate = 0.5 * _drift_capacity(p, 0)
    drifted = [Reading(r.ts, {**r.values, "a": r.values["a"] + rate * i + (10.0 if 3600 <= i < 3900 else 0.0)},
                       r.sensor) for i, r in enumerate(rs[400:])]
    alerts = run(p, drifted)
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1 and 4000 <= _row(raised[0]) < 4060, raised


def test_a_sensor_reporting_every_five_minutes_is_not_stale_and_is_scored(tmp_path):
    rng = np.random.default_rng(3)
    x = noise(rng, 3000, 1, level=70.0)
    x[2500:2700, 0] -= 15.0
    c = Counters()
    p = Pipeline(open_model("generic"), c, tmp_path, calibration_samples=2000)
    alerts = run(p, readings(x, ["temperature"], step_s=300.0))
    assert not p.stale_channels
    assert c.get("gap.time_gap") <= 8  # only while the interval was being learnt
    assert c.get("pipeline.windows") > 900
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1 and 2500 <= _row_slow(raised[0]) < 2520


def _row_slow(alert: dict) -> int:
    from agent.parse import timestamp

    return int(round((timestamp(alert["window_end"]) - 1.7e9) / 300.0))


def test_channels_given_by_the_source_win_and_are_persisted(tmp_path):
    p = pipeline(tmp_path, channels=["b", "a"])
    assert p.model.sidecar.channels == ["b", "a"]
    rng = np.random.default_rng(4)
    run(p, readings(noise(rng, 420, 2), ["a", "b"]))
    assert not p.calibrating
    again = pipeline(tmp_path)  # a restart: the channels come from the stored teach-in
    assert again.model.sidecar.channels == ["b", "a"] and not again.calibrating


def test_teach_in_with_a_fault_in_its_second_half_is_reported_and_fitted_on_the_first(tmp_path):
    rng = np.random.default_rng(5)
    x = noise(rng, 400, 3)
    x[300:, 1] += 12.0
    found = contamination(x, ["a", "b", "c"])
    assert found is not None
    why, keep = found
    assert "second half" in why and "b" in why and keep == (0, 200)
    p = pipeline(tmp_path)
    run(p, readings(x, ["a", "b", "c"]))
    warning = p.calibrator.result.warning
    assert warning.startswith("the second half of the teach-in differs from the first (b:")
    assert json.loads((tmp_path / "calibration.json").read_text())["warning"] == warning
    assert p.calibrator.result.params["fitted_on"] == [0, 200]


def test_a_shutdown_inside_the_teach_in_is_reported_and_does_not_blind_the_detector(tmp_path):
    """A machine temperature every five minutes, wandering a few degrees; the teach-in (3,000 readings) holds a
    ten-hour stop (25 degrees down) in its first half. Scored against the second half that half is only 3.2
    thresholds off (under the 4 that marks a fault), but the second half scored against the first is ten times
    quieter still, because the stop widened the first half's scale fivefold: that lopsidedness is the sign.
    Fitted on the whole teach-in, the detector would need a 46-degree fall to alert; fitted on the clean half, a
    30-degree failure is alerted at once."""
    rng = np.random.default_rng(11)
    n = 4000
    wander = np.zeros(n)
    for i in range(1, n):  # slow wander of a running machine (AR(1))
        wander[i] = 0.95 * wander[i - 1] + rng.normal(0, 0.3)
    x = (85 + wander + rng.normal(0, 0.5, n)).reshape(-1, 1)
    shutdown = np.concatenate([np.linspace(0, 25, 12), np.full(120, 25.0), np.linspace(25, 0, 12)])
    x[1000:1000 + len(shutdown), 0] -= shutdown
    x[3500:, 0] -= np.minimum(np.arange(500) * 2.0, 30.0)  # the failure, after the teach-in
    spec = open_model("generic").sidecar
    found = contamination(x[:3000], ["temp"], spec.detector, spec.window.length, spec.threshold)
    assert found is not None, "the shutdown in the teach-in went unreported"
    why, keep = found
    assert why.startswith("the first half of the teach-in differs from the second (temp: 3.2 x the threshold, "
                          "the second against the first 0.11 x)") and keep == (1500, 3000)
    p = pipeline(tmp_path, samples=3000)
    alerts = run(p, readings(x, ["temp"], step_s=300.0))
    assert p.calibrator.result.params["fitted_on"] == [1500, 3000]
    assert p.calibrator.result.warning == why
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1 and 3500 <= _row_slow(raised[0]) < 3530


def test_a_teach_in_whose_second_half_is_noisier_throughout_is_not_taken_for_a_stop():
    """A quiet half and then a half wandering six times as much (a busy shift after a quiet one): scored against
    the quiet half the busy one is 2.5 thresholds off and the other way round far less, as with a stop, but the
    bulk of the busy half is spread wide, not one event: normal operation, fitted on all of it."""
    rng = np.random.default_rng(1)

    def wander(n: int, step: float) -> np.ndarray:
        w = np.zeros(n)
        for i in range(1, n):
            w[i] = 0.95 * w[i - 1] + rng.normal(0, step)
        return w

    x = np.r_[50 + wander(1500, 0.3) + rng.normal(0, 0.5, 1500),
              50 + wander(1500, 1.8) + rng.normal(0, 3.0, 1500)].reshape(-1, 1)
    spec = open_model("generic").sidecar
    assert contamination(x, ["load"], spec.detector, spec.window.length, spec.threshold) is None


def test_alert_levels_say_in_the_channels_units_where_the_detector_alerts(tmp_path):
    """``edge-agent calibrate`` shows them: a steady value just inside a channel's band raises nothing, one just
    beyond it raises, on that channel."""
    rng = np.random.default_rng(8)
    names = ["flow", "temp"]
    x = noise(rng, 400, 2) * [1.0, 3.0]
    p = pipeline(tmp_path)
    assert run(p, readings(x, names)) == []
    levels = p.calibrator.result.alert_levels()
    assert set(levels) == set(names)
    temp = levels["temp"]
    assert temp["alerts_above"] == pytest.approx(temp["level"] + 6.0 * temp["scale"])
    assert temp["alerts_below"] == pytest.approx(temp["level"] - 6.0 * temp["scale"])
    assert p.calibrator.result.alert_levels(8.0)["temp"]["alerts_above"] == pytest.approx(temp["level"] + 8 * temp["scale"])
    steady = lambda v, n: np.tile([levels["flow"]["level"], v], (n, 1))  # noqa: E731
    t0 = 1.7e9 + 400
    inside = temp["level"] + 0.9 * (temp["alerts_above"] - temp["level"])
    assert run(p, readings(steady(inside, 60), names, t0=t0)) == []
    beyond = temp["level"] + 1.1 * (temp["alerts_above"] - temp["level"])
    alerts = run(p, readings(steady(beyond, 20), names, t0=t0 + 60))
    assert [a["state"] for a in alerts] == ["raised"] and alerts[0]["top_channels"][0]["channel"] == "temp"


def test_a_network_s_calibration_has_no_alert_levels():
    from agent.calibration import fit

    pump = open_model("pump-anomaly")
    cal = fit(pump, noise(np.random.default_rng(9), 200, len(pump.sidecar.channels)))
    assert cal.threshold is not None and cal.alert_levels() is None


def test_a_clean_teach_in_raises_no_warning(tmp_path):
    rng = np.random.default_rng(6)
    x = noise(rng, 400, 4)
    x[:, 0] += np.linspace(0, 3, 400)  # mild drift is normal
    assert contamination(x) is None


def test_feedback_folds_a_benign_event_in_so_repeats_do_not_alert_but_a_real_fault_does(tmp_path):
    from agent.evidence import EvidenceStore

    rng = np.random.default_rng(7)
    x = noise(rng, 5200, 2)
    for start in (1000, 2000, 3000):  # the same benign event three times: channel a up 7 sigma for 2 minutes
        x[start:start + 120, 0] += 7.0
    x[4200:4500, 1] += 12.0  # then a real fault on the other channel
    store = EvidenceStore(tmp_path / "evidence.db")
    p = pipeline(tmp_path, evidence=store)
    rs = readings(x, ["a", "b"])
    first = run(p, rs[:1500])
    raised = [a for a in first if a["state"] == "raised"]
    assert len(raised) == 1 and 1000 <= _row(raised[0]) < 1060
    ev = store.get(raised[0]["alert_id"])
    assert ev is not None and len(ev["values"]) > 120  # the whole event, not only the window that raised it
    learned = p.learn(raised[0]["alert_id"], "false_positive")
    assert learned["learned"] and learned["folded_readings"] == len(ev["values"])
    later = run(p, rs[1500:])
    raised_later = [a for a in later if a["state"] == "raised"]
    assert [a["top_channels"][0]["channel"] for a in raised_later] == ["b"], raised_later
    assert 4200 <= _row(raised_later[0]) < 4260
    # persisted: a restart keeps the folded event; undo (true_positive) brings the sensitivity back
    again = pipeline(tmp_path, evidence=store)
    assert again.calibrator.result.folded == [raised[0]["alert_id"]]
    undo = again.learn(raised[0]["alert_id"], "true_positive")
    assert undo["learned"] and undo["unfolded"]
    assert again.calibrator.result.folded == []
    assert again.params.threshold == pytest.approx(p.calibrator.result.threshold, rel=0.5)  # refitted
    store.close()


def test_receded_clear_and_its_floor():
    m = AlertMachine("s", threshold=4.0, k=1, n=1, clear_ratio=0.5, recede_ratio=0.2, refractory=10)
    win = Window("s", 0.0, 1.0, np.zeros((1, 1)))

    def feed(score: float):
        return m.update(Inference(window=win, score=score))

    assert feed(100.0).state == "raised"
    t = feed(15.0)  # 15 < 0.2 x 100 but over the clear level 2: the event receded
    assert t is not None and t.state == "cleared" and t.receded
    assert feed(16.0) is None  # under the floor 15 x 1.3
    assert feed(25.0).state == "raised"  # a real new rise


def test_bundled_names_resolve_and_a_bad_spec_is_refused(tmp_path):
    assert resolve("generic").name == "generic.json" and resolve("pump-anomaly").suffix == ".tflite"
    assert isinstance(open_model("generic"), GenericModel)
    bad = tmp_path / "g.json"
    spec = json.loads(resolve("generic").read_text())
    spec["threshold"] = "nan"
    bad.write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="threshold"):
        open_model(bad)
    spec["threshold"] = 4.0
    spec["kind"] = "autoencoder"
    bad.write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="generic detector spec"):
        open_model(bad)
    spec["kind"] = json.loads(resolve("generic").read_text())["kind"]
    spec["decision"] = {"k": 3, "n": 10_001}  # over the configuration's bound of k and n
    bad.write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="decision.n: Input should be less than or equal to 10000"):
        open_model(bad)


def test_teach_in_by_duration(tmp_path):
    model = open_model("generic").with_channels(["a"])
    cal = Calibrator(model, 0, tmp_path, duration_s=600.0)
    rng = np.random.default_rng(8)
    for i, v in enumerate(noise(rng, 700, 1)):
        done = cal.add(v, 1000.0 + i)
        if i < 600:
            assert done is None and math.isclose(cal.progress, i / 600.0)
        elif i == 600:
            assert done is not None and done.samples == 601


@pytest.mark.parametrize("text,seconds", [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("7d", 604800.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5m", "0", "inf", "nanh"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("case", ["units", "glitches"])
def test_huge_values_in_the_teach_in_neither_kill_the_pipeline_nor_blind_the_other_channels(tmp_path, case):
    # Squares of 1e300 overflowed to inf in the fit: the scorer refused the calibration and the pipeline thread
    # died at the end of every teach-in (exit 1; under systemd a restart and the same again).
    rng = np.random.default_rng(11)
    x = noise(rng, 1200, 2)
    if case == "units":  # a channel in units of 1e300: the detector works in any unit
        x[:, 0] = 1e300 * (1 + 0.01 * rng.normal(0, 1, 1200))
        x[800:950, 0] *= 1.5
    else:  # a glitch from a bad decode in each half of the teach-in
        x[[100, 300], 0] = 1e300
        x[800:950, 1] += 10.0
    p = pipeline(tmp_path)
    alerts = run(p, readings(x, ["a", "b"]))
    params = p.calibrator.result.params
    assert np.isfinite(params["scale"]).all() and np.isfinite(params["baseline"]).all()
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1 and 800 <= _row(raised[0]) < 830, alerts
    assert raised[0]["top_channels"][0]["channel"] == ("a" if case == "units" else "b")


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")  # the case under test
def test_an_alert_on_a_value_whose_square_overflows_names_that_channel(tmp_path):
    # One reading of 1e300 on "a": its share z*z is inf, the sum of the shares too, and every channel was given
    # the same share (a 50 %, b 50 %): the alert did not say where to look.
    rng = np.random.default_rng(12)
    x = noise(rng, 800, 2)
    x[600, 0] = 1e300
    alerts = run(pipeline(tmp_path), readings(x, ["a", "b"]))
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1, alerts
    assert raised[0]["top_channels"][0] == {"channel": "a", "share": 1.0}


@pytest.mark.parametrize("unit", [1.0, 1e-6])
def test_a_channel_in_small_units_alerts_as_in_large_ones(tmp_path, unit):
    # A displacement of 20 um (noise 0.02 um, a step of 0.4 um) in metres: the scale's floor was 1e-6 in the
    # channel's units whatever they were, 150 times the window means' spread there, and the step never alerted.
    rng = np.random.default_rng(13)
    x = np.column_stack([20 + rng.normal(0, 0.02, 1200), noise(rng, 1200, 1)[:, 0]])
    x[800:950, 0] += 0.4
    x[:, 0] *= unit
    alerts = run(pipeline(tmp_path), readings(x, ["disp", "b"]))
    raised = [a for a in alerts if a["state"] == "raised"]
    assert len(raised) == 1 and 800 <= _row(raised[0]) < 815, alerts
    assert raised[0]["top_channels"][0]["channel"] == "disp"
