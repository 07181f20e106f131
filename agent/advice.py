"""Parameter advice: when a classifier raises an alert, the smallest change within the engineer's bounds that the
same int8 model predicts to be safe, for a person to decide on. The agent writes to no device.

The sidecar's ``advice`` section (models/README.md) declares the adjustable channels (bounds and step) and the
maintenance actions (e.g. a tool change sets tool wear to 0). :func:`search` tries candidates from one lever
(an adjustable channel or an action) up to ``max_channels`` levers, in batched invokes of the model, and keeps
the passing candidate (probability ≤ threshold − margin) nearest to the current values in normalised units.
:class:`Advisor` adds the rate limit and turns a search into the ``advice`` message.

The spec (the sidecar section, its checks) is in agent/advice_spec.py, the search in agent/advice_search.py;
this module re-exports their public names.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Mapping, Sequence

from agent.advice_search import Advice, Lever, search
from agent.advice_spec import MAX_GRID, ActionSpec, AdjustableSpec, AdviceSpec, check_advice, parse_adjustable
from agent.parse import iso
from agent.records import AdviceEvent, Window

__all__ = ["MAX_GRID", "NOTE", "ActionSpec", "AdjustableSpec", "Advice", "AdviceSpec", "Advisor", "Lever",
           "advice_fields", "check_advice", "explain", "parse_adjustable", "search"]

log = logging.getLogger(__name__)

NOTE = "advisory only: for a person to decide; edge-agent writes to no device"



class Advisor:
    """Runs a search when a classifier raises an alert and makes the ``advice`` message; rate-limited in data time.

    ``adjustable`` (from ``EDGE_AGENT_ADVICE__ADJUSTABLE``) replaces the sidecar's adjustable channels when given.
    Runs on the pipeline thread.
    """

    def __init__(self, device_id: str, counters: Any, *, enabled: bool = True, rate_limit_per_hour: int = 30,
                 adjustable: Sequence[AdjustableSpec] | None = None):
        self.device_id = device_id
        self.counters = counters
        self.enabled = enabled
        self.rate_limit_per_hour = rate_limit_per_hour
        self.adjustable = list(adjustable) if adjustable else None
        self._sent: deque[float] = deque()

    def spec_for(self, sidecar: Any) -> AdviceSpec | None:
        """The advice spec in force for a model: the sidecar's, with the configured adjustable channels."""
        spec = getattr(sidecar, "advice", None)
        if self.adjustable is not None:
            spec = (spec or AdviceSpec()).model_copy(update={"adjustable": self.adjustable})
        return spec

    def check(self, sidecar: Any) -> list[str]:
        """Problems of the configured override against a model's channels (empty: fine)."""
        spec = self.spec_for(sidecar)
        return check_advice(sidecar.channels, spec) if spec is not None and self.adjustable is not None else []

    def advise(self, scorer: Any, window: Window, alert_id: str, score: float, threshold: float,
               asset: str = "") -> AdviceEvent | None:
        """The advice for a raised alert on ``window``; None when the model has no advice or the rate limit hit."""
        sc = scorer.model.sidecar
        spec = self.spec_for(sc)
        if not self.enabled or sc.kind != "classifier" or spec is None or not (spec.adjustable or spec.actions):
            return None
        if self.check(sc):
            return None  # refused at start (app.py); a swapped-in model with other channels gets no advice
        now = window.end_ts
        while self._sent and self._sent[0] <= now - 3600.0:
            self._sent.popleft()
        if self.rate_limit_per_hour and len(self._sent) >= self.rate_limit_per_hour:
            self.counters.inc("advice.suppressed")
            log.warning("advice for alert %s suppressed by the rate limit (%d per hour)", alert_id,
                        self.rate_limit_per_hour)
            return None
        self._sent.append(now)
        result = search(scorer, window.data, spec, threshold, score)
        self.counters.inc("advice.advised" if result.found else "advice.none")
        fields = advice_fields(result, spec, sc, window, threshold)
        return AdviceEvent(alert_id=alert_id, sensor=window.sensor, fields=fields, asset=asset)


def advice_fields(result: Advice, spec: AdviceSpec, sidecar: Any, window: Window, threshold: float) -> dict[str, Any]:
    """The body of the ``advice`` message (README: topics and payloads; agent.messages adds id, device and times)."""
    channels = sidecar.channels
    current = {c: float(v) for c, v in zip(channels, window.data[-1])}
    payload: dict[str, Any] = {
        "state": "advised" if result.found else "no_advice",
        "model": {"name": sidecar.name, "version": sidecar.version},
        "probability": result.p_before,
        "threshold": threshold,
        "target": round(threshold - spec.margin, 6),
        "advised_probability": result.p_after,
        "current": current,
        "advised": {c: new for c, (_, new) in result.changes.items()},
        "changes": [{"channel": c, "from": old, "to": new, "delta": round(new - old, 9)}
                    for c, (old, new) in result.changes.items()],
        "actions": list(result.actions),
        "distance": None if result.distance_z is None else round(result.distance_z, 4),
        "bounds": {a.channel: {"min": a.min, "max": a.max, "step": a.step} for a in spec.adjustable},
        "available_actions": [{"name": a.name, "set": a.set} for a in spec.actions],
        "candidates": result.candidates,
        "search_ms": round(result.search_s * 1000, 3),
        "window_end": iso(window.end_ts),
        "note": NOTE,
    }
    if not result.found:
        payload["reason"] = (f"no change of at most {spec.max_channels} of the adjustable channels and actions within "
                             f"bounds brings the probability to {threshold - spec.margin:.4g} or under")
        payload["closest"] = result.closest
    return payload


def explain(payload: Mapping[str, Any]) -> str:
    """The one log line of an advice."""
    head = (f"ADVICE sensor={payload['sensor']} alert={payload['alert_id']} "
            f"p={payload['probability']:.3g}")
    if payload["state"] != "advised":
        return f"{head}: no advice within bounds ({payload['candidates']} candidates, {payload['search_ms']:.2f} ms)"
    by_action = {ch for a in payload["available_actions"] if a["name"] in payload["actions"] for ch in a["set"]}
    parts = [f"{c['channel']} {c['from']:g}->{c['to']:g}" for c in payload["changes"] if c["channel"] not in by_action]
    parts += list(payload["actions"])
    return (f"{head}->{payload['advised_probability']:.3g} (threshold {payload['threshold']:.3g}): "
            f"{'; '.join(parts)} ({payload['candidates']} candidates, {payload['search_ms']:.2f} ms; advisory only)")
