"""The monitor's fleet state: what is known about every gateway under the prefix, fed one message at a time by
:meth:`Fleet.handle` (topic, payload, retained, receipt time); pure, no I/O. Payloads are read into the typed
views of agent/payloads.py (alerts and advice as the pipeline's own records); agent/monitoring/rows.py turns a
device into the JSON form the table and ``--json`` show.

Rules (also in docs/monitor.md):

* State: that of the latest ``status`` or ``stats`` received (``stats`` carries the state too); ``unknown``
  until one of them arrived.
* Last seen: the latest receipt of a status, stats or alert message. A *retained* status is not news (the
  broker replays it on subscription), so for it the status's own ``ts`` counts, never later than its receipt.
* Stale: a device not ``offline`` whose last ``stats`` is older than 3x its usual stats interval (the median of
  the gaps between the stats received; until two arrived, the agent's default of 300 s).
* Open alerts: a ``raised`` adds its ``alert_id``, a ``cleared`` removes it; messages are deduplicated on ``id``
  (delivery is at least once). Alerts raised before the monitor started are not known (alerts are not retained).
  A restart of the agent (a status with a new ``started_at``) closes the alerts that arrived under an earlier run
  (the ``started_at`` current at their arrival; the agent's clock is not compared) except those the status's
  ``open_alerts`` names: the agent carries these over the restart and sends each one's ``cleared``
  (agent/open_alerts.py); the others' never comes (cleared at the start, or lost: an outbox set aside, an older
  version's). A status without ``open_alerts`` (an older agent, which carries none) closes them all. A clean
  stop's ``offline`` status names its run and every alert open in the agent at the stop: it closes the others,
  whichever run they arrived under, and its run becomes the device's; an ``offline`` status without
  ``open_alerts`` (the last will, an older agent's) closes nothing.
* Assets: a gateway with ``[[assets]]`` has a row per asset: the assets of its latest status that is not
  ``offline`` (the last will names none: the rows are kept), and any asset an alert or advice came from (a
  restart forgets those no longer in the status; a ``cleared`` makes no row: the clear of a removed asset's
  alert). Alerts and advice on ``{prefix}/{device}/asset/<id>/…`` are the asset's. An asset's state is that of its
  row in the latest status or stats; ``offline`` while its gateway is.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from agent.payloads import (
    AdviceMessage,
    AlertMessage,
    AssetStatus,
    PayloadError,
    StatsPayload,
    StatusPayload,
    message_id,
)
from agent.parse import timestamp

DEFAULT_STATS_INTERVAL_S = 300.0  # the agent's default EDGE_AGENT_STATS_INTERVAL_S
STALE_FACTOR = 3.0
SEEN_IDS_MAX = 50_000
CLEARED_IDS_MAX = 1_000

STATE_RANK = {"offline": 0, "degraded": 1, "stale": 2, "unknown": 3, "calibrating": 4, "online": 5}
KINDS = ("status", "stats", "alerts", "advice")
ASSET_KINDS = ("alerts", "advice")  # under {prefix}/{device}/asset/<id>/


# ================================================================================================ time helpers


def parse_iso(text: Any) -> float | None:
    """The agent's ISO 8601 timestamps as epoch seconds; None when absent or unreadable."""
    return timestamp(text) if isinstance(text, str) and text else None


# ================================================================================================ fleet state


@dataclass
class OpenAlert:
    """An alert raised while the monitor watched and not cleared yet."""

    message: AlertMessage
    asset: str  # "" for a gateway without assets
    run: str | None = None  # the device's started_at when it arrived (its status comes before a run's alerts)


@dataclass
class AssetSeen:
    """What the alert and advice topics told about one asset (its state comes from the status and stats)."""

    raised_seen: int = 0
    cleared_seen: int = 0
    last_alert: AlertMessage | None = None
    last_alert_at: float | None = None
    last_advice: dict[str, Any] | None = None


