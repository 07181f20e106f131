"""Typed views of the messages the agent publishes, for the consumers in this repository (``edge-agent monitor``):
the inverse of agent/messages.py (alerts, advice) and agent/status.py (status, stats).

Each ``from_payload`` takes a decoded JSON object and tolerates unknown fields (a newer agent) and missing ones (an
older agent, a last will): what it cannot read is None, NaN or empty. Only a message that cannot be what its topic
says — an alert without ``alert_id`` or with a state other than ``raised``/``cleared``, advice without ``id`` or
with a state other than ``advised``/``no_advice`` — raises :class:`PayloadError`. Alerts and advice come back as
the pipeline's own records (:class:`AlertEvent`, :class:`AdviceEvent`), an asset's status row as the
:class:`PipelineSnapshot` it was built from, so that ``monitor`` reads what ``evaluate`` and the daemon use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from agent.parse import timestamp
from agent.records import AdviceEvent, AlertEvent, PipelineSnapshot

ALERT_STATES = ("raised", "cleared")
ADVICE_STATES = ("advised", "no_advice")
# what agent.messages adds around an advice's fields (the rest of the payload is AdviceEvent.fields)
_ADVICE_ENVELOPE = ("id", "alert_id", "device_id", "asset", "sensor", "created_at")


class PayloadError(ValueError):
    """A message that cannot be what its topic says (counted as a bad message, never raised further)."""


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _or_nan(v: Any) -> float:
    n = _number(v)
    return math.nan if n is None else n


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _time(v: Any) -> float | None:
    """The agent's ISO 8601 text as epoch seconds; None when absent or unreadable."""
    return timestamp(v) if isinstance(v, str) and v else None


def _mapping(v: Any) -> Mapping[str, Any] | None:
    return v if isinstance(v, Mapping) else None


def _texts(v: Any) -> tuple[str, ...]:
    return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()


def message_id(payload: Mapping[str, Any]) -> str | None:
    """The message's own ``id`` (delivery is at least once: a resend has the same one)."""
    return _text(payload.get("id"))


# ================================================================================================ alerts, advice


@dataclass(frozen=True)
class AlertMessage:
    """An ``alerts`` message: the :class:`AlertEvent` and what agent.messages put around it."""

    event: AlertEvent
    id: str | None
    device_id: str | None
    severity: str | None
    created_at: float | None

    @classmethod
    def from_payload(cls, d: Mapping[str, Any], asset: str = "") -> "AlertMessage":
        """``asset``: the asset of the topic it came on (``…/asset/<id>/alerts``), else the payload's."""
        alert_id, state = _text(d.get("alert_id")), d.get("state")
        if alert_id is None:
            raise PayloadError("alert without alert_id")
        if state not in ALERT_STATES:
            raise PayloadError(f"alert state {state!r} is neither raised nor cleared")
        score = _or_nan(d.get("score"))
        top = tuple((str(c["channel"]), s) for c in d.get("top_channels") or [] if isinstance(c, Mapping)
                    and "channel" in c and (s := _number(c.get("share"))) is not None)
        peak = _number(d.get("peak_score"))
        model = _mapping(d.get("model")) or {}
        event = AlertEvent(
            state=state, alert_id=alert_id, sensor=sensor if isinstance(sensor := d.get("sensor"), str) else "",
            score=score, threshold=_or_nan(d.get("threshold")), peak_score=score if peak is None else peak, top=top,
            window_start_ts=_or_nan(_time(d.get("window_start"))), window_end_ts=_or_nan(_time(d.get("window_end"))),
            model={str(k): str(v) for k, v in model.items() if isinstance(v, (str, int, float))},
            receded=d.get("receded") is True,
            evidence_id=_text(d.get("evidence_id")),
            evidence_bytes=_int(d.get("evidence_bytes")) or 0,
            asset=asset or (_text(d.get("asset")) or ""), reason=_text(d.get("reason")) or "",
        )
        return cls(event, message_id(d), _text(d.get("device_id")), _text(d.get("severity")),
                   _time(d.get("created_at")))


@dataclass(frozen=True)
class AdviceMessage:
    """An ``advice`` message: the :class:`AdviceEvent` (its ``fields``: the body agent.advice builds)."""

    event: AdviceEvent
    id: str
    state: str  # "advised" | "no_advice"
    created_at: str | None  # as sent

    @classmethod
    def from_payload(cls, d: Mapping[str, Any], asset: str = "") -> "AdviceMessage":
        mid, state = message_id(d), d.get("state")
        if mid is None:
            raise PayloadError("advice without id")
        if state not in ADVICE_STATES:
            raise PayloadError(f"advice state {state!r} is neither advised nor no_advice")
        fields = {k: v for k, v in d.items() if k not in _ADVICE_ENVELOPE}
        event = AdviceEvent(alert_id=aid if isinstance(aid := d.get("alert_id"), str) else "",
                            sensor=sensor if isinstance(sensor := d.get("sensor"), str) else "", fields=fields,
                            asset=asset or (_text(d.get("asset")) or ""))
        return cls(event, mid, state, _text(d.get("created_at")))


