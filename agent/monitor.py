"""``edge-agent monitor``: the fleet view — every gateway under ``{prefix}/+/`` in one live table.

Subscribes to ``{prefix}/+/status`` (QoS 1, retained: every device known to the broker shows up at once),
``{prefix}/+/stats`` (QoS 0), ``{prefix}/+/alerts`` and ``{prefix}/+/advice`` (QoS 1) and keeps, per device: the state,
when it was last seen, the model, the open alerts, the last advice, the outbox depth and the bandwidth ratio. ``--once`` prints one snapshot and
exits; without it the table is redrawn in place every ``--interval`` seconds until Ctrl-C.

Split in three so the parts can be tested alone:

* :class:`Fleet` — the state, fed by :meth:`Fleet.handle` (topic, payload, retained, receipt time); pure, no I/O.
* :func:`render_table` / :func:`snapshot_json` — a snapshot as text (fitted to a terminal width) or as JSON.
* :func:`run` — the MQTT client (paho-mqtt 2, built like the uplink's: user name, password file, TLS) and the
  terminal loop.

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

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from agent.parse import iso, timestamp
from agent.signals import SignalCounter

EXIT_OK = 0
EXIT_NO_DEVICE = 1
EXIT_UNREACHABLE = 2
EX_CONFIG = 78

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


def format_age(seconds: float | None) -> str:
    """``3s ago``, ``4m ago``, ``2h ago``, ``5d ago``; ``-`` when never seen."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


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


# ================================================================================================ rendering

COLUMNS = ("DEVICE", "STATE", "LAST SEEN", "MODEL", "ALERTS", "OUTBOX", "BW RATIO", "LAST ADVICE", "NOTE")
# columns given up first when the terminal is narrow, and the width they keep at least
SHRINK = (("NOTE", 0), ("LAST ADVICE", 0), ("MODEL", 8), ("DEVICE", 8), ("LAST SEEN", 6))
COLOURS = {"offline": "31", "degraded": "33", "calibrating": "36", "online": "32", "unknown": "2"}


def _note(r: dict[str, Any]) -> str:
    parts = []
    if r["state"] == "offline" and r.get("reason"):
        parts.append(str(r["reason"]))
    if r.get("reasons"):
        parts.append("; ".join(str(x) for x in r["reasons"]))
    if r["state"] == "calibrating":
        parts.append("teach-in running")  # the status's progress is as old as the status: not shown
    src = r.get("source")
    if isinstance(src, dict) and src.get("state") not in (None, "connected") and r["state"] != "offline":
        parts.append(f"source {src['state']}")
    if r.get("stale"):
        parts.append(f"no stats for {format_age(r['age_s']).replace(' ago', '')}" if not r["have"]["stats"]
                     else "stats overdue")
    return "; ".join(parts)


def advice_text(a: dict[str, Any] | None) -> str:
    """The last advice in a few words: ``Torque [Nm] 62->57.5; tool change``; ``none within bounds``; ``-``."""
    if not a:
        return "-"
    if a.get("state") != "advised":
        return "none within bounds"
    parts = [f"{c.get('channel')} {c.get('from'):g}->{c.get('to'):g}" for c in a.get("changes") or []
             if isinstance(c.get("from"), (int, float)) and isinstance(c.get("to"), (int, float))]
    return "; ".join(parts + list(a.get("actions") or [])) or "-"


def cells(r: dict[str, Any]) -> list[str]:
    """The table cells of one device row."""
    model = r.get("model") or {}
    model_text = " ".join(str(x) for x in (model.get("name"), model.get("version")) if x) or "-"
    depth = r.get("outbox_depth")
    outbox = "-" if depth is None else str(depth)
    if r.get("outbox_dropped"):
        outbox += f" ({r['outbox_dropped']} dropped)"
    ratio = r.get("bandwidth_ratio")
    ratio_text = f"{ratio:.3g}" if isinstance(ratio, (int, float)) and math.isfinite(ratio) else "-"
    last = format_age(r.get("age_s"))
    if r.get("stale"):
        last += " (stale)"
    return [r["device_id"], r["state"], last, model_text, str(r.get("open_alerts", 0)), outbox, ratio_text,
            advice_text(r.get("last_advice")), _note(r)]