@dataclass
class Device:
    """What the monitor knows about one gateway."""

    device_id: str
    first_seen: float
    status: StatusPayload | None = None
    status_at: float | None = None  # receipt (retained: the status's own ts)
    stats: StatsPayload | None = None
    stats_at: float | None = None
    last_alert_at: float | None = None
    model: dict[str, Any] | None = None  # kept from the last status that had one (the last will has none)
    asset_status: dict[str, AssetStatus] = field(default_factory=dict)  # of the last status not offline
    started_at: str | None = None
    stats_times: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    open_alerts: dict[str, OpenAlert] = field(default_factory=dict)
    cleared_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    raised_seen: int = 0
    cleared_seen: int = 0
    last_advice: dict[str, Any] | None = None
    seen_assets: dict[str, AssetSeen] = field(default_factory=dict)

    # -- derived ---------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The state of the latest status or stats received."""
        candidates = []
        if self.status is not None and self.status.state is not None:
            candidates.append((self.status_at or 0.0, 1, self.status.state))
        if self.stats is not None and self.stats.state is not None:
            candidates.append((self.stats_at or 0.0, 0, self.stats.state))
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
        return self.stats is not None or self.status.state == "offline"

    def rank(self, now: float) -> float:
        st = self.state
        if st != "offline" and self.stale(now):
            return min(STATE_RANK.get(st, 3), STATE_RANK["stale"])
        return STATE_RANK.get(st, 3)

    # -- assets ----------------------------------------------------------------------------------------------

    @property
    def assets(self) -> list[str]:
        """The ids of this gateway's assets: its latest status's, then any only alerts or advice named."""
        return list(dict.fromkeys([*self.asset_status, *self.seen_assets]))

    def asset_state(self, asset: str) -> str:
        """The state of the asset's row in the latest status or stats; offline while the gateway is."""
        if self.state == "offline":
            return "offline"
        candidates = []
        row = self.asset_status.get(asset)
        if row is not None and row.state is not None:
            candidates.append((self.status_at or 0.0, 1, row.state))
        srow = self.stats.assets.get(asset) if self.stats is not None else None
        if srow is not None and srow.state is not None:
            candidates.append((self.stats_at or 0.0, 0, srow.state))
        return max(candidates)[2] if candidates else "unknown"

    def seen(self, asset: str) -> AssetSeen:
        a = self.seen_assets.get(asset)
        if a is None:
            a = self.seen_assets[asset] = AssetSeen()
        return a


