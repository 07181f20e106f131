"""The pipeline proper: clean → window → (teach-in) → score → decide → outgoing messages.

One object, no threads and no I/O except the calibration file: the daemon's pipeline thread and
``edge-agent evaluate`` drive the very same code, so evaluation measures what the daemon does.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.advice import Advisor
from agent.calibrate import Calibration, Calibrator, make_scorer, sidecar_normaliser
from agent.align import Aligner
from agent.clean import Cleaner, CleaningPolicy
from agent.counters import Counters
from agent.decide import CLEARED, RAISED, AlertMachine, AlertPolicy, Summariser, Transition
from agent.evidence import EvidenceStore, evidence_payload
from agent.health import LatencyRing
from agent.infer import Model, ModelError, Scorer
from agent.logsafe import clip
from agent.parse import iso
from agent.records import Inference, Outgoing, PipelineSnapshot, Reading
from agent.window import Windower

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecisionParams:
    threshold: float
    k: int
    n: int
    clear_ratio: float
    recede_ratio: float = 0.0
    refractory: int = 1800

ACTIVE_ROWS_MAX = 2000  # raw readings kept while an alert is active, for its evidence (feedback folds them in)


class Pipeline:
    """Everything between a parsed Reading and the messages for the outbox. Runs on the pipeline thread."""

    def __init__(
        self, model: Model, counters: Counters, device_id: str, state_dir: Path, *,
        summary_interval_s: float = 300.0, calibration_samples: int | None = None,
        calibration_duration_s: float | None = None, channels: list[str] | None = None,
        threshold: float | None = None, k: int | None = None, n: int | None = None, clear_ratio: float | None = None,
        recede_ratio: float | None = None,
        policy: AlertPolicy | None = None, critical_margin: float = 1.0, evidence: EvidenceStore | None = None,
        evidence_windows_before: int = 5, evidence_inline_max_bytes: int = 0, cleaning: CleaningPolicy | None = None,
        clock: Callable[[], float] = time.monotonic, advisor: Advisor | None = None,
    ):
        self.counters = counters
        self.cleaning = cleaning or CleaningPolicy()
        self._clock = clock  # monotonic seconds: silence and idle sensors (a seam for tests)
        self.device_id = device_id
        self.state_dir = Path(state_dir)
        self._calibration_samples = calibration_samples
        self._calibration_duration_s = calibration_duration_s
        self._configured_threshold = threshold
        self._command_threshold: float | None = None  # set-threshold (persisted by the agent in overrides.json)
        self.model_override: dict[str, Any] | None = None  # set by reload-model: the model running is not the configured one
        self._decision_override = (k, n, clear_ratio, recede_ratio)
        self.policy = policy or AlertPolicy()
        self.critical_margin = critical_margin
        self.evidence = evidence
        self.advisor = advisor
        self._evidence_before = evidence_windows_before
        self._evidence_inline = evidence_inline_max_bytes
        self.machines: dict[str, AlertMachine] = {}
        self._suppressed: set[str] = set()
        self.latencies = LatencyRing()
        self.recent: deque[np.ndarray] = deque(maxlen=32)  # raw windows, the canary for a model reload
        self.last_inference: Inference | None = None
        self._last_arrival = time.monotonic()
        self._active_rows: dict[str, list[tuple[float, np.ndarray]]] = {}  # sensor -> readings while its alert is up
        self.snapshot = PipelineSnapshot()
        self._dirty = True  # something the snapshot shows changed since it was published
        self._cleaner_version = -1
        self._next_idle_check = clock() + min(60.0, self.cleaning.sensor_idle_s / 10)
        self.model = model
        self._summary_interval_s = summary_interval_s
        self.cleaner: Cleaner | None = None  # None until the channels are known (a generic detector learns them)
        if getattr(model, "needs_channels", False):
            known = channels or self._stored_channels(model)
            if known:
                model = model.with_channels(known)  # type: ignore[attr-defined]
        if getattr(model, "needs_channels", False):
            self.model = model  # stages are built at the first reading, from its channels
            self.aligner = None
            self.summariser = Summariser([], summary_interval_s)
            self.calibrator = self._new_calibrator(model)  # nothing stored (else the channels were known)
            self.scorer = None
            self.params = self._params(None)
        else:
            self._install(model, summary_interval_s)
        self._counter_bases = {p: counters.snapshot(p) for p in ("reject.", "repaired.", "gap.")}
        self._publish()

    def _new_calibrator(self, model: Any) -> Calibrator:
        sc = model.sidecar
        samples = sc.calibration.samples if self._calibration_samples is None else self._calibration_samples
        duration = self._calibration_duration_s
        if duration and self._calibration_samples is None:
            samples = 0  # a duration replaces the sidecar's count; the window still needs its readings
        if duration:
            samples = max(samples, sc.window.length * 2 + sc.decision.n)
        return Calibrator(model, samples, self.state_dir, duration)

    def _stored_channels(self, model: Any) -> list[str] | None:
        return Calibrator(model, 0, self.state_dir).stored_channels()

    def _bind(self, r: Reading) -> None:
        """A generic detector's channels from the first reading: its numeric values, in their order."""
        from agent.sources.replay import LABEL_COLUMNS

        channels = [k for k, v in r.values.items() if k not in LABEL_COLUMNS and (isinstance(v, float) or _numeric(v))]
        if not channels:
            return
        log.info("channels from the first reading: %s", ", ".join(channels))
        self._install(self.model.with_channels(channels), self._summary_interval_s)  # type: ignore[attr-defined]

    def _install(self, model: Model, summary_interval_s: float | None = None) -> None:
        """Set up every model-dependent stage (at start and on a model swap)."""
        sc = model.sidecar
        old = self.model if self.cleaner is not None else None
        same_shape = old is not None and old.sidecar.channels == sc.channels and old.sidecar.window == sc.window
        self.model = model
        if not same_shape:
            cp = self.cleaning
            self.aligner = Aligner(
                sc.channels, cp.align_period_s, cp.align_tolerance_s, cp.align_sensor, self.counters,
                max_time_jump_s=cp.max_time_jump_s, clock=self._clock,
            ) if cp.align_period_s > 0 else None
            self.cleaner = Cleaner(
                sc.channels, sc.valid_ranges, self.counters, ranges=cp.ranges, max_hold_s=cp.max_hold_s,
                spike_window=cp.spike_window, spike_sigmas=cp.spike_sigmas, on_reset=self._reset_sensor,
                missing_counter="gap.missing_channel" if self.aligner is not None else "reject.missing_channel",
                max_time_jump_s=cp.max_time_jump_s, max_sensors=cp.max_sensors, idle_s=cp.sensor_idle_s,
                on_time_step=self._time_step, clock=self._clock,
            )
            self.windower = Windower(sc.window.length, sc.window.hop, len(sc.channels))
            self._raw: dict[str, deque[tuple[float, np.ndarray]]] = {}
            self.summariser = Summariser(list(sc.channels), summary_interval_s or self.summariser.interval_s)
        else:
            self.cleaner.ranges_from(sc.valid_ranges)
        self._raw_len = sc.window.length + self._evidence_before * sc.window.hop
        self.calibrator = self._new_calibrator(model)
        if not self.calibrator.enabled and make_scorer(model, None) is None:
            raise ModelError(f"{model.name}: learns normal on site: teach-in cannot be off (EDGE_AGENT_CALIBRATION__SAMPLES=0)")
        self.scorer = make_scorer(model, self.calibrator.result)
        self.params = self._params(self.calibrator.result, self._command_threshold)
        self._apply_threshold()
        if self.calibrator.result is not None and self.calibrator.result.warning:
            log.warning("teach-in: %s", self.calibrator.result.warning)

    # -- configuration ---------------------------------------------------------------------------------------

    def _params(self, cal: Calibration | None, threshold: float | None = None) -> DecisionParams:
        """The decision parameters in force: ``threshold`` (a command's), else configured, calibrated or the
        sidecar's; k, n, clear_ratio configured or the sidecar's."""
        d = self.model.sidecar.decision
        k, n, ratio, recede = self._decision_override
        if threshold is None:
            threshold = self._configured_threshold
        if threshold is None:
            threshold = cal.threshold if cal is not None and cal.threshold is not None else self.model.sidecar.threshold
        return DecisionParams(threshold, k or d.k, n or d.n, ratio or d.clear_ratio,
                              d.recede_ratio if recede is None else recede, d.refractory)

    def _apply(self, cal: Calibration) -> None:
        self.scorer = make_scorer(self.model, cal, previous=self.scorer)
        self.params = self._params(cal, self._command_threshold)
        self._apply_threshold()

    def _apply_threshold(self) -> None:
        """Every alert machine takes the parameters in force and re-judges its recent scores by them: a new
        threshold never forgets the debounce (a command sent every few windows must not keep alerts from rising)."""
        p = self.params
        for m in self.machines.values():
            m.retune(p.threshold, p.k, p.n, p.clear_ratio, p.recede_ratio)
        self._dirty = True

    def natural_threshold(self) -> float:
        """The threshold without a command's override: configured, calibrated or the sidecar's."""
        return self._params(self.calibrator.result).threshold

    @property
    def command_threshold(self) -> float | None:
        """The threshold set by command, None when none is in force."""
        return self._command_threshold

    def set_threshold(self, threshold: float | None) -> float:
        """Override the threshold (None: back to configured/calibrated); returns the threshold in force.

        Setting what is already in force changes nothing (no re-judging, no new snapshot)."""
        if threshold == self._command_threshold:
            return self.params.threshold
        self._command_threshold = threshold
        self.params = self._params(self.calibrator.result, threshold)
        self._apply_threshold()
        self._publish()
        return self.params.threshold

    def recalibrate(self) -> None:
        """Start teach-in again (the calibrate command)."""
        self.calibrator.reset()
        self.scorer = make_scorer(self.model, None)
        self.params = self._params(None, self._command_threshold)
        self._apply_threshold()
        self._publish()

    def swap_model(self, model: Model, override: dict[str, Any] | None = None) -> None:
        """Run ``model`` from the next reading on (between two windows: no reading is dropped). ``override``
        describes a model set by command (shown in status and stats), None for the configured one.

        The alert machines forget their recent scores (another model's scores mean nothing against this model's
        threshold); an active alert stays active. A generic detector takes over the channels in use."""
        if getattr(model, "needs_channels", False):
            model = model.with_channels(list(self.model.sidecar.channels))  # type: ignore[attr-defined]
        self._install(model)
        for m in self.machines.values():
            m.reset()
        self.recent.clear()
        self.model_override = override
        self._publish()

    def canary(self, model: Model) -> str | None:
        """Score the recent windows with ``model``; None when sane, else why not."""
        if model.sidecar.channels != self.model.sidecar.channels or model.sidecar.window != self.model.sidecar.window:
            return None  # another input shape: nothing recent to try it on; the sidecar checks passed
        if not isinstance(model, Model) or not isinstance(self.scorer, Scorer):
            return None  # a generic detector is fitted on site: nothing to compare before its teach-in
        fits_on_site = "normalisation" in model.sidecar.calibration.fit
        scorer = Scorer(model, self.scorer.normaliser if fits_on_site else sidecar_normaliser(model))
        for raw in list(self.recent):
            try:
                score = scorer.score(raw)[0]
            except (ValueError, ModelError) as e:
                return f"canary failed: {e}"
            if not np.isfinite(score) or score < 0:
                return f"canary failed: score {score} on a recent window"
            if model.sidecar.kind == "classifier" and not 0 <= score <= 1:
                return f"canary failed: probability {score} out of 0..1"
        return None

    @property
    def calibrating(self) -> bool:
        return self.calibrator.active

    @property
    def stale_channels(self) -> frozenset[str]:
        """Channels now stale (``sensor/channel``), as last published."""
        return self.snapshot.stale_channels

    def overrides(self) -> dict[str, Any]:
        """What a command changed and is still in force (status and stats show it)."""
        out: dict[str, Any] = {}
        if self._command_threshold is not None:
            out["threshold"] = self._command_threshold
        if self.model_override is not None:
            out["model"] = self.model_override
        return out

    def _publish(self) -> None:
        """Replace the snapshot other threads read (pipeline thread only)."""
        cal, m, cleaner = self.calibrator, self.model, self.cleaner
        self._cleaner_version = cleaner.version if cleaner is not None else -1
        self._dirty = False
        result = cal.result
        self.snapshot = PipelineSnapshot(
            calibrating=self.calibrating, calibration_collected=cal.collected, calibration_samples=cal.samples,
            calibration_duration_s=cal.duration_s, calibration_elapsed_s=cal.elapsed_s,
            calibration_warning=result.warning if result is not None else None,
            calibration_folded=len(result.folded) if result is not None else 0,
            calibration_fitted_at=result.fitted_at if result is not None else None,
            threshold=self.params.threshold, overrides=self.overrides(),
            stale_channels=cleaner.stale if cleaner is not None else frozenset(),
            sensors=cleaner.sensor_count if cleaner is not None else 0,
            model={**m.describe(), "runtime": m.runtime, "runtime_version": m.runtime_version},
        )

    def _publish_if_changed(self) -> None:
        if self._dirty or (self.cleaner is not None and self.cleaner.version != self._cleaner_version):
            self._publish()

    def _reset_sensor(self, sensor: str) -> None:
        """A hole in the data: no window may span it and the debounce starts again (an active alert stays)."""
        self.windower.reset(sensor)
        machine = self.machines.get(sensor)
        if machine is not None:
            machine.reset()

    def _time_step(self, sensor: str, delta_s: float) -> None:
        """A sensor's clock stepped and was taken as its new time base. With one sensor, summary periods follow it
        (else a clock stepped back an hour would hold the next summary back an hour); with several, the others
        keep the periods going."""
        s = self.summariser
        if self.cleaner.sensor_count == 1 and s.period_start is not None and s.last_ts is not None:
            s.period_start += delta_s
            s.last_ts += delta_s

    def _forget_idle(self) -> None:
        """Forget sensors silent for ``sensor_idle_s`` in every per-sensor structure (at most every tenth of it);
        a sensor whose alert is raised is kept until it clears: its clear must still be sent."""
        now = self._clock()
        if now < self._next_idle_check:
            return
        self._next_idle_check = now + min(60.0, self.cleaning.sensor_idle_s / 10)
        for sensor in self.cleaner.idle_sensors():
            machine = self.machines.get(sensor)
            if machine is not None and machine.active:
                continue
            self.cleaner.forget(sensor)
            self.windower.reset(sensor)
            self.machines.pop(sensor, None)
            self._raw.pop(sensor, None)
            self.policy.forget(sensor)
            self.counters.inc("sensors.forgotten")
            log.info("sensor %s forgotten after %.0f s without a reading", clip(sensor) or "-", self.cleaning.sensor_idle_s)

    # -- the stream ------------------------------------------------------------------------------------------

    def process(self, r: Reading) -> list[Outgoing]:
        """One reading in; the alerts and summaries it causes out."""
        if self.cleaner is None:
            self._bind(r)
            if self.cleaner is None:
                self.counters.inc("reject.no_channels")
                return []
        if self.cleaning.sensor_idle_s > 0:  # first: a new sensor may take the place of an idle one
            self._forget_idle()
        if self.aligner is None:
            out = self._process(r)
        else:
            out = [m for a in self.aligner.add(r) for m in self._process(a)]
        self._publish_if_changed()
        return out

    def _process(self, r: Reading) -> list[Outgoing]:
        out: list[Outgoing] = []
        v = self.cleaner.clean(r)
        if v is None:
            return out
        if self.summariser.due(v.ts):
            out.append(self._summary(v.ts))
        self.summariser.add_vector(v)
        self._last_arrival = time.monotonic()
        if self.evidence is not None:  # the raw readings behind an alert, kept only where evidence is stored
            raw = self._raw.get(v.sensor)
            if raw is None:
                raw = self._raw[v.sensor] = deque(maxlen=self._raw_len)
            raw.append((v.ts, v.values))
            active = self._active_rows.get(v.sensor)
            if active is not None and len(active) < ACTIVE_ROWS_MAX:
                active.append((v.ts, v.values))
        win = self.windower.push(v)
        if self.calibrator.active:
            self._dirty = True  # teach-in progress
            cal = self.calibrator.add(v.values, v.ts)
            if cal is not None:
                self._apply(cal)
                log.info(
                    "teach-in done after %d readings: threshold %.4g", self.calibrator.collected, self.params.threshold
                )
                if cal.warning:
                    log.warning("teach-in: %s", cal.warning)
            return out
        if win is None or self.scorer is None:
            return out
        score, contributions, latency = self.scorer.score(win.data, win.sensor)
        inf = Inference(window=win, score=score, contributions=contributions, latency_s=latency)
        self.last_inference = inf
        self.latencies.add(latency)
        self.recent.append(win.data)
        self.counters.inc("pipeline.windows")
        self.summariser.add_score(score)
        machine = self.machines.get(win.sensor)
        if machine is None:
            p = self.params
            machine = self.machines[win.sensor] = AlertMachine(
                win.sensor, p.threshold, p.k, p.n, p.clear_ratio, p.recede_ratio, p.refractory)
        t = machine.update(inf)
        if t is None:
            return out
        if t.state == RAISED and not self.policy.allow(t.sensor, win.end_ts):
            self._suppressed.add(t.alert_id)
            self.counters.inc("alerts.suppressed")
            self.summariser.suppressed += 1
            log.warning("alert on %s suppressed by cooldown/rate limit (score %.4g)", clip(t.sensor), score)
            return out
        if t.state == CLEARED:
            self.policy.cleared(t.sensor, win.end_ts)
            if t.alert_id in self._suppressed:
                self._suppressed.discard(t.alert_id)
                return out
        out.append(self._alert(t))
        if t.state == RAISED and self.advisor is not None:  # advice for a person, from the same model (agent/advice.py)
            advice = self.advisor.advise(self.scorer, win, out[-1].payload, t.threshold)
            if advice is not None:
                out.append(advice)
        return out

    def tick(self, mono_now: float | None = None) -> list[Outgoing]:
        """Periodic work while a live sensor is silent: close a summary period that is over.

        Data time goes on from the last reading's timestamp by the monotonic time elapsed since it arrived, so a
        device whose clock is off (or that replays old data) neither closes periods early nor jumps time.
        """
        if self.cleaner is not None:
            self.cleaner.check_silence()
            if self.cleaning.sensor_idle_s > 0:
                self._forget_idle()
        self._publish_if_changed()
        if self.summariser.last_ts is None:
            return []
        data_now = self.summariser.last_ts + ((time.monotonic() if mono_now is None else mono_now) - self._last_arrival)
        if self.summariser.due(data_now):
            return [self._summary(data_now)]
        return []

    def finish(self) -> list[Outgoing]:
        """The last aligned readings and the final summary (end of a replay, shutdown)."""
        out = [m for a in self.aligner.flush() for m in self._process(a)] if self.aligner is not None else []
        out.append(self._summary(None, final=True))
        self._publish_if_changed()
        return out

    # -- messages --------------------------------------------------------------------------------------------

    def _alert(self, t: Transition) -> Outgoing:
        inf = t.inference
        if t.state == RAISED:
            self.summariser.raised += 1
        else:
            self.summariser.cleared += 1
        self.counters.inc(f"alerts.{t.state}")
        margin = (t.peak_score - t.threshold) / t.threshold if t.threshold > 0 else None
        top = sorted(inf.contributions.items(), key=lambda kv: -kv[1])[:3]
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "alert_id": t.alert_id,
            "device_id": self.device_id,
            "state": t.state,
            "severity": "critical" if margin is not None and margin >= self.critical_margin else "warning",
            "sensor": t.sensor,
            "score": inf.score,
            "threshold": t.threshold,
            "margin": margin,
            "top_channels": [{"channel": c, "share": round(s, 4)} for c, s in top],
            "model": {"name": self.model.name, "version": self.model.version},
            "window_start": iso(inf.window.start_ts),
            "window_end": iso(inf.window.end_ts),
            "created_at": iso(time.time()),
        }
        if t.state == CLEARED:
            payload["peak_score"] = t.peak_score
            if t.receded:
                payload["receded"] = True
            self._extend_evidence(t)
        elif self.evidence is not None:
            self._keep_evidence(t, payload)
            self._active_rows[t.sensor] = []
        log.warning(
            "ALERT %s sensor=%s score=%.4g threshold=%.4g window_end=%s top=%s",
            t.state, clip(t.sensor), inf.score, t.threshold, payload["window_end"],
            ",".join(f"{c}({s:.0%})" for c, s in top),
        )
        return Outgoing(kind="alert", topic_suffix="alerts", payload=payload, qos=1)

    def _extend_evidence(self, t: Transition) -> None:
        """The readings while the alert was active join its evidence (so feedback can fold the whole event in)."""
        rows = self._active_rows.pop(t.sensor, None)
        if not rows or self.evidence is None:
            return
        try:
            self.evidence.extend(t.alert_id, [(ts, [float(x) for x in v]) for ts, v in rows])
        except Exception as e:  # noqa: BLE001 - evidence is a bonus
            log.error("could not extend evidence of alert %s: %s", t.alert_id, e)

    def learn(self, alert_id: str, label: str) -> dict[str, Any]:
        """An operator's label: ``false_positive`` folds the alert's readings into the normal model (refit, kept
        across restarts); ``true_positive`` undoes an earlier fold. Returns what changed."""
        if self.calibrator is None or not self.calibrator.enabled or self.calibrator.result is None:
            return {"learned": False, "why": "no teach-in to fold the readings into"}
        if label == "true_positive":
            cal = self.calibrator.unfold(alert_id)
            if cal is None:
                return {"learned": False}
            self._apply(cal)
            log.info("feedback: alert %s is a fault after all: its readings are no longer normal (threshold %.4g)",
                     alert_id, self.params.threshold)
            return {"learned": True, "unfolded": True, "threshold": self.params.threshold}
        ev = self.evidence.get(alert_id) if self.evidence is not None else None
        if not ev or ev.get("channels") != list(self.model.sidecar.channels) or not ev.get("values"):
            return {"learned": False, "why": "no evidence of this alert for the current channels"}
        rows = np.asarray(ev["values"], dtype=np.float64)
        cal = self.calibrator.fold(alert_id, rows)
        if cal is None:
            return {"learned": False, "why": "the teach-in readings are not stored"}
        self._apply(cal)
        log.info("feedback: alert %s was normal: %d of its readings folded into the normal model (threshold %.4g)",
                 alert_id, len(rows), self.params.threshold)
        return {"learned": True, "folded_readings": int(len(rows)), "threshold": self.params.threshold}

    def _keep_evidence(self, t: Transition, payload: dict[str, Any]) -> None:
        rows = list(self._raw.get(t.sensor, ()))
        ev = evidence_payload(
            self.model.sidecar.channels, rows, alert_id=t.alert_id, sensor=t.sensor, score=t.inference.score,
            threshold=t.threshold, window_start=payload["window_start"], window_end=payload["window_end"],
            model=self.model.describe(),
        )
        assert self.evidence is not None
        try:
            size = self.evidence.add(t.alert_id, t.sensor, ev)
        except Exception as e:  # noqa: BLE001 - evidence is a bonus: the alert must go out regardless
            log.error("could not store evidence of alert %s: %s", t.alert_id, e)
            return
        if not size:
            return
        payload["evidence_id"] = t.alert_id
        payload["evidence_bytes"] = size
        if self._evidence_inline and size <= self._evidence_inline:
            payload["evidence"] = ev

    def _counted_since_last_summary(self, prefix: str) -> dict[str, int]:
        """The counters under ``prefix`` that moved since the last summary, by how much."""
        now, base = self.counters.snapshot(prefix), self._counter_bases[prefix]
        self._counter_bases[prefix] = now
        return {k: v - base.get(k, 0) for k, v in now.items() if v - base.get(k, 0)}

    def _drift(self, channels: dict[str, dict[str, Any]]) -> dict[str, float] | None:
        """Each channel's mean in the period against the normal it was calibrated on, in sigma (None while the
        model has no normal to compare with: teach-in running, or a model without normalisation)."""
        norm = getattr(self.scorer, "normaliser", None)
        if self.calibrating or norm is None or norm.mean is None or norm.std is None:
            return None
        return {
            name: round(float((st["mean"] - mu) / sd), 3)
            for (name, st), mu, sd in zip(channels.items(), norm.mean, norm.std) if st.get("count")
        }

    def _summary(self, end_ts: float | None, final: bool = False) -> Outgoing:
        s = self.summariser.take(end_ts, self._counted_since_last_summary("reject."))
        s["repaired"] = self._counted_since_last_summary("repaired.")
        s["gaps"] = self._counted_since_last_summary("gap.")
        s["stale_channels"] = sorted(self.cleaner.stale)
        s["drift"] = self._drift(s["channels"])
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "device_id": self.device_id,
            "period_start": iso(s.pop("period_start")),
            "period_end": iso(s.pop("period_end")),
            "final": final,
            "model": {"name": self.model.name, "version": self.model.version},
            "calibrating": self.calibrating,
            "threshold": self.params.threshold,
            **s,
        }
        log.info(
            "SUMMARY %s..%s readings=%d rejected=%s windows=%d raised=%d cleared=%d%s",
            payload["period_start"], payload["period_end"], payload["readings"], sum(payload["rejected"].values()),
            payload["windows"], payload["alerts_raised"], payload["alerts_cleared"], " (final)" if final else "",
        )
        return Outgoing(kind="summary", topic_suffix="summary", payload=payload, qos=1)


def _numeric(v: Any) -> bool:
    try:
        float(str(v).strip())
    except ValueError:
        return False
    return True
