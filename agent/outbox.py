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
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.counters import Counters
from agent.files import StateDirError, sqlite_corrupt
from agent.records import Outgoing, message_bytes

log = logging.getLogger(__name__)

PRIORITY = {"alert": 0, "advice": 1, "summary": 2}
RESERVE_BYTES = 256 * 1024  # ballast kept beside the outbox, given up when the disk is full  # lower drains first; anything else sits between
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
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_ts REAL NOT NULL,
    reason_code INTEGER NOT NULL,
    reason TEXT NOT NULL,
    refused_ts REAL NOT NULL
);
"""
_COLUMNS = "id, kind, priority, topic, payload, qos, retain, created_ts"


def low_on_disk(directory: Path) -> bool:
    """Free space on ``directory``'s file system under the reserve (1 MiB, or 5 % of a small file system)."""
    try:
        du = shutil.disk_usage(directory)
    except OSError:
        return False
    return du.free < min(2**20, du.total // 20)


def _disk_full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(e)


def strip_evidence(payload: dict[str, Any]) -> bool:
    """Take the inline evidence out of an alert that is too big with it (it stays in evidence.db under its
    ``evidence_id``); False when there is none to take out."""
    return payload.pop("evidence", None) is not None


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
        self._disk_full_logged = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._reserve = self.path.with_name(self.path.name + ".reserve")
        self._db = self._open()
        self._keep_reserve()

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            return db
        except sqlite3.DatabaseError as e:
            if not sqlite_corrupt(e):  # permissions, a read-only or full disk: moving the file would lose it
                raise StateDirError(self.path.parent, f"cannot open {self.path.name} ({e})") from e
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
        db.execute("PRAGMA wal_autocheckpoint=100")  # pages: keeps the WAL small on an SD card
        db.execute("PRAGMA journal_size_limit=1048576")
        db.executescript(_SCHEMA)
        return db

    def put(self, msg: Outgoing) -> int:
        """Store one message durably (alerts get the next per-device ``seq``); returns its row id, 0 if dropped.

        Never raises for a full disk: that is handled like a full outbox (the most expendable rows go first, an
        incoming message is dropped only when nothing at most as precious is left), and every drop is counted.
        """
        with self._lock:
            for attempt in range(3):
                try:
                    return self._put(msg, shed="full" if attempt else "low" if self._low_on_disk() else "")
                except sqlite3.OperationalError as e:
                    if not _disk_full(e):
                        raise
                    if not self._disk_full_logged:
                        self._disk_full_logged = True
                        log.error("outbox %s: disk full (%s): dropping the most expendable messages", self.path, e)
                    self._release_reserve()
                    self._shed_all(PRIORITY.get(msg.kind, 1))
                    self._checkpoint()
            self.counters.inc(f"outbox.dropped.{msg.kind}")
            log.error("outbox %s: disk full, dropped this %s (nothing more expendable left)", self.path, msg.kind)
            return 0

    def _put(self, msg: Outgoing, shed: str) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            payload = dict(msg.payload)
            priority = PRIORITY.get(msg.kind, 1)
            if msg.kind == "alert":
                seq = db.execute("SELECT value FROM meta WHERE key='alert_seq'").fetchone()
                payload["seq"] = (seq[0] if seq else 0) + 1
                db.execute("INSERT OR REPLACE INTO meta VALUES ('alert_seq', ?)", (payload["seq"],))
            body = message_bytes(payload)
            if len(body) > self.max_bytes and strip_evidence(payload):  # kept in evidence.db under its evidence_id
                body = message_bytes(payload)
                self.counters.inc("outbox.evidence_stripped")
                log.warning("outbox: this %s is bigger than EDGE_AGENT_OUTBOX__MAX_BYTES (%d) with its evidence "
                            "inline: stored without it (fetch it by evidence_id)", msg.kind, self.max_bytes)
            if len(body) > self.max_bytes:  # evicting every other row would not make it fit: evict none
                db.execute("ROLLBACK")
                self.counters.inc(f"outbox.dropped.{msg.kind}")
                log.error("outbox: this %s (%d bytes) is bigger than EDGE_AGENT_OUTBOX__MAX_BYTES (%d): dropped it, "
                          "nothing else", msg.kind, len(body), self.max_bytes)
                return 0
            dropped = self._make_room(db, len(body), priority, shed)
            if dropped is None:
                db.execute("ROLLBACK")  # the rows _make_room deleted are back: none of them was dropped
                self.counters.inc(f"outbox.dropped.{msg.kind}")
                log.warning("outbox: no room for this %s without dropping an alert: dropped it", msg.kind)
                return 0
            cur = db.execute(
                "INSERT INTO outbox (kind, priority, topic, payload, qos, retain, created_ts) VALUES (?,?,?,?,?,?,?)",
                (msg.kind, priority, msg.topic_suffix, body, msg.qos, int(msg.retain), time.time()),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a COMMIT that failed with SQLITE_FULL has rolled back already
                db.execute("ROLLBACK")
            raise
        for victim in dropped:  # counted once they are really gone (committed), not when a rollback restored them
            self.counters.inc(f"outbox.dropped.{victim[1]}")
            log.warning("outbox %s: dropped the oldest %s (row %d)", "disk nearly full" if shed else "full", victim[1],
                        victim[0])
        if shed:
            self._checkpoint()  # keep the WAL from growing on a nearly full disk
        else:
            self._keep_reserve()
        self._disk_full_logged = False
        self.counters.inc(f"outbox.written.{msg.kind}")
        return int(cur.lastrowid or 0)

    def _make_room(
        self, db: sqlite3.Connection, incoming: int, priority: int, shed: str
    ) -> list[tuple[int, str]] | None:
        """Drop the oldest most expendable rows until ``incoming`` fits; returns the (row id, kind) deleted, to be
        counted once committed; None when only more precious rows are left (then the incoming message is the one
        to drop and the caller rolls back). ``shed``: ``low`` (free space under the reserve) or ``full`` (an
        insert failed with SQLITE_FULL): free one row whatever the bounds say, so that the insert reuses its
        pages instead of growing the file — an alert only once the disk is really full."""
        dropped: list[tuple[int, str]] = []
        rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        while rows and (shed or rows + 1 > self.max_rows or size + incoming > self.max_bytes):
            # Oldest of the most expendable kind first: summaries (priority 2), then others, alerts last.
            victim = db.execute(
                "SELECT id, kind, LENGTH(payload), priority FROM outbox ORDER BY priority DESC, id ASC LIMIT 1"
            ).fetchone()
            if victim[3] < priority:
                return None  # never evict an alert to make room for a summary
            if shed == "low" and victim[0] is not None and victim[3] == PRIORITY["alert"]:
                break  # space is short but not gone: keep every alert and try the insert
            db.execute("DELETE FROM outbox WHERE id=?", (victim[0],))
            dropped.append((victim[0], victim[1]))
            rows, size = rows - 1, size - victim[2]
            shed = ""
        return dropped if rows + 1 <= self.max_rows or rows == 0 else None

    def _low_on_disk(self) -> bool:
        return low_on_disk(self.path.parent)

    def _keep_reserve(self) -> None:
        """A ballast file beside the outbox: deleted when the disk is full, so SQLite has room to delete rows."""
        if self._reserve.exists():
            return
        try:
            free = shutil.disk_usage(self.path.parent).free
            size = min(RESERVE_BYTES, free // 4)
            if size >= 16384 and not self._low_on_disk():
                with open(self._reserve, "wb") as f:
                    f.truncate(0)
                    f.write(b"\0" * size)  # real blocks, not a sparse file
        except OSError:
            self._reserve.unlink(missing_ok=True)

    def _release_reserve(self) -> None:
        if self._reserve.exists():
            self._reserve.unlink(missing_ok=True)
            log.error("outbox %s: disk full: released the reserve file to make room", self.path)

    def _shed_all(self, priority: int) -> None:
        """On a full disk: drop every row more expendable than the incoming message, in one go."""
        try:
            victims = self._db.execute(
                "SELECT kind, COUNT(*) FROM outbox WHERE priority > ? GROUP BY kind", (priority,)
            ).fetchall()
            if victims:
                self._db.execute("DELETE FROM outbox WHERE priority > ?", (priority,))
                for kind, n in victims:
                    self.counters.inc(f"outbox.dropped.{kind}", n)
                    log.warning("outbox disk full: dropped %d %s message(s)", n, kind)
        except sqlite3.OperationalError as e:
            if not _disk_full(e):
                raise

    def _checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

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
        """Delete a row whose PUBACK arrived (on a full disk it may stay and be sent again: at-least-once)."""
        with self._lock:
            for attempt in range(2):
                try:
                    self._db.execute("DELETE FROM outbox WHERE id=?", (row_id,))
                    return
                except sqlite3.OperationalError as e:
                    if not _disk_full(e):
                        raise
                    self._checkpoint()
            self.counters.inc("outbox.ack_failed")

    def dead_letter(self, row_id: int, reason_code: int, reason: str) -> str | None:
        """Move a row the broker refused into the ``dead_letter`` table (one transaction: never in both, never in
        neither); returns its kind, None when the row is gone already. The table has the outbox's bounds (a broker
        refusing everything for weeks): past them its oldest most expendable rows are dropped, counted and logged."""
        dropped: list[str] = []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT kind FROM outbox WHERE id=?", (row_id,)).fetchone()
                if row is not None:
                    db.execute(f"INSERT OR REPLACE INTO dead_letter ({_COLUMNS}, reason_code, reason, refused_ts) "
                               f"SELECT {_COLUMNS}, ?, ?, ? FROM outbox WHERE id=?",
                               (reason_code, reason, time.time(), row_id))
                    db.execute("DELETE FROM outbox WHERE id=?", (row_id,))
                    dropped = self._trim_dead_letters(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        for kind in dropped:
            self.counters.inc(f"outbox.dropped.{kind}")
            log.warning("outbox: dead letters over EDGE_AGENT_OUTBOX__MAX_ROWS/MAX_BYTES: dropped the oldest %s", kind)
        return None if row is None else str(row[0])

    def _trim_dead_letters(self, db: sqlite3.Connection) -> list[str]:
        dropped: list[str] = []
        rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM dead_letter").fetchone()
        while rows > 1 and (rows > self.max_rows or size > self.max_bytes):
            victim = db.execute(
                "SELECT id, kind, LENGTH(payload) FROM dead_letter ORDER BY priority DESC, id ASC LIMIT 1").fetchone()
            db.execute("DELETE FROM dead_letter WHERE id=?", (victim[0],))
            dropped.append(str(victim[1]))
            rows, size = rows - 1, size - victim[2]
        return dropped

    def strip_row_evidence(self, row_id: int) -> bool:
        """Store this row's alert without its inline evidence (the broker refused it as too large); False when the row
        is gone or has no evidence inline."""
        with self._lock:
            row = self._db.execute("SELECT payload FROM outbox WHERE id=?", (row_id,)).fetchone()
            if row is None:
                return False
            payload = json.loads(row[0])
            if not strip_evidence(payload):
                return False
            self._db.execute("UPDATE outbox SET payload=? WHERE id=?", (message_bytes(payload), row_id))
        return True

    def dead_letter_behind(self, row_id: int, alert_id: str) -> bool:
        """While an earlier row of this alert is a dead letter, this one (its ``cleared``) follows it there unsent,
        under the refusal's code: the two are re-queued together, in order. True when moved."""
        with self._lock:
            first = self._db.execute(
                "SELECT id, reason_code FROM dead_letter WHERE kind='alert' AND id<? AND "
                "json_extract(CAST(payload AS TEXT), '$.alert_id')=? ORDER BY id LIMIT 1", (row_id, alert_id)).fetchone()
        return first is not None and self.dead_letter(row_id, first[1], f"not sent: follows refused row {first[0]}") is not None

    def dead_letter_due(self, codes: frozenset[int], refused_before: float) -> bool:
        """Is a dead letter refused with one of ``codes`` before ``refused_before`` (time.time())?"""
        marks = ",".join("?" * len(codes))
        with self._lock:
            return self._db.execute(f"SELECT 1 FROM dead_letter WHERE reason_code IN ({marks}) AND refused_ts<? LIMIT 1",
                                    (*sorted(codes), refused_before)).fetchone() is not None

    def requeue_dead_letters(self) -> list[int]:
        """Put every dead letter back into the outbox under its old row id (so in its old place: a ``raised``
        before its ``cleared``); returns their ids. On every connection: the operator may have fixed the broker."""
        with self._lock:
            db = self._db
            if not db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]:
                return []  # nothing written: an empty DELETE still dirties a page (a start on a full disk)
            db.execute("BEGIN IMMEDIATE")
            try:
                n = [r[0] for r in db.execute("SELECT id FROM dead_letter ORDER BY id")]
                db.execute(f"INSERT OR IGNORE INTO outbox ({_COLUMNS}) SELECT {_COLUMNS} FROM dead_letter")
                db.execute("DELETE FROM dead_letter")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return n

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