class Fleet:
    """Every device seen under the prefix. Feed it with :meth:`handle`; thread safe."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.devices: dict[str, Device] = {}
        self._seen_ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.bad_messages = 0
        self.duplicates = 0

    def split(self, topic: str) -> tuple[str, str, str] | None:
        """``{prefix}/{device}/{kind}`` → (device, kind, ""); ``{prefix}/{device}/asset/{id}/{alerts|advice}`` →
        (device, kind, id); None for any other topic."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) == 2 and parts[0] and parts[1] in KINDS:
            return parts[0], parts[1], ""
        if len(parts) == 4 and parts[0] and parts[1] == "asset" and parts[2] and parts[3] in ASSET_KINDS:
            return parts[0], parts[3], parts[2]
        return None

    def handle(self, topic: str, raw: bytes | str | dict[str, Any], retained: bool = False,
               now: float | None = None) -> bool:
        """Take one message; False when it is not ours, unreadable or a duplicate. Never raises on bad input."""
        now = time.time() if now is None else now
        where = self.split(topic)
        if where is None:
            return False
        device_id, kind, asset = where
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
                self._on_status(dev, StatusPayload.from_payload(payload), retained, now)
            elif kind == "stats":
                dev.stats = StatsPayload.from_payload(payload)
                dev.stats_at = now
                dev.stats_times.append(now)
            elif kind == "advice":
                return self._on_advice(dev, payload, asset)
            else:
                return self._on_alert(dev, payload, asset, now)
            return True

    def _on_status(self, dev: Device, st: StatusPayload, retained: bool, now: float) -> None:
        at = now
        if retained:  # replayed by the broker on subscription: when it was published, not now
            at = min(st.ts, now) if st.ts is not None else now
            # the clean stop of the run known is its last status, whatever the gateway's clock said (behind at a boot)
            last = st.state == "offline" and st.open_alerts is not None and st.started_at == dev.started_at
            if dev.status_at is not None and at < dev.status_at and not last:
                return  # older than what we have (a retained copy arriving after a live one)
        dev.status, dev.status_at = st, at
        if st.model is not None:
            dev.model = dict(st.model)
        if st.state != "offline":  # the last will and a clean stop name no assets: keep the rows known
            dev.asset_status = dict(st.assets)
        started = st.started_at
        if started is None or (st.state == "offline" and st.open_alerts is None):
            return  # an older agent's, or the last will (set at start, it cannot know the alerts open when it comes)
        if st.state == "offline":
            # a clean stop, of the run known or of a later one: open_alerts names every alert open in the agent; the
            # others' clears are stored (sent before this status, or sent at the next start) or never come
            still_open = st.open_alerts or ()
            for aid in list(dev.open_alerts):
                if aid not in still_open:
                    del dev.open_alerts[aid]
        elif dev.started_at is not None and started != dev.started_at:
            for gone in set(dev.seen_assets) - set(st.assets):  # an asset no longer configured
                del dev.seen_assets[gone]
            # a new run of the agent: the old run's alerts it does not carry over never get their clear
            carried = st.open_alerts or ()
            for aid, a in list(dev.open_alerts.items()):
                if aid not in carried and a.run != started:  # arrived under an earlier run (not by its clock)
                    del dev.open_alerts[aid]
        dev.started_at = started

    def _on_advice(self, dev: Device, payload: dict[str, Any], asset: str) -> bool:
        try:
            msg = AdviceMessage.from_payload(payload, asset)
        except PayloadError:
            self.bad_messages += 1
            return False
        if msg.id in self._seen_ids:
            self.duplicates += 1
            return False
        self._seen_ids[msg.id] = None
        f = msg.event.fields
        actions = [x for x in f.get("actions") or [] if isinstance(x, str)]
        by_action = {ch for act in f.get("available_actions") or [] if isinstance(act, dict)
                     and act.get("name") in actions
                     for ch in (act.get("set") or {})}  # a tool change is shown by its name, not as wear 217->0
        changes = [c for c in f.get("changes") or [] if isinstance(c, dict) and c.get("channel") not in by_action]
        last = {
            "state": msg.state, "alert_id": msg.event.alert_id or payload.get("alert_id"),
            "created_at": msg.created_at, "probability": f.get("probability"),
            "advised_probability": f.get("advised_probability"), "changes": changes, "actions": actions,
        }
        if asset:
            dev.seen(asset).last_advice = last
        else:
            dev.last_advice = last
        return True

    def _on_alert(self, dev: Device, payload: dict[str, Any], asset: str, now: float) -> bool:
        mid = message_id(payload)
        if mid is not None:
            if mid in self._seen_ids:
                self.duplicates += 1
                return False
            self._seen_ids[mid] = None
            if len(self._seen_ids) > SEEN_IDS_MAX:
                self._seen_ids.popitem(last=False)
        dev.last_alert_at = now
        try:
            msg = AlertMessage.from_payload(payload, asset)
        except PayloadError:
            self.bad_messages += 1
            return False
        aid = msg.event.alert_id
        raised = msg.event.state == "raised"  # a clear makes no asset row (a removed asset's, at a restart)
        seen = dev.seen(asset) if asset and (raised or asset in dev.asset_status) else dev.seen_assets.get(asset)
        if seen is not None:
            seen.last_alert, seen.last_alert_at = msg, now
        if raised:
            dev.raised_seen += 1
            if seen is not None:
                seen.raised_seen += 1
            if aid not in dev.cleared_ids:  # a late copy of a raise whose clear already came stays closed
                dev.open_alerts[aid] = OpenAlert(msg, asset, dev.started_at)
        else:
            dev.cleared_seen += 1
            if seen is not None:
                seen.cleared_seen += 1
            dev.open_alerts.pop(aid, None)
            dev.cleared_ids[aid] = None
            if len(dev.cleared_ids) > CLEARED_IDS_MAX:
                dev.cleared_ids.popitem(last=False)
        return True

    # -- snapshots -------------------------------------------------------------------------------------------

    def complete(self) -> bool:
        """At least one device, and every device seen has what a snapshot needs."""
        with self._lock:
            return bool(self.devices) and all(d.complete for d in self.devices.values())

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """One dict per device (the JSON form, agent.monitoring.rows), most severe state first."""
        from agent.monitoring.rows import device_row

        now = time.time() if now is None else now
        with self._lock:
            devices = sorted(self.devices.values(), key=lambda d: (d.rank(now), d.device_id))
            return [device_row(d, now) for d in devices]
