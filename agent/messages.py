"""The one place events become MQTT messages: payloads, topics, and the log line a person reads for each.

A configuration without assets keeps the topics and payloads of before (``alerts``, ``summary``, ``advice`` under
``{prefix}/{device_id}/``); with assets each message names its asset and goes to ``asset/<id>/alerts`` (…) so that
a consumer can subscribe to one asset. Runs on the pipeline thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from agent.advice import explain
from agent.logsafe import clip
from agent.parse import iso
from agent.records import AdviceEvent, AlertEvent, Event, Outgoing, SummaryEvent

log = logging.getLogger(__name__)


def topic_suffix(kind: str, asset: str) -> str:
    """``alerts`` (no assets) or ``asset/<id>/alerts``, relative to ``{prefix}/{device_id}/``."""
    return f"asset/{asset}/{kind}" if asset else kind


class Messages:
    """Turns the events of one asset into outbox messages (and logs them)."""

    def __init__(self, device_id: str, critical_margin: float = 1.0):
        self.device_id = device_id
        self.critical_margin = critical_margin

    def outgoing(self, events: list[Event]) -> list[Outgoing]:
        return [self.one(e) for e in events]

    def one(self, e: Event) -> Outgoing:
        if isinstance(e, AlertEvent):
            return Outgoing(kind="alert", topic_suffix=topic_suffix("alerts", e.asset), payload=self.alert(e), qos=1)
        if isinstance(e, SummaryEvent):
            return Outgoing(kind="summary", topic_suffix=topic_suffix("summary", e.asset), payload=self.summary(e), qos=1)
        if isinstance(e, AdviceEvent):
            return Outgoing(kind="advice", topic_suffix=topic_suffix("advice", e.asset), payload=self.advice(e), qos=1)
        raise TypeError(f"not an event: {e!r}")

    def alert(self, e: AlertEvent) -> dict[str, Any]:
        margin = e.margin
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "alert_id": e.alert_id,
            "device_id": self.device_id,
            **({"asset": e.asset} if e.asset else {}),
            "state": e.state,
            "severity": "critical" if margin is not None and margin >= self.critical_margin else "warning",
            "sensor": e.sensor,
            "score": e.score,
            "threshold": e.threshold,
            "margin": margin,
            "top_channels": [{"channel": c, "share": round(s, 4)} for c, s in e.top],
            "model": dict(e.model),
            "window_start": iso(e.window_start_ts),
            "window_end": iso(e.window_end_ts),
            "created_at": iso(time.time()),
        }
        if e.state == "cleared":
            payload["peak_score"] = e.peak_score
            if e.receded:
                payload["receded"] = True
            if e.reason:
                payload["reason"] = e.reason
        elif e.evidence_id is not None:
            payload["evidence_id"] = e.evidence_id
            payload["evidence_bytes"] = e.evidence_bytes
            if e.evidence is not None:
                payload["evidence"] = dict(e.evidence)
        log.warning(
            "ALERT %s%s sensor=%s score=%.4g threshold=%.4g window_end=%s top=%s",
            e.state, f" asset={clip(e.asset)}" if e.asset else "", clip(e.sensor), e.score, e.threshold,
            payload["window_end"], ",".join(f"{c}({s:.0%})" for c, s in e.top),
        )
        return payload

    def summary(self, e: SummaryEvent) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "device_id": self.device_id,
            **({"asset": e.asset} if e.asset else {}),
            "period_start": iso(e.period_start_ts) if e.period_start_ts is not None else None,
            "period_end": iso(e.period_end_ts) if e.period_end_ts is not None else None,
            "final": e.final,
            "model": dict(e.model),
            "calibrating": e.calibrating,
            "threshold": e.threshold,
            "readings": e.readings,
            "rejected": dict(e.rejected),
            "windows": e.windows,
            "alerts_raised": e.alerts_raised,
            "alerts_cleared": e.alerts_cleared,
            "alerts_suppressed": e.alerts_suppressed,
            "score": dict(e.score) if e.score is not None else None,
            "channels": {k: dict(v) for k, v in e.channels.items()},
            "repaired": dict(e.repaired),
            "gaps": dict(e.gaps),
            "stale_channels": list(e.stale_channels),
            "drift": dict(e.drift) if e.drift is not None else None,
        }
        log.info(
            "SUMMARY%s %s..%s readings=%d rejected=%s windows=%d raised=%d cleared=%d%s",
            f" asset={clip(e.asset)}" if e.asset else "", payload["period_start"], payload["period_end"],
            e.readings, sum(e.rejected.values()), e.windows, e.alerts_raised, e.alerts_cleared,
            " (final)" if e.final else "",
        )
        return payload

    def advice(self, e: AdviceEvent) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "alert_id": e.alert_id,
            "device_id": self.device_id,
            **({"asset": e.asset} if e.asset else {}),
            "sensor": e.sensor,
            **e.fields,
            "created_at": iso(time.time()),
        }
        log.warning("%s", explain(payload))
        return payload
