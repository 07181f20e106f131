"""The JSON form of the monitor's fleet: one dict per gateway (what the table shows, plus the details behind it)
and, for a gateway with assets, one dict per asset under ``assets``. ``--json`` prints these; the table
(agent.monitoring.render) is made from them."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from agent.monitoring.fleet import STATE_RANK, AssetSeen, Device
from agent.parse import iso
from agent.payloads import AlertMessage
from agent.records import PipelineSnapshot


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _model(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return {"name": m.get("name"), "version": m.get("version")} if m else None


def device_row(d: Device, now: float) -> dict[str, Any]:
    """A device as a JSON-able dict. A gateway with assets also has ``assets``: a row per asset, most severe first."""
    st, stats = d.status, d.stats
    state = st.state if st is not None else None
    outbox = stats.outbox if stats is not None else None
    dropped = None
    if outbox is not None and isinstance(outbox.get("dropped"), dict):
        dropped = sum(v for v in outbox["dropped"].values() if isinstance(v, (int, float)))
    last = d.last_seen
    row: dict[str, Any] = {
        "device_id": d.device_id,
        "state": d.state,
        "stale": d.stale(now),
        "last_seen": iso(last),
        "age_s": round(now - last, 1) if last is not None else None,
        "model": _model(d.model),
        "open_alerts": len(d.open_alerts),
        "open_alert_ids": sorted(d.open_alerts),
        "outbox_depth": outbox.get("depth") if outbox else None,
        "outbox_dropped": dropped,
        "bandwidth_ratio": stats.bandwidth_ratio if stats is not None else None,
        "reasons": list(st.reasons) if st is not None and state == "degraded" else [],
        "reason": st.reason if st is not None and state == "offline" else None,
        "calibration": st.calibration if st is not None and state == "calibrating" else None,
        "source": (stats.source if stats is not None else None) or (st.source if st is not None else None),
        "agent_version": st.agent_version if st is not None else None,
        "started_at": d.started_at,
        "threshold": st.threshold if st is not None else None,
        "stats_interval_s": round(d.stats_interval, 3) if d.stats_interval is not None else None,
        "alerts_seen": {"raised": d.raised_seen, "cleared": d.cleared_seen},
        "last_advice": d.last_advice,
        "have": {"status": st is not None, "stats": stats is not None},
    }
    assets = d.assets
    if assets:
        rows = [asset_row(d, a, now) for a in assets]
        row["assets"] = sorted(rows, key=lambda r: (STATE_RANK.get(r["state"], 3), r["asset_id"]))
    return row


def _teach_in(snap: PipelineSnapshot) -> dict[str, Any] | None:
    """The teach-in as the status told it (its progress is as old as that status)."""
    if not snap.calibrating:
        return None
    out: dict[str, Any] = {"samples": snap.calibration_samples, "collected": snap.calibration_collected,
                           "progress": round(snap.calibration_progress, 3)}
    if snap.calibration_duration_s:
        out.update(duration_s=snap.calibration_duration_s, elapsed_s=snap.calibration_elapsed_s)
    return out


def _last_alert(msg: AlertMessage | None, at: float | None, now: float) -> dict[str, Any] | None:
    if msg is None or at is None:
        return None
    e = msg.event
    return {"alert_id": e.alert_id, "state": e.state, "sensor": e.sensor, "severity": msg.severity,
            "score": _finite(e.score), "threshold": _finite(e.threshold), "reason": e.reason or None,
            "window_end": iso(e.window_end_ts) if math.isfinite(e.window_end_ts) else None,
            "received": iso(at), "age_s": round(now - at, 1)}


def asset_row(d: Device, asset: str, now: float) -> dict[str, Any]:
    """One asset of a gateway: its state, why it is degraded, its model and teach-in (from the status), its open
    and last alerts and last advice (from its topics), its windows and alerts since the agent started (stats)."""
    state = d.asset_state(asset)
    status = d.asset_status.get(asset)
    snap = status.snapshot if status is not None else None
    counts = d.stats.assets.get(asset) if d.stats is not None else None
    seen = d.seen_assets.get(asset) or AssetSeen()
    open_ids = sorted(aid for aid, a in d.open_alerts.items() if a.asset == asset)
    return {
        "asset_id": asset,
        "state": state,
        "reasons": list(status.reasons) if status is not None and state == "degraded" else [],
        "model": _model(snap.model) if snap is not None else None,
        "threshold": snap.threshold if snap is not None else None,
        "calibration": _teach_in(snap) if snap is not None else None,
        "calibration_warning": snap.calibration_warning if snap is not None else None,
        "open_alerts": len(open_ids),
        "open_alert_ids": open_ids,
        "last_alert": _last_alert(seen.last_alert, seen.last_alert_at, now),
        "alerts_seen": {"raised": seen.raised_seen, "cleared": seen.cleared_seen},
        "alerts": dict(counts.alerts) if counts is not None else None,
        "windows": counts.windows if counts is not None else None,
        "last_advice": seen.last_advice,
    }


def snapshot_json(rows: list[dict[str, Any]], now: float, **extra: Any) -> str:
    """A snapshot as one line of JSON: ``{"ts", "devices": [...], ...extra}``."""
    return json.dumps({"ts": iso(now), **extra, "devices": rows}, separators=(",", ":"))
