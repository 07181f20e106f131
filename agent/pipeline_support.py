"""The parts of a pipeline that do not run per reading: the canary that tries a new model on the recent windows before
a reload, the operator's feedback that refits teach-in, the alert event built from a transition (with its
evidence), a generic detector's channels once known (agent.gather), and forgetting idle sensors. Split from
agent.pipeline, whose methods call these."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.calibrate import Calibrator, make_scorer, sidecar_normaliser
from agent.decide import CLEARED, RAISED, Transition
from agent.infer import Model, ModelError, Scorer
from agent.logsafe import clip
from agent.parse import iso
from agent.records import AlertEvent, Reading

if TYPE_CHECKING:
    from agent.pipeline import Pipeline

log = logging.getLogger("agent.pipeline")  # the pipeline's own lines, as before the split


def canary(p: "Pipeline", model: Any) -> str | None:
    """Score the recent windows with ``model``; None when sane, else why not."""
    if model.sidecar.channels != p.model.sidecar.channels or model.sidecar.window != p.model.sidecar.window:
        return None  # another input shape: nothing recent to try it on; the sidecar checks passed
    if not isinstance(model, Model) or not isinstance(p.scorer, Scorer):
        return None  # a generic detector is fitted on site: nothing to compare before its teach-in
    fits_on_site = "normalisation" in model.sidecar.calibration.fit
    scorer = Scorer(model, p.scorer.normaliser if fits_on_site else sidecar_normaliser(model))
    for raw in list(p.recent):
        try:
            score = scorer.score(raw)[0]
        except (ValueError, ModelError) as e:
            return f"canary failed: {e}"
        if not np.isfinite(score) or score < 0:
            return f"canary failed: score {score} on a recent window"
        if model.sidecar.kind == "classifier" and not 0 <= score <= 1:
            return f"canary failed: probability {score} out of 0..1"
    return None


def refuse_unrunnable(p: "Pipeline", model: Any, calibrator: Any) -> None:
    """ModelError when ``model`` cannot run in this pipeline, raised before anything is replaced: it learns normal on
    site and teach-in is off, or its decision defaults meet configured ones it cannot run with (k > n)."""
    if not calibrator.enabled and make_scorer(model, None) is None:
        raise ModelError(f"{model.name}: learns normal on site: teach-in cannot be off (EDGE_AGENT_CALIBRATION__SAMPLES=0)")
    why = p.decisions.unfit(model.sidecar.decision)
    if why is not None:
        raise ModelError(f"{model.name}: {why}")


def learn(p: "Pipeline", alert_id: str, label: str) -> dict[str, Any]:
    """An operator's label: ``false_positive`` folds the alert's readings into the normal model (refit, kept
    across restarts); ``true_positive`` undoes an earlier fold. Returns what changed."""
    cal = p.calibrator
    if not cal.enabled or cal.result is None:
        return {"learned": False, "why": "no teach-in to fold the readings into"}
    if label == "true_positive":
        new = cal.unfold(alert_id)
        if new is None:
            return {"learned": False}
        p._apply(new)
        p._publish()
        log.info("feedback: alert %s is a fault after all: its readings are no longer normal (threshold %.4g)",
                 clip(alert_id), p.params.threshold)
        return {"learned": True, "unfolded": True, "threshold": p.params.threshold}
    if alert_id in (cal.result.folded or ()):  # labelled false again: refitting on the same readings changes nothing
        return {"learned": False, "why": "already folded into the normal model"}
    rec = p.recorder
    rows = rec.rows(alert_id) if rec is not None else None
    if rec is None or rows is None:
        return {"learned": False, "why": "no evidence of this alert for the current channels"}
    new = cal.fold(alert_id, np.asarray(rows, dtype=np.float64), rec.times(alert_id))
    if new is None:
        return {"learned": False, "why": "the teach-in readings are not stored"}
    p._apply(new)
    p._publish()
    log.info("feedback: alert %s was normal: %d of its readings folded into the normal model (threshold %.4g)",
             clip(alert_id), len(rows), p.params.threshold)
    return {"learned": True, "folded_readings": len(rows), "threshold": p.params.threshold}


def alert_event(p: "Pipeline", t: Transition) -> AlertEvent:
    inf = t.inference
    s = p.summaries.summariser
    if t.state == RAISED:
        s.raised += 1
    else:
        s.cleared += 1
    top = tuple(sorted(inf.contributions.items(), key=lambda kv: -kv[1])[:3])
    model = {"name": p.model.name, "version": p.model.version}
    evidence_id, size, inline = None, 0, None
    if p.recorder is not None:
        if t.state == RAISED:
            evidence_id, size, inline = p.recorder.raised(
                t.alert_id, t.sensor, score=inf.score, threshold=t.threshold,
                window_start=iso(inf.window.start_ts), window_end=iso(inf.window.end_ts),
                model=p.model.describe(), **({"asset": p.asset} if p.asset else {}))
        else:
            p.recorder.cleared(t.alert_id, t.sensor)
    return AlertEvent(
        state=t.state, alert_id=t.alert_id, sensor=t.sensor, score=inf.score, threshold=t.threshold,
        peak_score=t.peak_score, top=top, window_start_ts=inf.window.start_ts, window_end_ts=inf.window.end_ts,
        model=model, receded=t.state == CLEARED and t.receded, evidence_id=evidence_id, evidence_bytes=size,
        evidence=inline, asset=p.asset,
    )


def stored_channels(p: "Pipeline", model: Any) -> list[str] | None:
    """A generic detector's channels as its teach-in stored them, and the sensors of each when they were gathered:
    only those fill them again after a restart (a topic first heard now is ``reject.not_a_channel``, agent.align)."""
    stored = Calibrator(model, 0, p.state_dir)
    known = stored.stored_channels()
    if known:
        p.gather.sources = stored.stored_sources()
    return known


def bind_channels(p: "Pipeline", r: Reading) -> None:
    """A generic detector's channels, once the readings so far name them (agent.gather)."""
    channels = p.gather.add(r)
    if channels:
        p._install(p.model.with_channels(channels))


def forget_idle(p: "Pipeline") -> None:
    """Forget sensors silent for ``sensor_idle_s`` in every per-sensor structure (at most every tenth of it);
    a sensor whose alert is raised is kept until it clears: its clear must still be sent."""
    now = p._clock()
    if now < p._next_idle_check or p.cleaner is None:
        return
    p._next_idle_check = now + min(60.0, p.cleaning.sensor_idle_s / 10)
    for sensor in p.cleaner.idle_sensors():
        if p.decisions.active(sensor):
            continue
        p.cleaner.forget(sensor)
        p.windower.reset(sensor)
        p.decisions.forget(sensor)
        if p.recorder is not None:
            p.recorder.forget(sensor)
        p.counters.inc("sensors.forgotten")
        log.info("sensor %s forgotten after %.0f s without a reading", clip(sensor) or "-", p.cleaning.sensor_idle_s)
