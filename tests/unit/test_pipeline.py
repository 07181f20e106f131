"""The pipeline on the real bundled model: teach-in, persistence, explanations, summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.counters import Counters
from agent.pipeline import Pipeline
from agent.records import Reading
from tests.helpers import outgoing


def _run(p: Pipeline, readings):
    out = []
    for r in readings:
        out.extend(outgoing(p.process(r)))
    return out


def test_no_alert_while_calibrating_and_state_reported(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    assert samples > 0, "the bundled model asks for teach-in"
    p = Pipeline(model, Counters(), tmp_path, summary_interval_s=1e9)
    assert p.calibrating
    # even a wild disturbance during teach-in raises nothing
    wild = [Reading(r.ts, {**r.values, "Current": r.values["Current"] * (1 + 3 * (i % 2))}) for i, r in enumerate(recording[:samples - 1])]
    assert [m for m in _run(p, wild) if m.kind == "alert"] == []
    assert p.calibrating and p.calibrator.collected == samples - 1


def test_teach_in_persists_across_a_restart(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    p = Pipeline(model, Counters(), tmp_path)
    _run(p, recording[:samples])
    assert not p.calibrating
    cal = json.loads((tmp_path / "calibration.json").read_text())
    assert cal["model_sha256"] == model.sha256 and cal["samples"] == samples
    assert cal["threshold"] == pytest.approx(p.params.threshold)
    raw = np.array([[r.values[c] for c in model.sidecar.channels] for r in recording[:samples]])
    assert np.allclose(cal["mean"], raw.mean(axis=0))

    again = Pipeline(model, Counters(), tmp_path)
    assert not again.calibrating
    assert again.params.threshold == pytest.approx(p.params.threshold)
    # the same readings score the same after the restart
    a = [m.payload["score"] for m in _run(p, recording[samples:]) if m.kind == "alert"]
    b = [m.payload["score"] for m in _run(again, recording[samples:]) if m.kind == "alert"]
    assert a == b

    again.calibrator.reset()
    assert not (tmp_path / "calibration.json").exists()
    assert Pipeline(model, Counters(), tmp_path).calibrating


def test_explanation_points_at_the_disturbed_channel(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    channels = model.sidecar.channels
    # temperatures drift slowly on a real pump; the model tolerates level shifts there by design (models/README.md)
    for victim in ("Current", "Volume Flow RateRMS"):
        p = Pipeline(model, Counters(), tmp_path / victim)
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
    p = Pipeline(model, c, tmp_path)
    bad = [
        Reading(recording[0].ts, {**recording[0].values, "Current": "n/a"}),
        Reading(recording[1].ts, {**recording[1].values, "Pressure": float("nan")}),
    ]
    _run(p, bad + recording[2:50])
    s = outgoing(p.finish())[0].payload
    assert s["rejected"] == {"non_numeric": 1, "not_finite": 1}
    # the first reading has no earlier Current to hold: dropped; the NaN Pressure is held from the reading before
    assert s["readings"] == 49 and s["repaired"] == {"held": 1} and s["final"] is True and s["calibrating"] is True


def test_a_run_without_a_reading_ends_with_a_well_formed_final_summary(tmp_path, model):
    """A replay of a header-only CSV (or a live source whose every line was refused) gave a final summary with a
    null period: README's summary has a period and 'always one final summary'. With no data time, the period is
    the run's, on the wall clock; the counts are zero."""
    import time
    from datetime import datetime

    t0 = time.time()
    p = Pipeline(model, Counters(), tmp_path)
    s = outgoing(p.finish())[0].payload
    t1 = time.time()
    start, end = (datetime.fromisoformat(s[k]).timestamp() for k in ("period_start", "period_end"))
    assert t0 - 0.001 <= start <= end <= t1 + 0.001, (s["period_start"], s["period_end"])
    assert s["final"] is True and s["readings"] == 0 and s["windows"] == 0 and s["score"] is None
    assert (s["alerts_raised"], s["alerts_cleared"], s["rejected"]) == (0, 0, {})


def test_a_silent_live_sensor_closes_its_summary_period_in_data_time(tmp_path, model, recording):
    """Old device timestamps (2020) must not be compared with today's clock: silence is measured monotonic."""
    p = Pipeline(model, Counters(), tmp_path, summary_interval_s=300)
    from agent.parse import iso

    _run(p, recording[:10])
    span = recording[9].ts - recording[0].ts
    arrival = p._last_arrival
    assert p.tick(arrival + 299 - span) == []
    out = outgoing(p.tick(arrival + 301 - span))  # the data so far + the silence: the 300 s period is over
    assert len(out) == 1
    s = out[0].payload
    assert s["readings"] == 10 and s["final"] is False
    assert s["period_end"] == iso(recording[0].ts + 301)  # in the recording's time, not today's