def _fit(text: str, width: int, ellipsis: str) -> str:
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return text[:width]
    return text[: width - len(ellipsis)] + ellipsis


def render_table(rows: list[dict[str, Any]], width: int = 120, colour: bool = False, ellipsis: str = "…") -> list[str]:
    """The fleet as aligned text lines, no line longer than ``width``: columns shrink (NOTE, MODEL, DEVICE,
    LAST SEEN in that order, truncated with ``ellipsis``) before a line is cut. ``colour`` adds ANSI colours to the
    state (after the padding, so the alignment holds)."""
    table = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    if not any(row[-1] for row in table[1:]):
        widths[-1] = 0  # no notes: no NOTE column
    sep = 2

    def total() -> int:
        shown = [w for w in widths if w > 0]
        return sum(shown) + sep * (len(shown) - 1)

    for name, least in SHRINK:
        over = total() - width
        if over <= 0:
            break
        i = COLUMNS.index(name)
        keep = max(least, widths[i] - over)
        if least == 0 and keep < len(COLUMNS[i]) + 4:
            keep = 0  # a note column too narrow to say anything: drop it
        widths[i] = keep
    lines = []
    for n, row in enumerate(table):
        parts = []
        for i, text in enumerate(row):
            w = widths[i]
            if w <= 0:
                continue
            cell = _fit(text, w, ellipsis)
            pad = cell if i == len(row) - 1 else cell.ljust(w)
            if colour and n > 0 and COLUMNS[i] == "STATE":
                code = COLOURS.get(row[i])
                pad = f"\x1b[{code}m{cell}\x1b[0m" + " " * (w - len(cell)) if code else pad
            elif colour and n == 0:
                pad = f"\x1b[1m{cell}\x1b[0m" + (" " * (w - len(cell)) if i != len(row) - 1 else "")
            parts.append(pad)
        line = (" " * sep).join(parts)
        lines.append((line if colour else line[:width]).rstrip())
    return lines


