"""The monitor's fleet state: what is known about every gateway under the prefix, fed one message at a time by
:meth:`Fleet.handle` (topic, payload, retained, receipt time); pure, no I/O. :func:`device_row` is a device's JSON
form, which the table (agent.monitoring.render) and ``--json`` show.

Rules (also in docs/monitor.md):

* State: that of the latest ``status`` or ``stats`` received (``stats`` carries the state too); ``unknown``
  until one of them arrived.
* Last seen: the latest receipt of a status, stats or alert message. A *retained* status is not news (the
  broker replays it on subscription), so for it the status's own ``ts`` counts, never later than its receipt.
* Stale: a device not ``offline`` whose last ``stats`` is older than 3x its usual stats interval (the median of
  the gaps between the stats received; until two arrived, the agent's default of 300 s).
* Open alerts: a ``raised`` adds its ``alert_id``, a ``cleared`` removes it; messages are deduplicated on ``id``
  (delivery is at least once). Alerts raised before the monitor started are not known (alerts are not retained).
  A status with a new ``started_at`` (the agent restarted, and an agent does not carry open alerts over a
  restart) closes the open alerts created before it.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from agent.parse import iso, timestamp

DEFAULT_STATS_INTERVAL_S = 300.0  # the agent's default EDGE_AGENT_STATS_INTERVAL_S
STALE_FACTOR = 3.0
SEEN_IDS_MAX = 50_000
CLEARED_IDS_MAX = 1_000

STATE_RANK = {"offline": 0, "degraded": 1, "stale": 2, "unknown": 3, "calibrating": 4, "online": 5}
KINDS = ("status", "stats", "alerts", "advice")


# ================================================================================================ time helpers


def parse_iso(text: Any) -> float | None:
    """The agent's ISO 8601 timestamps as epoch seconds; None when absent or unreadable."""
    return timestamp(text) if isinstance(text, str) and text else None



# ================================================================================================ fleet state


@dataclass
class Device:
    """What the monitor knows about one gateway."""

    device_id: str
    first_seen: float
    status: dict[str, Any] | None = None
    status_at: float | None = None  # receipt (retained: the status's own ts)
    stats: dict[str, Any] | None = None
    stats_at: float | None = None
    last_alert_at: float | None = None
    model: dict[str, Any] | None = None  # kept from the last status that had one (the last will has none)
    started_at: str | None = None
    stats_times: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    open_alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    cleared_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    raised_seen: int = 0
    cleared_seen: int = 0
    last_advice: dict[str, Any] | None = None

    # -- derived ---------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The state of the latest status or stats received."""
        candidates = []
        if self.status is not None and isinstance(self.status.get("state"), str):
            candidates.append((self.status_at or 0.0, 1, self.status["state"]))
        if self.stats is not None and isinstance(self.stats.get("state"), str):
            candidates.append((self.stats_at or 0.0, 0, self.stats["state"]))
        if not candidates:
            return "unknown"
        return max(candidates)[2]

    @property
    def last_seen(self) -> float | None:
        times = [t for t in (self.status_at, self.stats_at, self.last_alert_at) if t is not None]
        return max(times) if times else None

    @property
    def stats_interval(self) -> float | None:
        """The usual gap between stats messages (median of the last few), None until two arrived."""
        t = list(self.stats_times)
        gaps = [b - a for a, b in zip(t, t[1:]) if b > a]
        return statistics.median(gaps) if gaps else None

    def stale(self, now: float) -> bool:
        """Not offline, and stats older than 3x their usual interval (since first seen when none came yet)."""
        if self.state == "offline":
            return False
        interval = self.stats_interval or DEFAULT_STATS_INTERVAL_S
        since = self.stats_at if self.stats_at is not None else self.first_seen
        return now - since > STALE_FACTOR * interval

    @property
    def complete(self) -> bool:
        """Enough for a snapshot: a status and a stats message — or an offline status (no stats will come)."""
        if self.status is None:
            return False
        return self.stats is not None or self.status.get("state") == "offline"

    def rank(self, now: float) -> float:
        st = self.state
        if st != "offline" and self.stale(now):
            return min(STATE_RANK.get(st, 3), STATE_RANK["stale"])
        return STATE_RANK.get(st, 3)


