"""The pipeline proper: clean → window → (teach-in) → score → decide → outgoing messages.

One object, no threads and no I/O except the calibration file: the daemon's pipeline thread and
``edge-agent evaluate`` drive the very same code, so evaluation measures what the daemon does.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from agent.calibrate import Calibration, Calibrator, sidecar_normaliser
from agent.clean import Cleaner
from agent.counters import Counters
from agent.decide import CLEARED, RAISED, AlertMachine, Summariser, Transition
from agent.infer import Model, Scorer
from agent.records import Inference, Outgoing, Reading
from agent.window import Normaliser, Windower

log = logging.getLogger(__name__)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2020-03-09T10:34:33.000Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DecisionParams:
    threshold: float
    k: int
    n: int
    clear_ratio: float


class Pipeline:
    """Everything between a parsed Reading and the messages for the outbox. Runs on the pipeline thread."""

    def __init__(
        self, model: Model, counters: Counters, device_id: str, state_dir: Path, *,
        summary_interval_s: float = 300.0, calibration_samples: int | None = None,
        threshold: float | None = None, k: int | None = None, n: int | None = None, clear_ratio: float | None = None,
    ):
        sc = model.sidecar
        self.model = model
        self.counters = counters
        self.device_id = device_id
        self.cleaner = Cleaner(sc.channels, sc.valid_ranges, counters)
        self.windower = Windower(sc.window.length, sc.window.hop, len(sc.channels))
        samples = sc.calibration.samples if calibration_samples is None else calibration_samples
        self.calibrator = Calibrator(model, samples, state_dir)
        self._threshold_override = threshold
        self._decision_override = (k, n, clear_ratio)
        self.scorer = Scorer(model, sidecar_normaliser(model))
        self.params = self._params(None)
        self.machines: dict[str, AlertMachine] = {}
        if self.calibrator.result is not None:
            self._apply(self.calibrator.result)
        self.summariser = Summariser(list(sc.channels), summary_interval_s)
        self._rejects_base = counters.snapshot("reject.")
        self.last_inference: Inference | None = None

    # -- configuration ---------------------------------------------------------------------------------------

    def _params(self, cal: Calibration | None) -> DecisionParams:
        d = self.model.sidecar.decision
        k, n, ratio = self._decision_override
        threshold = self._threshold_override
        if threshold is None:
            threshold = cal.threshold if cal is not None and cal.threshold is not None else self.model.sidecar.threshold
        return DecisionParams(threshold, k or d.k, n or d.n, ratio or d.clear_ratio)

    def _apply(self, cal: Calibration) -> None:
        if cal.mean is not None and cal.std is not None:
            self.scorer = Scorer(self.model, Normaliser(np.asarray(cal.mean), np.asarray(cal.std)))
        self.params = self._params(cal)
        for m in self.machines.values():
            m.threshold = self.params.threshold

    @property
    def calibrating(self) -> bool:
        return self.calibrator.active

    # -- the stream ------------------------------------------------------------------------------------------

    def process(self, r: Reading) -> list[Outgoing]:
        """One reading in; the alerts and summaries it causes out."""
        out: list[Outgoing] = []
        v = self.cleaner.clean(r)
        if v is None:
            return out
        if self.summariser.due(v.ts):
            out.append(self._summary(v.ts))
        self.summariser.add_vector(v)
        win = self.windower.push(v)
        if self.calibrator.active:
            cal = self.calibrator.add(v.values)
            if cal is not None:
                self._apply(cal)
                log.info(
                    "teach-in done after %d readings: threshold %.4g", cal.samples, self.params.threshold
                )
            return out
        if win is None:
            return out
        score, contributions, latency = self.scorer.score(win.data)
        inf = Inference(window=win, score=score, contributions=contributions, latency_s=latency)
        self.last_inference = inf
        self.summariser.add_score(score)
        machine = self.machines.get(win.sensor)
        if machine is None:
            p = self.params
            machine = self.machines[win.sensor] = AlertMachine(win.sensor, p.threshold, p.k, p.n, p.clear_ratio)
        t = machine.update(inf)
        if t is not None:
            out.append(self._alert(t))
        return out

    def tick(self, now_ts: float) -> list[Outgoing]:
        """Periodic work while the sensor is silent: close a summary period that is over by ``now_ts``."""
        if self.summariser.due(now_ts):
            return [self._summary(now_ts)]
        return []

    def finish(self) -> list[Outgoing]:
        """The final summary (end of a replay, shutdown)."""
        return [self._summary(None, final=True)]

    # -- messages --------------------------------------------------------------------------------------------

    def _alert(self, t: Transition) -> Outgoing:
        inf = t.inference
        if t.state == RAISED:
            self.summariser.raised += 1
        else:
            self.summariser.cleared += 1
        margin = (t.peak_score - t.threshold) / t.threshold if t.threshold > 0 else None
        top = sorted(inf.contributions.items(), key=lambda kv: -kv[1])[:3]
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "alert_id": t.alert_id,
            "device_id": self.device_id,
            "state": t.state,
            "severity": "critical" if margin is not None and margin >= 1.0 else "warning",
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
        log.warning(
            "ALERT %s sensor=%s score=%.4g threshold=%.4g window_end=%s top=%s",
            t.state, t.sensor, inf.score, t.threshold, payload["window_end"],
            ",".join(f"{c}({s:.0%})" for c, s in top),
        )
        return Outgoing(kind="alert", topic_suffix="alerts", payload=payload, qos=1)

    def _summary(self, end_ts: float | None, final: bool = False) -> Outgoing:
        now = self.counters.snapshot("reject.")
        rejected = {k: v - self._rejects_base.get(k, 0) for k, v in now.items() if v - self._rejects_base.get(k, 0)}
        self._rejects_base = now
        s = self.summariser.take(end_ts, rejected)
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
            payload["period_start"], payload["period_end"], payload["readings"], sum(rejected.values()),
            payload["windows"], payload["alerts_raised"], payload["alerts_cleared"], " (final)" if final else "",
        )
        return Outgoing(kind="summary", topic_suffix="summary", payload=payload, qos=1)
