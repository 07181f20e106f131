"""Evidence and feedback: the raw readings behind every raised alert, and the operators' labels of alerts.

``STATE_DIR/evidence.db`` (SQLite WAL), bounded in bytes: when full, the oldest unlabelled evidence goes first,
labelled evidence only when nothing else is left (it is the training data the feedback loop exists for).
Used from the pipeline thread (the daemon) and from ``edge-agent export-feedback`` (another process).
"""

from __future__ import annotations

import csv
import json
import logging
import sqlite3
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from agent.files import StateDirError, set_aside, sqlite_corrupt
from agent.records import message_bytes

log = logging.getLogger(__name__)

LABELS = ("true_positive", "false_positive")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    alert_id TEXT PRIMARY KEY,
    created_ts REAL NOT NULL,
    sensor TEXT NOT NULL,
    body TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    alert_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    ts REAL NOT NULL
);
"""


class EvidenceStore:
    """Evidence of raised alerts and the feedback on them."""

    def __init__(self, path: Path, max_bytes: int = 16 * 2**20):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._low_logged = False
        self._counts: dict[str, Any] = {"true_positive": 0, "false_positive": 0, "precision": None}
        self._counts_failed = False
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            if not sqlite_corrupt(e):  # permissions, a read-only or full disk: not the file's fault
                raise StateDirError(self.path.parent, f"cannot open {self.path.name} ({e})") from e
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            if set_aside(self.path, f"corrupt evidence store: {e}") is None:
                raise StateDirError(self.path.parent, f"cannot move the corrupt {self.path.name} aside") from e
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=100")
        db.execute("PRAGMA journal_size_limit=1048576")
        db.execute("PRAGMA cache_size=-256")  # 256 KiB: evidence is written, rarely read (the soak's RSS growth)
        db.executescript(_SCHEMA)
        ok = db.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            db.close()
            raise sqlite3.DatabaseError(ok)
        return db

    def add(self, alert_id: str, sensor: str, evidence: dict[str, Any]) -> int:
        """Keep one alert's evidence; returns its size in bytes (0: not kept, the disk is nearly full)."""
        if self._low_on_disk():
            return 0
        body = message_bytes(evidence).decode()
        size = len(body)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._make_room(alert_id, size)
            db.execute(
                "INSERT OR REPLACE INTO evidence VALUES (?,?,?,?,?)", (alert_id, time.time(), sensor, body, size)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return size

    def extend(self, alert_id: str, rows: Sequence[tuple[float, Sequence[float]]]) -> None:
        """Append readings (timestamp, values) to an alert's evidence (those after it was raised), within
        ``max_bytes`` as ``add`` (the oldest other evidence makes room). Not extended, kept as raised: on a nearly
        full disk, or when the extended evidence alone would be over ``max_bytes``."""
        if not rows or self._low_on_disk():
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT body FROM evidence WHERE alert_id=?", (alert_id,)).fetchone()
            if row is not None:
                ev = json.loads(row[0])
                seen = set(ev.get("ts", []))
                new = [(ts, list(v)) for ts, v in rows if ts not in seen]
                ev["ts"] = list(ev.get("ts", [])) + [ts for ts, _ in new]
                ev["values"] = list(ev.get("values", [])) + [v for _, v in new]
                body = json.dumps(ev, separators=(",", ":"))
                if len(body) <= self.max_bytes:
                    self._make_room(alert_id, len(body))
                    db.execute("UPDATE evidence SET body=?, bytes=? WHERE alert_id=?", (body, len(body), alert_id))
                else:
                    log.warning("evidence of alert %s kept as raised: with the %d readings while it was active it "
                                "would be %d bytes, over EDGE_AGENT_ALERTS__EVIDENCE_MAX_BYTES (%d)",
                                alert_id, len(new), len(body), self.max_bytes)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _low_on_disk(self) -> bool:
        """The state disk is nearly full: the outbox's alerts need the space more than evidence does."""
        from agent.outbox_schema import low_on_disk

        if low_on_disk(self.path.parent):
            if not self._low_logged:
                self._low_logged = True
                log.warning("state disk nearly full: not keeping evidence of new alerts (nor adding the readings "
                            "while an alert was active to its evidence) until there is room")
            return True
        self._low_logged = False
        return False

    def _make_room(self, alert_id: str, size: int) -> None:
        """In a transaction: evict other alerts' evidence, the oldest unlabelled first, labelled last, until
        ``size`` bytes of ``alert_id``'s fit within ``max_bytes`` (its own row is replaced, not counted)."""
        db = self._db
        total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM evidence WHERE alert_id<>?", (alert_id,)).fetchone()[0]
        while total + size > self.max_bytes:
            victim = db.execute(
                "SELECT e.alert_id, e.bytes FROM evidence e LEFT JOIN feedback f USING (alert_id) "
                "WHERE e.alert_id<>? ORDER BY f.alert_id IS NOT NULL, e.created_ts LIMIT 1", (alert_id,)
            ).fetchone()
            if victim is None:
                break
            db.execute("DELETE FROM evidence WHERE alert_id=?", (victim[0],))
            total -= victim[1]

    def get(self, alert_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT body FROM evidence WHERE alert_id=?", (alert_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def has_alert(self, alert_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM evidence WHERE alert_id=?", (alert_id,)).fetchone() is not None

    def label(self, alert_id: str, label: str, note: str | None = None) -> bool:
        """Store (or replace) the operator's label of an alert; ``note`` None keeps the note stored with it (a
        label sent again without one does not wipe it). True when the label or the note changed."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}")
        row = self._db.execute("SELECT label, note FROM feedback WHERE alert_id=?", (alert_id,)).fetchone()
        if note is None:
            note = row[1] if row else ""
        if row is not None and (row[0], row[1]) == (label, note):
            return False  # in force already: nothing to write
        self._db.execute("INSERT OR REPLACE INTO feedback VALUES (?,?,?,?)", (alert_id, label, note, time.time()))
        return True

    def counts(self) -> dict[str, Any]:
        """Labels so far and the precision they give (TP / (TP + FP)); the last known counts when the database
        cannot answer (stats must not die of it)."""
        try:
            rows = dict(self._db.execute("SELECT label, COUNT(*) FROM feedback GROUP BY label").fetchall())
        except sqlite3.Error as e:
            if not self._counts_failed:
                self._counts_failed = True
                log.error("evidence store %s cannot count labels (%s): stats show the last known counts", self.path, e)
            return dict(self._counts)
        self._counts_failed = False
        tp, fp = rows.get("true_positive", 0), rows.get("false_positive", 0)
        self._counts = {"true_positive": tp, "false_positive": fp,
                        "precision": round(tp / (tp + fp), 4) if tp + fp else None}
        return dict(self._counts)

    def labelled(self) -> list[tuple[str, str, str, dict[str, Any] | None]]:
        """(alert_id, label, note, evidence or None) for every labelled alert, oldest label first."""
        rows = self._db.execute(
            "SELECT f.alert_id, f.label, f.note, e.body FROM feedback f LEFT JOIN evidence e USING (alert_id) ORDER BY f.ts"
        ).fetchall()
        return [(a, lab, note, json.loads(body) if body else None) for a, lab, note, body in rows]

    def close(self) -> None:
        self._db.close()


def export_feedback(store: EvidenceStore, out: Path) -> dict[str, int]:
    """Write labelled evidence as a dataset the ``models/`` training scripts take (SKAB format, one CSV per alert).

    Each file has ``datetime``, the model's channels and ``anomaly`` (1 for a confirmed fault, 0 for a false
    alarm: the operator says those readings were normal). ``labels.csv`` indexes the files, with the asset that
    raised each alert (empty without ``[[assets]]``): one machine's alerts make its dataset.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = missing = 0
    with open(out / "labels.csv", "w", newline="") as idx:
        w = csv.writer(idx)
        w.writerow(["alert_id", "label", "note", "file", "asset"])
        for alert_id, label, note, ev in store.labelled():
            if ev is None:
                missing += 1
                w.writerow([alert_id, label, note, "", ""])
                continue
            name = f"{alert_id}.csv"
            anomaly = "1" if label == "true_positive" else "0"
            with open(out / name, "w", newline="") as f:
                cw = csv.writer(f, delimiter=";")
                cw.writerow(["datetime", *ev["channels"], "anomaly"])
                for ts, values in zip(ev["ts"], ev["values"]):
                    stamp = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                    cw.writerow([stamp, *values, anomaly])
            written += 1
            w.writerow([alert_id, label, note, name, ev.get("asset", "")])
    return {"written": written, "without_evidence": missing}