class Fleet:
    """Every device seen under the prefix. Feed it with :meth:`handle`; thread safe."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.devices: dict[str, Device] = {}
        self._seen_ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.bad_messages = 0
        self.duplicates = 0

    def split(self, topic: str) -> tuple[str, str] | None:
        """``{prefix}/{device}/{kind}`` → (device, kind), None for any other topic."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or not parts[0] or parts[1] not in KINDS:
            return None
        return parts[0], parts[1]

    def handle(self, topic: str, raw: bytes | str | dict[str, Any], retained: bool = False, now: float | None = None) -> bool:
        """Take one message; False when it is not ours, unreadable or a duplicate. Never raises on bad input."""
        now = time.time() if now is None else now
        where = self.split(topic)
        if where is None:
            return False
        device_id, kind = where
        payload: Any = raw
        if isinstance(raw, (bytes, bytearray, str)):
            try:
                payload = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError):
                payload = None
        with self._lock:
            if not isinstance(payload, dict):
                if kind == "status" and not raw:
                    self.devices.pop(device_id, None)  # retained status cleared on the broker: forget the device
                    return True
                self.bad_messages += 1
                return False
            dev = self.devices.get(device_id)
            if dev is None:
                dev = self.devices[device_id] = Device(device_id, first_seen=now)
            if kind == "status":
                self._on_status(dev, payload, retained, now)
            elif kind == "stats":
                dev.stats = payload
                dev.stats_at = now
                dev.stats_times.append(now)
            elif kind == "advice":
                return self._on_advice(dev, payload)
            else:
                return self._on_alert(dev, payload, now)
            return True

    def _on_status(self, dev: Device, st: dict[str, Any], retained: bool, now: float) -> None:
        at = now
        if retained:  # replayed by the broker on subscription: when it was published, not now
            ts = parse_iso(st.get("ts"))
            at = min(ts, now) if ts is not None else now
            if dev.status_at is not None and at < dev.status_at:
                return  # older than what we have (a retained copy arriving after a live one)
        dev.status, dev.status_at = st, at
        if isinstance(st.get("model"), dict):
            dev.model = st["model"]
        started = st.get("started_at")
        if isinstance(started, str) and st.get("state") != "offline":
            if dev.started_at is not None and started != dev.started_at:
                # a new run of the agent: alerts of the old run are never cleared (the agent does not persist them)
                begin = parse_iso(started)
                for aid, a in list(dev.open_alerts.items()):
                    created = parse_iso(a.get("created_at"))
                    if begin is None or created is None or created < begin:
                        del dev.open_alerts[aid]
            dev.started_at = started

    def _on_advice(self, dev: Device, a: dict[str, Any]) -> bool:
        mid = a.get("id")
        if not isinstance(mid, str) or not mid or a.get("state") not in ("advised", "no_advice"):
            self.bad_messages += 1
            return False
        if mid in self._seen_ids:
            self.duplicates += 1
            return False
        self._seen_ids[mid] = None
        actions = [x for x in a.get("actions") or [] if isinstance(x, str)]
        by_action = {ch for act in a.get("available_actions") or [] if isinstance(act, dict) and act.get("name") in actions
                     for ch in (act.get("set") or {})}  # a tool change is shown by its name, not as wear 217->0
        changes = [c for c in a.get("changes") or [] if isinstance(c, dict) and c.get("channel") not in by_action]
        dev.last_advice = {
            "state": a["state"], "alert_id": a.get("alert_id"), "created_at": a.get("created_at"),
            "probability": a.get("probability"), "advised_probability": a.get("advised_probability"),
            "changes": changes, "actions": actions,
        }
        return True

    def _on_alert(self, dev: Device, a: dict[str, Any], now: float) -> bool:
        mid = a.get("id")
        if isinstance(mid, str) and mid:
            if mid in self._seen_ids:
                self.duplicates += 1
                return False
            self._seen_ids[mid] = None
            if len(self._seen_ids) > SEEN_IDS_MAX:
                self._seen_ids.popitem(last=False)
        dev.last_alert_at = now
        aid, state = a.get("alert_id"), a.get("state")
        if not isinstance(aid, str) or not aid:
            self.bad_messages += 1
            return False
        if state == "raised":
            dev.raised_seen += 1
            if aid not in dev.cleared_ids:  # a late copy of a raise whose clear already came stays closed
                dev.open_alerts[aid] = {
                    "alert_id": aid, "severity": a.get("severity"), "sensor": a.get("sensor"),
                    "score": a.get("score"), "threshold": a.get("threshold"),
                    "window_end": a.get("window_end"), "created_at": a.get("created_at"),
                }
        elif state == "cleared":
            dev.cleared_seen += 1
            dev.open_alerts.pop(aid, None)
            dev.cleared_ids[aid] = None
            if len(dev.cleared_ids) > CLEARED_IDS_MAX:
                dev.cleared_ids.popitem(last=False)
        else:
            self.bad_messages += 1
            return False
        return True

    # -- snapshots -------------------------------------------------------------------------------------------

    def complete(self) -> bool:
        """At least one device, and every device seen has what a snapshot needs."""
        with self._lock:
            return bool(self.devices) and all(d.complete for d in self.devices.values())

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """One dict per device (the JSON form), most severe state first."""
        now = time.time() if now is None else now
        with self._lock:
            devices = sorted(self.devices.values(), key=lambda d: (d.rank(now), d.device_id))
            return [device_row(d, now) for d in devices]