def render_header(rows: list[dict[str, Any]], now: float, where: str, connected: bool) -> list[str]:
    """Two lines above the table: broker, time and link; then the count of devices by state and open alerts."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    stale = sum(1 for r in rows if r.get("stale"))
    summary = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: STATE_RANK.get(s, 3)))
    if stale:
        summary += f", {stale} stale"
    alerts = sum(r.get("open_alerts", 0) for r in rows)
    clock = datetime.fromtimestamp(now).strftime("%H:%M:%S")
    link = "connected" if connected else "DISCONNECTED (reconnecting)"
    return [
        f"edge-agent monitor  {clock}  {link}  {where}",
        f"{len(rows)} device{'s' if len(rows) != 1 else ''}{': ' + summary if summary else ''}; "
        f"{alerts} open alert{'s' if alerts != 1 else ''}",
    ]


# ================================================================================================ MQTT


class MonitorClient:
    """The paho-mqtt 2 client feeding a :class:`Fleet`; subscriptions are (re)made in on_connect."""

    def __init__(self, fleet: Fleet, host: str, port: int, mqtt_settings: Any | None = None):
        from agent.mqtt_client import BrokerConnection, make_client, upstream_connection

        self.fleet = fleet
        self.host, self.port = host, port
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connack = threading.Event()
        self.refused: str | None = None
        self._pending_mids: set[int] = set()
        self._lock = threading.Lock()
        s = mqtt_settings
        conn = upstream_connection(s) if s is not None else BrokerConnection(host, port)
        conn = BrokerConnection(**{**conn.__dict__, "host": host, "port": port})  # --host/--port win
        c = make_client(conn, f"edge-agent-monitor-{socket.gethostname()}-{os.getpid()}", log_name="paho.monitor")
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    def connect(self, keepalive: int = 30) -> None:
        """Connect now (raises OSError when the broker cannot be reached) and start the network thread."""
        self.client.connect(self.host, self.port, keepalive=keepalive)
        self.client.loop_start()

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.client.loop_stop()

    # -- paho callbacks (network thread; must never raise) ---------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                hint = ""
                if str(reason_code) in ("Not authorized", "Bad user name or password"):
                    hint = " (check EDGE_AGENT_MQTT__USERNAME and the password file)"
                self.refused = f"broker {self.host}:{self.port} refused the connection: {reason_code}{hint}"
                self.connack.set()
                return
            self.refused = None
            p = self.fleet.prefix
            result, mid = client.subscribe([(f"{p}/+/status", 1), (f"{p}/+/stats", 0), (f"{p}/+/alerts", 1),
                                            (f"{p}/+/advice", 1)])
            with self._lock:
                self._pending_mids.add(mid)
            self.connected.set()
            self.connack.set()
        except Exception:  # noqa: BLE001 - an exception must not escape into paho's thread
            self.refused = "internal error in on_connect"
            self.connack.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            self.connected.clear()
        except Exception:  # noqa: BLE001
            pass

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        try:
            with self._lock:
                self._pending_mids.discard(mid)
            if all(not getattr(rc, "is_failure", False) for rc in reason_codes):
                self.subscribed.set()
            else:
                self.refused = f"broker {self.host}:{self.port} refused the subscription to {self.fleet.prefix}/+/…"
        except Exception:  # noqa: BLE001
            pass

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.fleet.handle(msg.topic, bytes(msg.payload), bool(msg.retain), time.time())
        except Exception:  # noqa: BLE001 - a bad message must not stop the monitor
            self.fleet.bad_messages += 1


# ================================================================================================ command


def add_arguments(parser: argparse.ArgumentParser, env_file: bool = True) -> argparse.ArgumentParser:
    """The options of ``edge-agent monitor`` (``env_file=False`` when the caller adds ``--env-file`` itself)."""
    parser.add_argument("--host", default=None, help="broker host (default: EDGE_AGENT_MQTT__HOST, else localhost)")
    parser.add_argument("--port", type=int, default=None, help="broker port (default: EDGE_AGENT_MQTT__PORT, else 1883)")
    parser.add_argument("--prefix", default=None, metavar="PREFIX",
                        help="topic prefix; devices are PREFIX/+/ (default: EDGE_AGENT_MQTT__TOPIC_PREFIX, else edge)")
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot and exit: after --timeout, or as soon as every device seen has sent "
                             "its status and stats (0; 1 when no device was seen; 2 when the broker cannot be reached)")
    parser.add_argument("--timeout", type=_positive, default=10.0, metavar="S",
                        help="with --once: collect for at most S seconds (default 10)")
    parser.add_argument("--json", action="store_true",
                        help="print each snapshot as one line of JSON ({ts, devices: [...]}) instead of a table")
    parser.add_argument("--interval", type=_positive, default=1.0, metavar="S", help="refresh period in seconds (default 1)")
    if env_file:
        parser.add_argument("--env-file", metavar="PATH", default=None,
                            help="agent env file for the broker settings (user name, password file, TLS); "
                                 "default: /etc/edge-agent/agent.env when it exists; the environment overrides it")
    return parser


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _fail(msg: str, code: int) -> int:
    print(f"monitor: {msg}", file=sys.stderr)
    return code


def _ellipsis(stream: Any) -> str:
    return "…" if (getattr(stream, "encoding", "") or "").lower().replace("-", "").startswith("utf") else "~"


def run(args: argparse.Namespace) -> int:
    """``edge-agent monitor`` with parsed arguments; the exit code."""
    from agent.settings import ConfigError, load_settings
    from agent.mqtt_client import describe_connect_error

    env_file = getattr(args, "env_file", None)
    try:
        settings = load_settings(Path(env_file) if env_file else None)
    except ConfigError as e:
        for line in e.problems:
            print(f"config error: {line}", file=sys.stderr)
        return EX_CONFIG
    m = settings.mqtt
    host = args.host or m.host
    port = args.port or m.port
    prefix = (args.prefix or m.topic_prefix).strip("/")
    if not prefix or any(ch in prefix for ch in "+#"):
        return _fail(f"--prefix {prefix!r}: must not be empty nor contain + or #", EXIT_UNREACHABLE)
    fleet = Fleet(prefix)
    mc = MonitorClient(fleet, host, port, m)
    where = f"{host}:{port} {prefix}/+"
    try:
        mc.connect(keepalive=m.keepalive_s)
    except (OSError, ValueError) as e:
        why = describe_connect_error(e if isinstance(e, OSError) else None)
        return _fail(f"cannot reach the broker {host}:{port}: {why}", EXIT_UNREACHABLE)
    try:
        if not mc.connack.wait(min(args.timeout, 10.0) if args.once else 10.0) or mc.refused:
            return _fail(mc.refused or f"no answer from the broker {host}:{port} (is it an MQTT broker?)", EXIT_UNREACHABLE)
        if args.once:
            return _once(args, fleet, mc, where)
        return _live(args, fleet, mc, where)
    finally:
        mc.close()


def _once(args: argparse.Namespace, fleet: Fleet, mc: MonitorClient, where: str) -> int:
    deadline = time.monotonic() + args.timeout
    settle_until: float | None = None
    while time.monotonic() < deadline:
        if mc.subscribed.is_set():
            if settle_until is None:
                settle_until = time.monotonic() + 0.3  # the retained statuses follow the SUBACK: take them all
            if time.monotonic() >= settle_until and fleet.complete():
                break
        time.sleep(0.05)
    if not mc.subscribed.is_set():
        return _fail(mc.refused or f"the broker {mc.host}:{mc.port} did not confirm the subscription", EXIT_UNREACHABLE)
    now = time.time()
    rows = fleet.rows(now)
    if not rows:
        return _fail(f"no device seen under {fleet.prefix}/+/ on {mc.host}:{mc.port} in {args.timeout:g} s", EXIT_NO_DEVICE)
    if args.json:
        print(snapshot_json(rows, now, broker=f"{mc.host}:{mc.port}", prefix=fleet.prefix))
    else:
        width = shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 200
        print("\n".join(render_table(rows, width=width, ellipsis=_ellipsis(sys.stdout))))
    sys.stdout.flush()
    return EXIT_OK


def _live(args: argparse.Namespace, fleet: Fleet, mc: MonitorClient, where: str) -> int:
    term = SignalCounter(signal.SIGTERM).install()  # counts only: Event.set() in a handler can hang (agent/signals.py)
    tty = sys.stdout.isatty() and not args.json
    out = sys.stdout
    if tty:
        out.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once; then redraw from home without flicker
    try:
        while not term.arrived:
            now = time.time()
            rows = fleet.rows(now)
            if args.json:
                out.write(snapshot_json(rows, now, broker=f"{mc.host}:{mc.port}", prefix=fleet.prefix,
                                        connected=mc.connected.is_set(), subscribed=mc.subscribed.is_set()) + "\n")
            else:
                size = shutil.get_terminal_size((120, 24))
                width = size.columns if tty else 200
                header = render_header(rows, now, where, mc.connected.is_set())
                lines = render_table(rows, width=width, colour=tty, ellipsis=_ellipsis(out))
                if tty:
                    room = max(2, size.lines - 4)
                    if len(lines) > room:
                        hidden = len(lines) - room + 1
                        lines = lines[: room - 1] + [f"… {hidden} more device{'s' if hidden != 1 else ''}"]
                    text = [_fit(h, width, _ellipsis(out)) for h in header] + [""] + lines
                    if not rows:
                        text.append(f"waiting for devices under {fleet.prefix}/+/ …")
                    out.write("\x1b[H" + "".join(line + "\x1b[K\n" for line in text) + "\x1b[J")
                else:
                    out.write("\n".join(header + lines) + "\n\n")
            out.flush()
            term.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `edge-agent monitor --json | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
    finally:
        term.restore()
        if tty:
            out.write("\x1b[?25h\n")
            out.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.monitor`` (the same as ``edge-agent monitor``)."""
    p = argparse.ArgumentParser(prog="edge-agent monitor", description="live table of the gateways under a topic prefix")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

