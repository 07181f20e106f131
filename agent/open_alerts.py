"""Open alerts across a restart: every alert whose ``raised`` is stored in the outbox and whose ``cleared`` is not
yet is kept in the outbox's ``meta`` table (key ``open_alert:<alert_id>``, value the raise's payload as JSON, less
its evidence), written in the same transaction as the row that raises or clears it (``track``, called by
agent.outbox): what is kept is exactly what was sent, and a kill -9 cannot leave the two apart. No new table: the
outbox file does not grow by a page for it (a full 1 MB file system, tests/faults/test_outbox_full.py).

On start (``resume``, before the pipeline thread runs) each open alert goes back to its sensor's decider, raised
with its id, so that a fault that goes on raises nothing new and its end clears it under the same id. Where it
cannot be resumed it is cleared at once with a ``reason`` (README: alerts): never left open on the control room's
screen. A raise the outbox dropped (its id under ``dropped_raise:``) was never seen: forgotten, nothing sent.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any, Mapping

from agent.dead_letters import DROPPED_RAISE  # a raise dropped before its clear came: that clear goes too
from agent.logsafe import clip
from agent.parse import timestamp
from agent.records import AlertEvent

if TYPE_CHECKING:
    from agent.assets import Asset
    from agent.outbox import Outbox
    from agent.pipeline import Pipeline

log = logging.getLogger(__name__)

OPEN_ALERT = "open_alert:"  # meta key + alert id: its raise stored, its clear not yet
_KEPT = ("alert_id", "asset", "sensor", "score", "threshold", "top_channels", "model", "window_start", "window_end")

RECALIBRATED = "recalibrated"  # teach-in runs again (or is not done) after the restart: no scores to judge it by
MODEL_CHANGED = "model changed"  # another model (name or version) than the one that raised it
ASSET_REMOVED = "asset removed"  # its asset is no longer configured
SENSOR_REMOVED = "sensor removed"  # its Modbus device no longer feeds that asset
SUPERSEDED = "superseded"  # a later alert of its sensor is open too (its own clear was dropped on a full disk)
SENSOR_IDLE = "sensor idle"  # its sensor sent nothing for EDGE_AGENT_CLEANING__SENSOR_IDLE_S after the restart


def track(db: sqlite3.Connection, payload: Mapping[str, Any], state: str | None, alert_id: str | None,
          stored: bool) -> None:
    """Inside the outbox's transaction for an alert's row: a stored raise opens it, a clear (stored or dropped)
    closes it."""
    if alert_id is None:
        return
    if state == "raised" and stored:
        kept = {k: payload[k] for k in _KEPT if k in payload}
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (OPEN_ALERT + alert_id, json.dumps(kept)))
    elif state == "cleared":
        db.execute("DELETE FROM meta WHERE key=?", (OPEN_ALERT + alert_id,))


def open_alerts(outbox: "Outbox", tidy: bool = True) -> list[dict[str, Any]]:
    """The open alerts kept in ``outbox`` (raise order); those whose raise the outbox dropped are forgotten here
    (``tidy``: their rows deleted; False: only left out, nothing written: the offline status at a clean stop)."""
    out = []
    with outbox._lock:
        db = outbox._db
        rows = db.execute("SELECT key, value FROM meta WHERE key >= ? AND key < ? ORDER BY rowid",
                          (OPEN_ALERT, OPEN_ALERT[:-1] + ";")).fetchall()
        for key, value in rows:
            alert_id = key[len(OPEN_ALERT):]
            try:
                kept = json.loads(value)
            except (TypeError, ValueError):
                kept = None
            dropped = db.execute("SELECT 1 FROM meta WHERE key=?", (DROPPED_RAISE + alert_id,)).fetchone()
            if not isinstance(kept, dict) or not isinstance(kept.get("sensor"), str) or dropped:
                if tidy:
                    db.execute("DELETE FROM meta WHERE key=?", (key,))  # never on screen (or unreadable): nothing to do
                continue
            kept["alert_id"] = alert_id
            out.append(kept)
    return out


def _why_not(kept: Mapping[str, Any], assets: Mapping[str, "Asset"]) -> str | None:
    """Why the open alert ``kept`` cannot be resumed; None when it can; "" when it stays as it is (its asset is
    down: resumed at a start where its model runs)."""
    asset = assets.get(kept.get("asset") or "")
    if asset is None:
        return ASSET_REMOVED
    if asset.sensors and kept["sensor"] not in asset.sensors:
        return SENSOR_REMOVED
    p = asset.pipeline
    if p is None:
        return ""
    if dict(kept.get("model") or {}) != {"name": p.model.name, "version": p.model.version}:
        return MODEL_CHANGED
    if p.calibrator.active:
        return RECALIBRATED
    return None


def _clear(kept: Mapping[str, Any], reason: str) -> AlertEvent:
    """The clear of an alert that cannot be resumed: the figures of its raise, and why."""
    score = float(kept.get("score") or 0.0)
    return AlertEvent(
        state="cleared", alert_id=kept["alert_id"], sensor=kept["sensor"], score=score,
        threshold=float(kept.get("threshold") or 0.0), peak_score=score,
        top=tuple((c["channel"], c["share"]) for c in kept.get("top_channels") or ()),
        window_start_ts=timestamp(kept.get("window_start")) or 0.0, window_end_ts=timestamp(kept.get("window_end")) or 0.0,
        model=dict(kept.get("model") or {}), asset=kept.get("asset") or "", reason=reason,
    )


def resume(assets: list["Asset"], outbox: "Outbox") -> list[str]:
    """Put every open alert back in its sensor's decider (raised, same id), or clear it with a reason; one INFO
    line. Called once at start, before the pipeline thread runs. Returns the ids of the alerts this run carries
    over, still open (resumed, or left open: its asset is down): the status's ``open_alerts``, by which the
    monitor tells them from the earlier run's alerts it must close (an outbox set aside, an older version's)."""
    by_id = {a.id: a for a in assets}
    resumed = cleared = 0
    carried: list[str] = []
    kept_alerts = open_alerts(outbox)
    latest = {(k.get("asset") or "", k["sensor"]): k["alert_id"] for k in kept_alerts}  # one per sensor (raise order)
    for kept in kept_alerts:
        newer = latest[(kept.get("asset") or "", kept["sensor"])] != kept["alert_id"]
        reason = SUPERSEDED if newer else _why_not(kept, by_id)
        asset = by_id.get(kept.get("asset") or "")
        if reason is None and asset is not None and asset.pipeline is not None:
            p = asset.pipeline
            p.decisions.resume(kept["sensor"], kept["alert_id"], float(kept.get("score") or 0.0), kept, p._clock())
            resumed += 1
            carried.append(kept["alert_id"])
        elif reason:
            messages = asset.messages if asset is not None else assets[0].messages
            outbox.put(messages.one(_clear(kept, reason)))
            (asset or assets[0]).counters.inc("alerts.cleared")
            cleared += 1
            log.warning("alert %s on %s%s raised before the restart cannot be resumed (%s): cleared",
                        kept["alert_id"], clip(kept["sensor"]) or "-",
                        f" of {clip(kept.get('asset'))}" if kept.get("asset") else "", reason)
        else:
            carried.append(kept["alert_id"])
            log.warning("alert %s on %s of %s stays open: its asset is down", kept["alert_id"],
                        clip(kept["sensor"]) or "-", clip(kept.get("asset")))
    if kept_alerts:  # none (the usual start): quiet
        log.info("open alerts from before the restart: %d resumed, %d cleared, %d left open", resumed, cleared,
                 len(kept_alerts) - resumed - cleared)
    return carried


def expire(p: "Pipeline") -> list[AlertEvent]:
    """The clears (``sensor idle``) of the alerts resumed at start whose sensor has sent nothing since, for
    ``sensor_idle_s`` (0: never); a sensor heard since is the decider's as any (its alert clears when its fault
    ends). Periodic work of a live asset (agent.runtime)."""
    d = p.decisions
    if not d.resumed or p.cleaning.sensor_idle_s <= 0:
        return []
    out = []
    now = p._clock()
    for sensor, (kept, at) in list(d.resumed.items()):
        machine = d.machines.get(sensor)
        heard = p.cleaner is not None and sensor in p.cleaner._sensors  # noqa: SLF001
        if heard or kept is None or machine is None or machine.active_id != kept["alert_id"]:
            del d.resumed[sensor]
        elif now - at >= p.cleaning.sensor_idle_s:
            del d.resumed[sensor]
            d.forget(sensor)
            p.counters.inc("alerts.cleared")
            log.warning("alert %s on %s resumed at start: its sensor sent nothing for %.0f s: cleared", kept["alert_id"],
                        clip(sensor) or "-", p.cleaning.sensor_idle_s)
            out.append(_clear(kept, SENSOR_IDLE))
    return out