def evidence_payload(channels: Sequence[str], rows: Sequence[tuple[float, Sequence[float]]], **extra: Any) -> dict[str, Any]:
    """The evidence document for a set of raw readings (timestamps and channel values)."""
    return {"channels": list(channels), "ts": [r[0] for r in rows], "values": [[float(v) for v in r[1]] for r in rows], **extra}


ACTIVE_ROWS_MAX = 2000  # raw readings kept while an alert is active, for its evidence (feedback folds them in)


class EvidenceRecorder:
    """The raw readings behind alerts, for the store: a short buffer per sensor (the window that raises an alert
    and ``before`` hops before it) and every reading while its alert is raised (up to ``ACTIVE_ROWS_MAX``), added
    to the alert's evidence when it clears. Runs on the pipeline thread; evidence is a bonus, so a store error is
    logged and the alert goes out regardless."""

    def __init__(self, store: EvidenceStore, channels: Sequence[str], buffer_len: int, inline_max_bytes: int = 0):
        self.store = store
        self.channels = list(channels)
        self._len = buffer_len
        self._inline = inline_max_bytes
        self._raw: dict[str, deque[tuple[float, Any]]] = {}
        self._active: dict[str, list[tuple[float, Any]]] = {}

    def add(self, sensor: str, ts: float, values: Any) -> None:
        raw = self._raw.get(sensor)
        if raw is None:
            raw = self._raw[sensor] = deque(maxlen=self._len)
        raw.append((ts, values))
        active = self._active.get(sensor)
        if active is not None and len(active) < ACTIVE_ROWS_MAX:
            active.append((ts, values))

    def add_rows(self, sensor: str, ts: Any, rows: Any) -> None:
        """``add`` for each row (timestamps and a rows x channels array, not written to afterwards)."""
        if not len(ts):
            return
        raw = self._raw.get(sensor)
        if raw is None:
            raw = self._raw[sensor] = deque(maxlen=self._len)
        stamps = ts.tolist()
        raw.extend(zip(stamps[-self._len:], rows[-self._len:]))
        active = self._active.get(sensor)
        if active is not None and len(active) < ACTIVE_ROWS_MAX:
            room = ACTIVE_ROWS_MAX - len(active)
            active.extend(zip(stamps[:room], rows[:room]))

    def raised(self, alert_id: str, sensor: str, **about: Any) -> tuple[str | None, int, dict[str, Any] | None]:
        """Keep the evidence of a raised alert: (evidence id, bytes, inline evidence or None)."""
        self._active[sensor] = []
        ev = evidence_payload(self.channels, list(self._raw.get(sensor, ())), alert_id=alert_id, sensor=sensor, **about)
        try:
            size = self.store.add(alert_id, sensor, ev)
        except Exception as e:  # noqa: BLE001 - evidence is a bonus: the alert must go out regardless
            log.error("could not store evidence of alert %s: %s", alert_id, e)
            return None, 0, None
        if not size:
            return None, 0, None
        return alert_id, size, ev if self._inline and size <= self._inline else None

    def cleared(self, alert_id: str, sensor: str) -> None:
        """The readings while the alert was active join its evidence (so feedback can fold the whole event in)."""
        rows = self._active.pop(sensor, None)
        if not rows:
            return
        try:
            self.store.extend(alert_id, [(ts, [float(x) for x in v]) for ts, v in rows])
        except Exception as e:  # noqa: BLE001 - evidence is a bonus
            log.error("could not extend evidence of alert %s: %s", alert_id, e)

    @property
    def buffer_len(self) -> int:
        """How many readings before (and up to) the raising window are kept for an alert's evidence."""
        return self._len

    def rows(self, alert_id: str) -> list[list[float]] | None:
        """The readings kept for an alert, when they are for these channels."""
        ev = self.store.get(alert_id)
        if not ev or ev.get("channels") != self.channels or not ev.get("values"):
            return None
        return ev["values"]

    def times(self, alert_id: str) -> list[float] | None:
        """The data times of :meth:`rows`' readings (None when not kept)."""
        ev = self.store.get(alert_id) or {}
        t = ev.get("ts")
        if not isinstance(t, list) or len(t) != len(ev.get("values") or []):
            return None
        try:
            return [float(x) for x in t]
        except (TypeError, ValueError):
            return None

    def forget(self, sensor: str) -> None:
        self._raw.pop(sensor, None)
        self._active.pop(sensor, None)

    def sensors(self) -> set[str]:
        return set(self._raw)