def device_row(d: Device, now: float) -> dict[str, Any]:
    """A device as a JSON-able dict: what the table shows, plus the details behind it."""
    st, stats = d.status or {}, d.stats or {}
    outbox = stats.get("outbox") if isinstance(stats.get("outbox"), dict) else None
    dropped = None
    if outbox is not None and isinstance(outbox.get("dropped"), dict):
        dropped = sum(v for v in outbox["dropped"].values() if isinstance(v, (int, float)))
    model = {"name": d.model.get("name"), "version": d.model.get("version")} if d.model else None
    last = d.last_seen
    return {
        "device_id": d.device_id,
        "state": d.state,
        "stale": d.stale(now),
        "last_seen": iso(last),
        "age_s": round(now - last, 1) if last is not None else None,
        "model": model,
        "open_alerts": len(d.open_alerts),
        "open_alert_ids": sorted(d.open_alerts),
        "outbox_depth": outbox.get("depth") if outbox else None,
        "outbox_dropped": dropped,
        "bandwidth_ratio": stats.get("bandwidth_ratio"),
        "reasons": st.get("reasons") if isinstance(st.get("reasons"), list) and st.get("state") == "degraded" else [],
        "reason": st.get("reason") if st.get("state") == "offline" else None,
        "calibration": st.get("calibration") if st.get("state") == "calibrating" else None,
        "source": stats.get("source") or st.get("source"),
        "agent_version": st.get("agent_version"),
        "started_at": d.started_at,
        "threshold": st.get("threshold"),
        "stats_interval_s": round(d.stats_interval, 3) if d.stats_interval is not None else None,
        "alerts_seen": {"raised": d.raised_seen, "cleared": d.cleared_seen},
        "last_advice": d.last_advice,
        "have": {"status": d.status is not None, "stats": d.stats is not None},
    }


def snapshot_json(rows: list[dict[str, Any]], now: float, **extra: Any) -> str:
    """A snapshot as one line of JSON: ``{"ts", "devices": [...], ...extra}``."""
    return json.dumps({"ts": iso(now), **extra, "devices": rows}, separators=(",", ":"))