# ================================================================================================ status, stats


def _snapshot(d: Mapping[str, Any]) -> PipelineSnapshot | None:
    """The :class:`PipelineSnapshot` a machine's status part was built from (agent.status._machine): model,
    threshold, overrides and teach-in; None without a model (an asset whose pipeline was never built)."""
    model = _mapping(d.get("model"))
    if model is None:
        return None
    cal = _mapping(d.get("calibration")) or {}
    calibrating = "samples" in cal or "collected" in cal  # while teaching in; after it: fitted_at, warning
    return PipelineSnapshot(
        calibrating=calibrating,
        calibration_collected=_int(cal.get("collected")) or 0,
        calibration_samples=_int(cal.get("samples")) or 0,
        calibration_duration_s=_number(cal.get("duration_s")),
        calibration_elapsed_s=_number(cal.get("elapsed_s")) or 0.0,
        calibration_warning=_text(cal.get("warning")),
        calibration_folded=_int(cal.get("folded_alerts")) or 0,
        calibration_fitted_at=_time(cal.get("fitted_at")),
        calibration_daily=_texts(cal.get("daily_profile")),
        threshold=_number(d.get("threshold")) or 0.0,
        overrides=dict(_mapping(d.get("overrides")) or {}),
        model={str(k): str(v) for k, v in model.items() if isinstance(v, (str, int, float))},
    )


@dataclass(frozen=True)
class AssetStatus:
    """One asset's row of the retained status (``assets.<id>``): its state, why it is degraded, and the snapshot
    of its pipeline (None when it has none: its model was refused at start)."""

    state: str | None
    reasons: tuple[str, ...]
    snapshot: PipelineSnapshot | None

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "AssetStatus":
        return cls(_text(d.get("state")), _texts(d.get("reasons")), _snapshot(d))


@dataclass(frozen=True)
class AssetStats:
    """One asset's part of the stats (``assets.<id>``): counts since the agent started."""

    state: str | None
    windows: int | None
    alerts: Mapping[str, int]  # raised, cleared, suppressed, delayed
    threshold: float | None

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "AssetStats":
        alerts = _mapping(d.get("alerts")) or {}
        return cls(_text(d.get("state")), _int(d.get("windows")),
                   {k: v for k, v in alerts.items() if isinstance(k, str) and _int(v) is not None},
                   _number(d.get("threshold")))


def _assets(v: Any, parse: Any) -> dict[str, Any]:
    return {k: parse(row) for k, row in v.items() if isinstance(k, str) and k and isinstance(row, Mapping)} \
        if isinstance(v, Mapping) else {}


@dataclass(frozen=True)
class StatusPayload:
    """The retained ``status`` (also the birth message, the last will and a clean stop's ``offline``). Without
    assets the gateway's own machine fields (``model``, ``threshold``, ``calibration``, ``source``) are set; with
    assets, ``assets``."""

    state: str | None
    ts: float | None
    device_id: str | None = None
    agent_version: str | None = None
    started_at: str | None = None  # as sent: compared as text to tell a restart
    open_alerts: tuple[str, ...] | None = None  # the alerts open before the start that it carries (offline, a clean
    # stop: every alert open at the stop); None: not said (the last will, an older agent)
    reason: str | None = None  # offline: shutdown, connection lost
    reasons: tuple[str, ...] = ()  # degraded
    model: Mapping[str, Any] | None = None
    threshold: float | None = None
    calibration: Mapping[str, Any] | None = None
    source: Mapping[str, Any] | None = None
    sources: tuple[Mapping[str, Any], ...] = ()
    assets: Mapping[str, AssetStatus] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "StatusPayload":
        return cls(
            state=_text(d.get("state")), ts=_time(d.get("ts")), device_id=_text(d.get("device_id")),
            agent_version=_text(d.get("agent_version")), started_at=_text(d.get("started_at")),
            open_alerts=_texts(d["open_alerts"]) if isinstance(d.get("open_alerts"), list) else None,
            reason=_text(d.get("reason")), reasons=_texts(d.get("reasons")), model=_mapping(d.get("model")),
            threshold=_number(d.get("threshold")), calibration=_mapping(d.get("calibration")),
            source=_mapping(d.get("source")),
            sources=tuple(s for s in d.get("sources") or [] if isinstance(s, Mapping))
            if isinstance(d.get("sources"), list) else (),
            assets=_assets(d.get("assets"), AssetStatus.from_payload),
        )


@dataclass(frozen=True)
class StatsPayload:
    """The periodic ``stats`` (the parts the monitor shows)."""

    state: str | None
    outbox: Mapping[str, Any] | None = None
    bandwidth_ratio: float | None = None
    source: Mapping[str, Any] | None = None
    assets: Mapping[str, AssetStats] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "StatsPayload":
        return cls(state=_text(d.get("state")), outbox=_mapping(d.get("outbox")),
                   bandwidth_ratio=_number(d.get("bandwidth_ratio")), source=_mapping(d.get("source")),
                   assets=_assets(d.get("assets"), AssetStats.from_payload))
