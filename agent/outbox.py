"""Store-and-forward: a SQLite (WAL) outbox that every alert and summary is written to before it is published.

The uplink publishes rows at QoS 1 and deletes a row only after its PUBACK, so a broker that is down, a power cut
or a kill -9 delays a message but never loses it (delivery is at-least-once; every payload has an ``id`` for
consumers to deduplicate). Alerts drain before summaries. The outbox is bounded by rows and bytes: when full,
the oldest summaries are dropped first and alerts only when nothing else is left; every drop is counted.

``synchronous=FULL``: each commit is on disk before ``put`` returns. Writes are rare (alerts and a summary every
few minutes), so the SD card sees a handful of fsyncs an hour and a power cut loses nothing that was written.
Shared by the pipeline thread (put) and the uplink thread (pending/ack) behind one lock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.counters import Counters
from agent.records import Outgoing

log = logging.getLogger(__name__)

PRIORITY = {"alert": 0, "summary": 2}  # lower drains first; anything else sits between
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    """A stored message; ``topic`` is relative to ``{prefix}/{device_id}/``."""

    id: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """The durable, bounded queue between the pipeline and the uplink."""

    def __init__(self, path: Path, counters: Counters, max_rows: int = 10_000, max_bytes: int = 16 * 2**20):
        self.path = Path(path)
        self.counters = counters
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            return db
        except sqlite3.DatabaseError as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is corrupt (%s): moved aside to %s, starting a new one", self.path, e, aside.name)
            self.counters.inc("outbox.corrupt_recovered")
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    p.rename(Path(str(aside) + suffix))
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    def put(self, msg: Outgoing) -> int:
        """Store one message durably (alerts get the next per-device ``seq``); returns its row id."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                payload = dict(msg.payload)
                if msg.kind == "alert":
                    seq = db.execute("SELECT value FROM meta WHERE key='alert_seq'").fetchone()
                    payload["seq"] = (seq[0] if seq else 0) + 1
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('alert_seq', ?)", (payload["seq"],))
                body = json.dumps(payload, separators=(",", ":")).encode()
                self._make_room(db, len(body))
                cur = db.execute(
                    "INSERT INTO outbox (kind, priority, topic, payload, qos, retain, created_ts) VALUES (?,?,?,?,?,?,?)",
                    (msg.kind, PRIORITY.get(msg.kind, 1), msg.topic_suffix, body, msg.qos, int(msg.retain), time.time()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.counters.inc(f"outbox.written.{msg.kind}")
            return int(cur.lastrowid or 0)

    def _make_room(self, db: sqlite3.Connection, incoming: int) -> None:
        rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        # Oldest of the most expendable kind first: summaries (priority 2), then others, alerts last.
        while rows and (rows + 1 > self.max_rows or size + incoming > self.max_bytes):
            victim = db.execute(
                "SELECT id, kind, LENGTH(payload) FROM outbox ORDER BY priority DESC, id ASC LIMIT 1"
            ).fetchone()
            db.execute("DELETE FROM outbox WHERE id=?", (victim[0],))
            self.counters.inc(f"outbox.dropped.{victim[1]}")
            log.warning("outbox full: dropped the oldest %s (row %d)", victim[1], victim[0])
            rows, size = rows - 1, size - victim[2]

    def pending(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[Row]:
        """Up to ``limit`` rows in drain order (alerts first, then oldest first), skipping ``exclude``."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, kind, topic, payload, qos, retain FROM outbox ORDER BY priority, id LIMIT ?",
                (limit + len(exclude),),
            )
            rows = [Row(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])) for r in cur if r[0] not in exclude]
        return rows[:limit]

    def ack(self, row_id: int) -> None:
        """Delete a row whose PUBACK arrived."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id=?", (row_id,))

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()
