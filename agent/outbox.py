"""Store-and-forward: a SQLite (WAL) outbox that every alert and summary is written to before it is published.

The uplink publishes rows at QoS 1 and deletes a row only after its PUBACK, so a broker that is down, a power cut
or a kill -9 delays a message but never loses it (delivery is at-least-once; every payload has an ``id`` for
consumers to deduplicate). Alerts drain before summaries. The outbox is bounded by rows and bytes: when full,
the oldest summaries are dropped first and alerts only when nothing else is left; every drop is counted. An
alert's ``raised`` and ``cleared`` are dropped together (one without the other is an orphan for the control room):
the clear of a dropped raise, stored or written later, goes with it. A clear whose raise the broker has, or may
have, is dropped only once no other alert is left: its raise would stay on the control room's screen for ever.

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

from agent.counters import Counters
from agent.files import StateDirError, atomic_write, sqlite_corrupt
from agent.dead_letters import DROPPED_RAISE, DeadLetters, alert_of, alert_rows, strip_evidence
from agent.outbox_schema import Lookup, create_or_migrate, fill, low_on_disk
from agent.outbox_schema import disk_full as _disk_full
from agent.open_alerts import track
from agent.records import Outgoing, message_bytes

log = logging.getLogger(__name__)

PRIORITY = {"alert": 0, "advice": 1, "summary": 2}  # lower drains first; anything else sits between
SEQ_BLOCK = 100  # alert seq numbers reserved at a time in <outbox>.seq: one small write per this many alerts
RESERVE_BYTES = 256 * 1024  # ballast kept beside the outbox, given up when the disk is full


@dataclass(frozen=True)
class Row:
    """A stored message; ``topic`` is relative to ``{prefix}/{device_id}/``."""

    id: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox(DeadLetters):
    """The durable, bounded queue between the pipeline and the uplink."""

    def __init__(self, path: Path, counters: Counters, max_rows: int = 10_000, max_bytes: int = 16 * 2**20):
        self.path = Path(path)
        self.counters = counters
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self._lock = threading.Lock()
        self._disk_full_logged = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._reserve = self.path.with_name(self.path.name + ".reserve")
        self._seq_file = self.path.with_name(self.path.name + ".seq")  # outside the database: survives its loss
        self._seq_ceiling = self._read_seq_ceiling()
        self._seq_unsaved = False  # the last attempt to record it failed (said once)
        self._db = self._open()
        self._unfilled = True  # rows without an alert_id may be there: found by their payloads too until filled
        self._fill(0 if self._low_on_disk() else None)  # the room left is for puts: filled once there is more
        # Rows the broker may have: handed to the uplink by pending(), or stored before this process (sent by an
        # earlier one, its PUBACK lost with it). An evicted raise of theirs keeps its clear (it may be on screen).
        self._handed: set[int] = set()
        self._resent: set[int] = set()  # handed out more than once (a lost connection): an earlier copy may be there
        self._first_new = int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]) + 1
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

    def _read_seq_ceiling(self) -> int:
        """The highest alert seq this state directory may have used (0: none, or its record is unreadable)."""
        try:
            return max(0, int(self._seq_file.read_text().strip()))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            log.warning("outbox: %s unreadable (%s): a new outbox would number alerts from 1", self._seq_file.name, e)
            return 0

    def _reserve_seq(self, ceiling: int) -> None:
        """Record (before the row that needs it is committed) that alert seqs up to ``ceiling`` may be used: an
        outbox that has to start anew (corrupt, removed) numbers from above it, never again from 1 (README: seq)."""
        try:
            atomic_write(self._seq_file, f"{ceiling}\n".encode())
            self._seq_ceiling, self._seq_unsaved = ceiling, False
        except OSError as e:  # a full disk: the alert matters more; a new outbox might reuse these numbers
            self.counters.inc("outbox.seq_unsaved")
            if not self._seq_unsaved:
                self._seq_unsaved = True
                log.warning("outbox: cannot record the alert sequence in %s (%s): should this outbox be lost, a new "
                            "one could number alerts again from %d", self._seq_file.name, e.strerror or e,
                            self._seq_ceiling + 1)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA wal_autocheckpoint=100")  # pages: keeps the WAL small on an SD card
        db.execute("PRAGMA journal_size_limit=1048576")
        try:
            try:
                old = create_or_migrate(db)
            except sqlite3.OperationalError as e:
                if not _disk_full(e):
                    raise
                self._room_for_sqlite(db)  # the reserve given up: room for a new column (a few pages)
                try:
                    old = create_or_migrate(db)
                except sqlite3.OperationalError as e2:
                    if not _disk_full(e2):
                        raise
                    old = create_or_migrate(db, index=False)  # the column alone: its index once filled (fill)
        except BaseException:
            db.close()
            raise
        if old:
            log.info("outbox %s: a file from an older version: its alerts' rows get an alert_id", self.path)
        return db

    def _room_for_sqlite(self, db: sqlite3.Connection | None = None) -> None:
        """The disk is full: give up the reserve file and empty the WAL into the file."""
        self._release_reserve()
        try:
            (db or self._db).execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

    def _fill(self, batches: int | None) -> None:
        """Fill the alert_id of the rows an older version wrote (agent.outbox_schema.fill); never fails for the disk."""
        self._unfilled = fill(self._db, self._low_on_disk, batches)

    def put(self, msg: Outgoing) -> int:
        """Store one message durably (alerts get the next per-device ``seq``); returns its row id, 0 if dropped.

        Never raises for a full disk: that is handled like a full outbox (the most expendable rows go first, an
        incoming message is dropped only when nothing at most as precious is left), and every drop is counted.
        """
        with self._lock:
            short = low = self._low_on_disk()
            if short:  # the WAL of the puts since free space was last short goes into the file while there is room
                self._checkpoint()
                low = self._low_on_disk(2)  # room enough again: nothing shed (the WAL emptied after it)
            elif self._unfilled:
                self._fill(1)
            for attempt in range(3):
                try:
                    return self._put(msg, shed="full" if attempt else "low" if low else "near" if short else "")
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
            if msg.kind == "alert":
                try:
                    self._dropped_raise(*alert_of(msg.payload))
                except sqlite3.Error:  # the disk is full: its clear may then be stored without it
                    pass
            return 0

    def _put(self, msg: Outgoing, shed: str) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            payload = dict(msg.payload)
            priority = PRIORITY.get(msg.kind, 1)
            alert_id, state = alert_of(payload) if msg.kind == "alert" else (None, None)
            if state == "cleared" and db.execute("DELETE FROM meta WHERE key=?", (DROPPED_RAISE + str(alert_id),)).rowcount:
                track(db, payload, state, alert_id, False)
                db.execute("COMMIT")  # its raise was dropped: the control room never saw it, nor sees its clear
                self.counters.inc("outbox.dropped.alert")
                log.warning("outbox: dropped the clear of alert %s, whose raise was dropped", alert_id)
                return 0
            if msg.kind == "alert":
                seq = db.execute("SELECT value FROM meta WHERE key='alert_seq'").fetchone()
                payload["seq"] = (seq[0] if seq else self._seq_ceiling) + 1  # a new file: above all used before
                if payload["seq"] > self._seq_ceiling:
                    self._reserve_seq(payload["seq"] + SEQ_BLOCK - 1)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('alert_seq', ?)", (payload["seq"],))
            body = message_bytes(payload)
            if len(body) > self.max_bytes and strip_evidence(payload):  # kept in evidence.db under its evidence_id
                body = message_bytes(payload)
                self.counters.inc("outbox.evidence_stripped")
                log.warning("outbox: this %s is bigger than EDGE_AGENT_OUTBOX__MAX_BYTES (%d) with its evidence "
                            "inline: stored without it (fetch it by evidence_id)", msg.kind, self.max_bytes)
            if len(body) > self.max_bytes:  # evicting every other row would not make it fit: evict none
                db.execute("ROLLBACK")
                self._dropped_raise(alert_id, state)
                self.counters.inc(f"outbox.dropped.{msg.kind}")
                log.error("outbox: this %s (%d bytes) is bigger than EDGE_AGENT_OUTBOX__MAX_BYTES (%d): dropped it, "
                          "nothing else", msg.kind, len(body), self.max_bytes)
                return 0
            dropped = self._make_room(db, len(body), priority, "" if shed == "near" else shed)
            if dropped is None:
                db.execute("ROLLBACK")  # the rows _make_room deleted are back: none of them was dropped
                self._dropped_raise(alert_id, state)
                self.counters.inc(f"outbox.dropped.{msg.kind}")
                log.warning("outbox: no room for this %s without dropping an alert: dropped it", msg.kind)
                return 0
            cur = None
            if state == "cleared" and db.execute("DELETE FROM meta WHERE key=?", (DROPPED_RAISE + str(alert_id),)).rowcount:
                db.execute("UPDATE meta SET value=value-1 WHERE key='alert_seq'")  # its raise was evicted just now
                dropped.append((0, msg.kind))
            else:
                cur = db.execute(
                    "INSERT INTO outbox (kind, priority, topic, payload, qos, retain, created_ts, alert_id) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (msg.kind, priority, msg.topic_suffix, body, msg.qos, int(msg.retain), time.time(), alert_id),
                )
            track(db, payload, state, alert_id, cur is not None)  # same transaction (agent.open_alerts)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a COMMIT that failed with SQLITE_FULL has rolled back already
                db.execute("ROLLBACK")
            raise
        for victim in dropped:  # counted once they are really gone (committed), not when a rollback restored them
            self.counters.inc(f"outbox.dropped.{victim[1]}")
            log.warning("outbox %s: dropped %s", "full" if shed in ("", "near") else "disk nearly full",
                        f"the oldest {victim[1]} (row {victim[0]}) or its pair" if victim[0] else
                        "this clear with its raise")
        if shed:
            self._checkpoint()  # keep the WAL from growing on a nearly full disk
        else:
            self._keep_reserve()
        self._disk_full_logged = False
        if cur is None:
            return 0
        self.counters.inc(f"outbox.written.{msg.kind}")
        return int(cur.lastrowid or 0)

    def _make_room(
        self, db: sqlite3.Connection, incoming: int, priority: int, shed: str
    ) -> list[tuple[int, str]] | None:
        """Drop the oldest most expendable rows until ``incoming`` fits; returns the (row id, kind) deleted, to be
        counted once committed; None when only more precious rows are left (then the incoming message is the one
        to drop and the caller rolls back). ``shed``: ``low`` (free space under the reserve) or ``full`` (an
        insert failed with SQLITE_FULL): free one row whatever the bounds say, so that the insert reuses its
        pages instead of growing the file — an alert only once the disk is really full. An alert goes with the
        other of its raise and clear (stored: deleted too; a raise's clear to come: its id kept in ``meta``),
        unless it is a raise the broker may have (handed to the uplink, or stored before this process): then its
        clear stays, so that a raise on the control room's screen is never left without its clear. For the same
        reason a lone clear (its raise delivered, evicted that way, or a dead letter the broker may have: refused
        after a resend) goes only after every other alert (agent.outbox_schema.Lookup.not_a_lone_clear)."""
        dropped: list[tuple[int, str]] = []
        after = 0  # alerts up to this row id are lone clears (deleting rows never makes one of them not lone)
        rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        while rows and (shed or rows + 1 > self.max_rows or size + incoming > self.max_bytes):
            # Oldest of the most expendable kind first: summaries (priority 2), then others, alerts last.
            victim = db.execute(  # two index lookups (ORDER BY priority DESC, id ASC sorted the whole table)
                "SELECT id, kind, LENGTH(payload), priority, payload FROM outbox "
                "WHERE priority=(SELECT MAX(priority) FROM outbox) ORDER BY id LIMIT 1"
            ).fetchone()
            if victim[3] < priority:
                return None  # never evict an alert to make room for a summary
            if shed == "low" and victim[0] is not None and victim[3] == PRIORITY["alert"]:
                break  # space is short but not gone: keep every alert and try the insert
            if victim[1] == "alert" and not self._unfilled:  # a lone clear (its raise delivered, or evicted as one
                # the broker may have); not while rows lack their alert_id: a scan per candidate (35 s a put at 10,000)
                first = db.execute(Lookup(self._unfilled).not_a_lone_clear(),  # goes after all other alerts
                                   (victim[3], after, json.dumps(sorted(self._handed)))).fetchone()
                victim, after = (first, first[0]) if first else (victim, 2**63 - 1)
            gone = [victim[:3]]
            alert_id, state = alert_of(bytes(victim[4])) if victim[1] == "alert" else (None, None)
            if alert_id is not None:  # the rows of its raise and clear (the payloads are agent.records.message_bytes)
                gone = alert_rows(db, "outbox", alert_id, self._unfilled)
                if victim[0] not in {g[0] for g in gone}:  # never: its payload holds that text
                    gone.append(victim[:3])
                if state == "raised" and (victim[0] in self._handed or victim[0] < self._first_new):
                    gone = [victim[:3]]  # the broker may have it: its clear must follow, not go with it
                else:  # its raise refused and a dead letter: it goes too (else re-queued and never cleared)
                    dead = alert_rows(db, "dead_letter", alert_id, self._unfilled)
                    for d in dead:
                        db.execute("DELETE FROM dead_letter WHERE id=?", (d[0],))
                        dropped.append((d[0], "alert"))
                    if len(gone) == 1 and not dead:
                        self._dropped_raise(alert_id, state)
            for row_id, kind, length, *_ in gone:
                db.execute("DELETE FROM outbox WHERE id=?", (row_id,))
                self._handed.discard(row_id)
                dropped.append((row_id, kind))
                rows, size = rows - 1, size - length
            shed = ""
        return dropped if rows + 1 <= self.max_rows or rows == 0 else None

    def _low_on_disk(self, times: int = 1) -> bool:
        return low_on_disk(self.path.parent, times)

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
            self._resent.update(r.id for r in rows[:limit] if r.id in self._handed)
            self._handed.update(r.id for r in rows[:limit])
        return rows[:limit]

    def ack(self, row_id: int) -> None:
        """Delete a row whose PUBACK arrived (on a full disk it may stay and be sent again: at-least-once)."""
        with self._lock:
            for attempt in range(2):
                try:
                    self._db.execute("DELETE FROM outbox WHERE id=?", (row_id,))
                    self._handed.discard(row_id)
                    self._resent.discard(row_id)
                    return
                except sqlite3.OperationalError as e:
                    if not _disk_full(e):
                        raise
                    self._checkpoint()
            self.counters.inc("outbox.ack_failed")

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
