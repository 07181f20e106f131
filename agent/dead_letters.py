"""The outbox's dead letters (split from agent.outbox, whose ``Outbox`` they are part of): messages the broker
refused (an MQTT 5 PUBACK reason code of 0x80 or more, agent.uplink_refusals) kept in the ``dead_letter`` table of the
outbox file, bounded like the outbox, and put back into it in their old places on every connection. And the two
helpers both read alerts with."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import Any, Mapping

from agent.counters import Counters
from agent.records import message_bytes

log = logging.getLogger("agent.outbox")

# agent.outbox_schema: created with the first dead letter
DEAD_LETTER_INDEX = "CREATE INDEX IF NOT EXISTS dead_letter_alert ON dead_letter (alert_id) WHERE alert_id IS NOT NULL"
DROPPED_RAISE = "dropped_raise:"  # meta key + alert id: a raise dropped before its clear came; that clear goes too
DROPPED_RAISES_KEPT = 10_000  # such ids kept at most (the oldest forgotten)
_COLUMNS = "id, kind, priority, topic, payload, qos, retain, created_ts, alert_id"  # agent.outbox_schema


class DeadLetters:
    """The dead-letter half of ``agent.outbox.Outbox`` (its database, lock, counters and bounds)."""

    _db: sqlite3.Connection
    _lock: threading.Lock
    counters: Counters
    max_rows: int
    max_bytes: int
    _handed: set[int]
    _resent: set[int]
    _unfilled: bool

    def _dropped_raise(self, alert_id: str | None, state: str | None) -> None:
        """A raise dropped before it was stored: its clear, when it comes, is dropped too."""
        if state == "raised" and alert_id is not None:
            db = self._db
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, 0)", (DROPPED_RAISE + alert_id,))
            db.execute("DELETE FROM meta WHERE rowid IN (SELECT rowid FROM meta WHERE key >= ? AND key < ? "
                       "ORDER BY rowid DESC LIMIT -1 OFFSET ?)", (DROPPED_RAISE, DROPPED_RAISE[:-1] + ";",
                                                                  DROPPED_RAISES_KEPT))

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
                    db.execute(DEAD_LETTER_INDEX)  # with the first dead letter (agent.outbox_schema)
                    db.execute(f"INSERT OR REPLACE INTO dead_letter ({_COLUMNS}, reason_code, reason, refused_ts) "
                               f"SELECT {_COLUMNS}, ?, ?, ? FROM outbox WHERE id=?",
                               (reason_code, reason, time.time(), row_id))
                    db.execute("DELETE FROM outbox WHERE id=?", (row_id,))
                    if row_id not in self._resent:  # refused: the broker does not have it (unless an earlier copy
                        self._handed.discard(row_id)  # went out before a lost connection: in doubt, keep its clear)
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
        """Drop the oldest most expendable dead letters past the bounds. An alert goes with its other rows (dead
        letters or still queued: refused, the control room never saw it; a raise whose clear is still to come
        leaves its id, so that clear is dropped when it comes); a lone clear (its raise delivered) goes last. A raise
        the broker may have (refused after a resend: its first copy may be on screen) goes alone, its clear kept."""
        dropped: list[str] = []
        rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM dead_letter").fetchone()
        while rows > 1 and (rows > self.max_rows or size > self.max_bytes):
            firsts = dict(db.execute(  # a raise the broker may have (refused after a resend) leaves its clear lone
                "SELECT json_extract(CAST(payload AS TEXT), '$.alert_id'), MIN(id) FROM dead_letter WHERE kind='alert' "
                "AND id NOT IN (SELECT value FROM json_each(?)) GROUP BY 1", (json.dumps(sorted(self._handed)),)).fetchall())
            cur = db.execute("SELECT id, kind, LENGTH(payload), payload, json_extract(CAST(payload AS TEXT), "
                             "'$.alert_id'), json_extract(CAST(payload AS TEXT), '$.state') FROM dead_letter "
                             "ORDER BY priority DESC, id ASC")
            victim = first = cur.fetchone()
            alert_id, lone = None, True
            while victim is not None:  # one pass, one query: this runs under the outbox's lock
                alert_id = victim[4] if victim[1] == "alert" and isinstance(victim[4], str) else None
                lone = alert_id is not None and victim[5] == "cleared" and firsts.get(alert_id) == victim[0]
                if not lone:  # a clear whose raise is not here was delivered: that clear must come, last to go
                    break
                victim = cur.fetchone()
            cur.close()
            if victim is None:
                victim = first
            gone = {"dead_letter": [victim[:3]], "outbox": []}
            if alert_id is not None and not lone and victim[0] not in self._handed:  # else it goes alone: the broker
                gone = {t: alert_rows(db, t, alert_id, self._unfilled) for t in gone}  # may have it, its clear stays
                if not any(alert_of(bytes(r[3]))[1] == "cleared" for t in gone for r in gone[t]):
                    self._dropped_raise(alert_id, victim[5])
            for table, victims in gone.items():
                for row_id, kind, length, *_ in victims:
                    db.execute(f"DELETE FROM {table} WHERE id=?", (row_id,))
                    self._handed.discard(row_id)
                    dropped.append(str(kind))
                    if table == "dead_letter":
                        rows, size = rows - 1, size - length
        return dropped

    def queued(self, ids: set[int]) -> set[int]:
        """Those of ``ids`` still in the outbox (not accepted, nor dropped since)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM outbox") if r[0] in ids} if ids else set()

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


def strip_evidence(payload: dict[str, Any]) -> bool:
    """Take the inline evidence out of an alert that is too big with it (it stays in evidence.db under its
    ``evidence_id``); False when there is none to take out."""
    return payload.pop("evidence", None) is not None


def alert_of(payload: bytes | Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(alert_id, state) of an alert's payload (None, None for anything else)."""
    if isinstance(payload, bytes):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None, None
    if not isinstance(payload, Mapping):
        return None, None
    alert_id, state = payload.get("alert_id"), payload.get("state")
    return (alert_id if isinstance(alert_id, str) else None), (state if isinstance(state, str) else None)


def alert_rows(db: sqlite3.Connection, table: str, alert_id: str, unfilled: bool = False) -> list[Any]:
    """(id, kind, length, payload) of an alert's rows in ``table`` (``outbox`` or ``dead_letter``), oldest first: by
    the indexed ``alert_id`` column (agent.outbox_schema); ``unfilled`` (rows an older version wrote are still
    without it): also those among them whose payload (agent.records.message_bytes: compact JSON) has that id."""
    if not unfilled:
        return db.execute(f"SELECT id, kind, LENGTH(payload), payload FROM {table} WHERE alert_id=? AND kind='alert' "
                          "ORDER BY id", (alert_id,)).fetchall()
    key = json.dumps({"alert_id": alert_id}, separators=(",", ":"))[1:-1].encode()
    return db.execute(f"SELECT id, kind, LENGTH(payload), payload FROM {table} WHERE kind='alert' AND (alert_id=? OR "
                      "alert_id IS NULL AND instr(payload, ?) AND json_extract(CAST(payload AS TEXT), '$.alert_id')=?) "
                      "ORDER BY id", (alert_id, key, alert_id)).fetchall()