def test_the_final_summary_after_a_silent_period_was_closed_does_not_end_before_it_starts(tmp_path, model, recording):
    """A live sensor's silence closed a period by the clock (data time ran on past its last reading); the final
    summary at shutdown then began where that one ended and ended at the last reading, before its own start."""
    p = Pipeline(model, Counters(), tmp_path, summary_interval_s=300)
    _run(p, recording[:10])
    span = recording[9].ts - recording[0].ts
    closed = outgoing(p.tick(p._last_arrival + 301 - span))[0].payload
    final = outgoing(p.finish())[0].payload
    assert final["period_start"] == closed["period_end"]
    assert final["period_end"] >= final["period_start"], (final["period_start"], final["period_end"])
    assert final["readings"] == 0


def test_summary_reports_drift_against_the_calibrated_normal(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    p = Pipeline(model, Counters(), tmp_path, summary_interval_s=1e9)
    _run(p, recording[:samples])
    first = outgoing(p.finish())[0].payload
    # the period holds exactly the teach-in readings: no drift from themselves
    assert first["calibrating"] is False and all(abs(v) < 1e-6 for v in first["drift"].values())
    sd = p.scorer.normaliser.std[model.sidecar.channels.index("Current")]
    shifted = [Reading(r.ts, {**r.values, "Current": r.values["Current"] + 3 * sd}) for r in recording[samples: samples + 50]]
    _run(p, shifted)
    s = outgoing(p.finish())[0].payload
    assert s["drift"]["Current"] == pytest.approx(3.0, abs=0.6)
    assert abs(s["drift"]["Pressure"]) < 1.5


# -- issue 12 item 1: commands that change nothing change nothing; a threshold change keeps the debounce -------


def _disturbed(model, recording, samples, n=60):
    """Readings after teach-in with Current 8 sigma high from the 10th on: every window scores far over."""
    raw = np.array([[r.values[c] for c in model.sidecar.channels] for r in recording[:samples]])
    sd = raw[:, model.sidecar.channels.index("Current")].std()
    return [Reading(r.ts, {**r.values, "Current": r.values["Current"] + 8 * sd}) if i >= 10 else r
            for i, r in enumerate(recording[samples: samples + n])]


@pytest.mark.parametrize("command", ["null", "same", "alternate"])
def test_threshold_commands_every_other_window_do_not_keep_alerts_down(tmp_path, model, recording, command):
    """The attack of issue 12: a set-threshold every couple of windows reset every sensor's k-of-n state, so that
    scores at many times the threshold never raised an alert."""
    samples = model.sidecar.calibration.samples
    p = Pipeline(model, Counters(), tmp_path, summary_interval_s=1e9)
    _run(p, recording[:samples])
    natural = p.params.threshold
    raised = []
    for i, r in enumerate(_disturbed(model, recording, samples)):
        raised += [m for m in outgoing(p.process(r)) if m.kind == "alert" and m.payload["state"] == "raised"]
        if i % 2:
            if command == "null":
                p.set_threshold(None)  # already the natural threshold: nothing to change
            elif command == "same":
                p.set_threshold(natural * 1.01)
            else:
                p.set_threshold(natural * (1.01 if i % 4 == 1 else 1.02))
    assert raised, "the threshold commands kept the alert from being raised"
    assert raised[0].payload["score"] > 3 * natural


def test_setting_the_threshold_in_force_changes_nothing(tmp_path, model, recording):
    samples = model.sidecar.calibration.samples
    p = Pipeline(model, Counters(), tmp_path, summary_interval_s=1e9)
    _run(p, recording[:samples + 20])
    snap = p.snapshot
    assert p.set_threshold(None) == p.params.threshold
    assert p.snapshot is snap, "a command that changes nothing published a new state"
    assert p.set_threshold(2.0) == 2.0 and p.snapshot.overrides == {"threshold": 2.0} and p.snapshot.threshold == 2.0
    snap = p.snapshot
    assert p.set_threshold(2.0) == 2.0 and p.snapshot is snap
    p.set_threshold(None)
    assert p.snapshot.overrides == {} and p.snapshot.threshold == p.natural_threshold()


# -- issue 12 item 7: idle sensors are forgotten in every per-sensor structure ---------------------------------


def test_idle_sensors_are_forgotten_everywhere_except_with_an_alert_raised(tmp_path, model, recording):
    from agent.clean import CleaningPolicy
    from agent.decide import AlertPolicy, Decisions
    from agent.evidence import EvidenceStore

    class Clock:
        t = 1000.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    store = EvidenceStore(tmp_path / "evidence.db")
    c = Counters()
    p = Pipeline(model, c, tmp_path, calibration_samples=0, summary_interval_s=1e9, evidence=store,
                 decisions=Decisions(c, AlertPolicy(cooldown_s=60)),
                 cleaning=CleaningPolicy(sensor_idle_s=600, max_sensors=100), clock=clock)
    p.set_threshold(1e9)  # no window over: "quiet" has windows and a machine, never an alert
    for r in recording[:15]:
        p.process(Reading(r.ts, r.values, "quiet"))
    p.set_threshold(1e-9)  # every window over: "alarmed" raises
    for r in recording[:40]:
        p.process(Reading(r.ts, r.values, "alarmed"))
    p.decisions.policy.cleared("quiet", 0.0)
    assert p.machines["alarmed"].active and not p.machines["quiet"].active
    for d in (p.cleaner._sensors, p.windower._buf, p.machines, p.recorder._raw):
        assert {"quiet", "alarmed"} <= set(d)
    clock.t += 601
    p.process(Reading(recording[41].ts, recording[41].values, "other"))
    for d in (p.cleaner._sensors, p.windower._buf, p.windower._ts, p.windower._count, p.machines, p.recorder._raw,
              p.decisions.policy._last_clear):
        assert "quiet" not in d, d
    assert "alarmed" in p.cleaner._sensors and p.machines["alarmed"].active  # its clear must still be sent
    assert c.get("sensors.forgotten") == 1 and p.snapshot.sensors == 2
    store.close()


# -- issue 12 item 8: summaries go on when the only sensor's clock steps back ---------------------------------


def test_summaries_follow_a_single_sensors_clock_step(tmp_path, model, recording):
    p = Pipeline(model, Counters(), tmp_path, calibration_samples=0, summary_interval_s=60)
    out = []
    for i, r in enumerate(recording[:400]):
        ts = r.ts - (3600 if i >= 200 else 0)  # the device clock stepped back an hour at reading 200
        out += [m for m in outgoing(p.process(Reading(ts, r.values, r.sensor))) if m.kind == "summary"]
    assert p.counters.get("gap.time_step") == 1
    # without following the step, no summary would close for an hour of data after it
    assert len(out) >= 5, [(m.payload["period_start"], m.payload["period_end"]) for m in out]


def test_a_new_teach_in_forgets_the_scores_of_the_old_fit(tmp_path, model, recording):
    """The calibrate command (Pipeline.recalibrate): scores taken before the new teach-in — hours earlier, against
    the old fit — must not count towards k of n after it. Two windows over the threshold before it, then one
    after it: with the old scores kept, that one window raised at once (3 of 5); now it takes 3 new ones."""
    samples = model.sidecar.calibration.samples
    channels = model.sidecar.channels
    raw = np.array([[r.values[c] for c in channels] for r in recording[:samples]])
    sd = raw[:, channels.index("Current")].std()

    def spike(r):
        return Reading(r.ts, {**r.values, "Current": r.values["Current"] + 40 * sd}, r.sensor)

    p = Pipeline(model, Counters(), tmp_path, summary_interval_s=1e9)
    _run(p, recording[:samples + 20])
    i = samples + 20
    _run(p, [spike(recording[i]), recording[i + 1]])  # 2 windows over the threshold, no alert (k = 3)
    i += 2
    machine = next(iter(p.decisions.machines.values()))
    assert sum(s > machine.threshold for s in machine._scores) == 2 and not machine.active
    p.recalibrate()
    _run(p, recording[i:i + samples])
    i += samples
    assert not p.calibrating
    raised_at = None
    for j in range(12):
        alerts = [m for m in _run(p, [spike(recording[i + j]) if j == 0 else recording[i + j]]) if m.kind == "alert"]
        if alerts:
            raised_at = j
            break
    assert raised_at == 2, raised_at  # the third window holding the spike, not the first


# -- an alert held back by the cooldown is raised when it ends, the fault still on (per reading and in blocks) ----


@pytest.mark.parametrize("blocks", [False, True])
def test_an_alert_held_back_by_the_cooldown_is_raised_when_it_ends_with_the_fault_still_on(tmp_path, model,
                                                                                           recording, blocks):
    from agent.decide import AlertPolicy, Decisions

    c = Counters()
    p = Pipeline(model, c, tmp_path, calibration_samples=0, summary_interval_s=1e9,
                 decisions=Decisions(c, AlertPolicy(cooldown_s=120)))
    assert p.batchable

    def feed(rows):
        if blocks:
            return [e for e in p.process_block(rows) if e.__class__.__name__ == "AlertEvent"]
        return [e for r in rows for e in p.process(r) if e.__class__.__name__ == "AlertEvent"]

    p.set_threshold(1e-9)  # every window over: the fault is on
    first = feed(recording[:60])
    p.set_threshold(1e9)  # every window under: it clears
    cleared = feed(recording[60:120])
    assert [e.state for e in first] == ["raised"] and [e.state for e in cleared] == ["cleared"]
    p.set_threshold(1e-9)  # the fault is back at once, within the cooldown, and stays on
    again = feed(recording[120:400])
    assert c.get("alerts.suppressed") == 1
    assert [e.state for e in again] == ["raised"], again
    due = cleared[0].window_end_ts + 120
    ends = [w for w in (r.ts for r in recording[120:400]) if w >= due]
    assert again[0].window_end_ts == ends[0]  # the first window once the cooldown is over
    assert c.get("alerts.delayed") == 1 and c.get("alerts.raised") == 2


# -- a model swap goes on with the summary period (it restarted it, and lost what was counted since the last one) ----


def test_a_model_swap_keeps_the_summary_period_and_what_it_counted(tmp_path, model, recording):
    """Swapping to a model of other channels (the stages are rebuilt) used to start a new summary period at the
    swap: the readings, windows and alerts counted since the last summary were gone, and the next summary came a
    whole interval after the swap instead of when the period ended. The channels both models read keep their
    statistics; a channel only the new one reads counts from the swap. The score percentiles are the new model's
    only (they were the old one's mixed in, beside the new model's name and threshold)."""
    from agent.detectors import open_model

    c = Counters()
    p = Pipeline(model, c, tmp_path, calibration_samples=30, summary_interval_s=200)
    before = [e for r in recording[:40] for e in p.process(r)]
    assert not p.calibrating
    p.set_threshold(1e-9)  # every window over: an alert raised before the swap ...
    before += [e for r in recording[40:70] for e in p.process(r)]
    p.set_threshold(1e9)  # ... and cleared
    before += [e for r in recording[70:100] for e in p.process(r)]
    assert [e.state for e in before if hasattr(e, "state")] == ["raised", "cleared"]
    start = p.summaries.summariser.period_start
    assert start == recording[0].ts and not any(hasattr(e, "period_start_ts") for e in before)
    p.swap_model(open_model("generic").with_channels(["Current", "Pressure"]), {"path": "generic"})
    after, new_scores, last = [], [], p.last_inference
    for r in recording[100:300]:
        out = p.process(r)
        after += out
        if p.last_inference is not last and not any(hasattr(e, "period_start_ts") for e in after):
            last = p.last_inference  # a window of the period the first summary after the swap closes
            new_scores.append(last.score)
    summaries = [e for e in after if hasattr(e, "period_start_ts")]
    assert summaries, "no summary when the period begun before the swap ended"
    s = summaries[0]
    assert s.period_start_ts == start and s.period_end_ts == next(r.ts for r in recording if r.ts - start >= 200)
    assert s.readings == sum(1 for r in recording[:300] if r.ts < s.period_end_ts)
    assert s.alerts_raised == 1 and s.alerts_cleared == 1 and s.windows > sum(1 for r in recording[100:300] if r.ts < s.period_end_ts)
    assert list(s.channels) == ["Current", "Pressure"]
    assert all(ch["count"] == s.readings for ch in s.channels.values())
    # the scores are the new model's only: the old one's, against its own threshold, are not mixed in
    assert new_scores and s.score is not None
    assert [s.score["p50"], s.score["p95"], s.score["max"]] == [*np.quantile(new_scores, [0.5, 0.95]), max(new_scores)]


def test_a_swap_to_a_model_of_the_same_channels_and_window_also_starts_the_scores_afresh(tmp_path, model, recording):
    """A model of the same channels and window keeps the stages (cleaner, windows): the summariser was not renewed,
    and its percentiles mixed the old model's scores with the new one's."""
    from agent.detectors import open_model

    p = Pipeline(model, Counters(), tmp_path, calibration_samples=30, summary_interval_s=200)
    for r in recording[:100]:
        p.process(r)
    assert not p.calibrating and p.summaries.summariser.windows > 0
    same = open_model("generic").with_channels(list(model.sidecar.channels))
    assert same.sidecar.window == model.sidecar.window  # the same-shape path of the swap
    p.swap_model(same, {"path": "generic"})
    new_scores, last, summary = [], p.last_inference, None
    for r in recording[100:300]:
        out = p.process(r)
        summary = summary or next((e for e in out if hasattr(e, "period_start_ts")), None)
        if summary is None and p.last_inference is not last:
            last = p.last_inference
            new_scores.append(last.score)
    assert summary is not None and new_scores and summary.score is not None
    assert [summary.score["p50"], summary.score["p95"], summary.score["max"]] == [
        *np.quantile(new_scores, [0.5, 0.95]), max(new_scores)]
