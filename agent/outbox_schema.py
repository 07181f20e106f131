"""The tables of the outbox file (agent.outbox, agent.dead_letters), the migration that lets a file written by an
older version open and keep working, and how an alert's rows are looked up.

An alert's rows carry its ``alert_id`` in a column of their own, indexed: evicting an alert finds its raise and
clear (queued or dead letters) by that index, not by reading every payload (a full scan of both tables per evicted
row held the outbox's lock 30 ms a row with 10,000 rows in each). A file from before it gets the column when it is
opened (a few pages) and the column is filled from the payloads ``FILL_BATCH`` rows a commit, the WAL checkpointed
between: filled in one transaction, the WAL grew to the size of the file, and on a nearly full disk the outbox could
not be opened at all (exit 78 at every start). Opening fails for the disk only where SQLite cannot open the file
at all: what cannot be written yet waits for a later put or start (the fill never takes the room puts need), and
until then the lookups also read the payloads of the rows without it (``Lookup``)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Callable

from agent.dead_letters import DEAD_LETTER_INDEX

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_ts REAL NOT NULL,
    alert_id TEXT
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
    refused_ts REAL NOT NULL,
    alert_id TEXT
);
"""
# Created once the column is there (an older file gets it first). Partial: summaries have no entry. The dead
# letters' index only with the first dead letter (DEAD_LETTER_INDEX, in its transaction): every b-tree is a page
# (4 KB) of a state directory that may be nearly full, and most outboxes never hold a dead letter.
OUTBOX_INDEX = "CREATE INDEX IF NOT EXISTS outbox_alert ON outbox (alert_id) WHERE alert_id IS NOT NULL"
TABLES = ("outbox", "dead_letter")
FILL_BATCH = 200  # rows whose alert_id is filled per commit (a batch of ~800-byte alerts: ~160 KB of WAL)
_AID = "json_extract(CAST({p}payload AS TEXT), '$.alert_id')"
# An alert row an older version wrote (or the fill has not reached yet): alert_id NULL, one in its payload.
_UNFILLED = ("kind='alert' AND alert_id IS NULL AND CASE WHEN json_valid(CAST(payload AS TEXT)) THEN "
             "json_type(CAST(payload AS TEXT), '$.alert_id')='text' END")


def create_or_migrate(db: sqlite3.Connection, index: bool = True) -> list[str]:
    """Create the tables, or add the ``alert_id`` column to those of an older file (not filled: ``fill``); returns
    the tables that had no such column. One transaction of a few pages: a new file's schema is written to the WAL
    once (a statement at a time wrote its pages again and again: 16 KB more, on a state directory that may be nearly
    full), an up-to-date file's not at all. ``index=False``: without the alert_id index (a disk too full even for
    its first page: ``fill`` makes it once the column is filled; until then the lookups scan)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            db.execute(statement)
        old = [t for t in TABLES if not has_column(db, t)]
        for table in old:
            db.execute(f"ALTER TABLE {table} ADD COLUMN alert_id TEXT")
        if index:
            db.execute(OUTBOX_INDEX)
        if index and db.execute("SELECT 1 FROM dead_letter LIMIT 1").fetchone():
            db.execute(DEAD_LETTER_INDEX)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return old


def has_column(db: sqlite3.Connection, table: str) -> bool:
    return "alert_id" in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def unfilled(db: sqlite3.Connection) -> bool:
    """Are there alert rows without their alert_id (a file from an older version, or rows one wrote into it)?"""
    return any(db.execute(f"SELECT 1 FROM {t} WHERE {_UNFILLED} LIMIT 1").fetchone() for t in TABLES)


def low_on_disk(directory: Path, times: int = 1) -> bool:
    """Free space on ``directory``'s file system under the reserve (1 MiB, or 5 % of a small file system)."""
    try:
        du = shutil.disk_usage(directory)
    except OSError:
        return False
    return du.free < times * min(2**20, du.total // 20)


def disk_full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(e)


def fill(db: sqlite3.Connection, short: Callable[[], bool], batches: int | None = None) -> bool:
    """Fill the alert_id of rows without it, ``FILL_BATCH`` a commit, checkpointing the WAL after each (at most
    ``batches`` commits; 0: only look); returns True when rows are left without it. Never takes the room that puts
    need: it stops as soon as ``short()`` says free space is under the reserve, or at a full disk (the rest waits
    for a later put or start); the reserve file is never given up for it. The alert_id index is made once the rows
    are filled, if an older file's migration had to leave it out."""
    done = 0
    for table in TABLES:
        after = 0
        while True:
            if batches is not None and done >= batches:
                return unfilled(db)
            ids = [r[0] for r in db.execute(f"SELECT id FROM {table} WHERE id>? AND {_UNFILLED} ORDER BY id LIMIT ?",
                                            (after, FILL_BATCH))]
            if not ids:
                break
            if short():
                return True
            try:
                db.execute(f"UPDATE {table} SET alert_id={_AID.format(p='')} WHERE id IN "
                           f"({','.join(map(str, ids))})")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as e:
                if not disk_full(e):
                    raise
                return True
            after, done = ids[-1], done + 1
    try:
        db.execute(OUTBOX_INDEX)  # IF NOT EXISTS: nothing written when it is there
    except sqlite3.OperationalError as e:
        if not disk_full(e):
            raise
    return False


class Lookup:
    """SQL that finds an alert's rows: by the indexed column, and while some rows lack it (``unfilled``), also among
    those by their payload (a scan of them: only until the column is filled)."""

    def __init__(self, unfilled: bool):
        self.unfilled = unfilled

    def same_alert(self, x: str) -> str:
        """A condition on a row (unqualified columns): an alert row of alert id ``x`` (an SQL expression)."""
        if not self.unfilled:
            return f"alert_id={x}"
        return f"(alert_id={x} OR alert_id IS NULL AND kind='alert' AND {_AID.format(p='')}={x})"

    def alert_id_of(self, table: str) -> str:
        """The alert id of a row of ``table`` (its alias), as an SQL expression."""
        if not self.unfilled:
            return f"{table}.alert_id"
        return f"COALESCE({table}.alert_id, {_AID.format(p=table + '.')})"

    def not_a_lone_clear(self) -> str:
        """The oldest alert row of a priority after a given id that is not a lone clear (parameters: priority, id,
        the ids the broker may have as a JSON list): a clear with no earlier row of its alert queued and none a
        dead letter but a raise the broker may have (its raise delivered, evicted as one the broker may have, or
        refused after a resend, its first copy perhaps delivered): on the control room's screen its raise waits for
        it. Index lookups (alert_id); a payload is read only for a row that may be one (unfilled: the scans of the
        rows without alert_id only for clears)."""
        aid = self.alert_id_of("o")
        cleared = "json_valid(CAST(payload AS TEXT)) AND json_extract(CAST(payload AS TEXT), '$.state') IS 'cleared'"
        alone = f"""NOT EXISTS (SELECT 1 FROM outbox WHERE {self.same_alert(aid)} AND id<o.id)
    AND NOT EXISTS (SELECT 1 FROM dead_letter WHERE {self.same_alert(aid)}
                    AND id NOT IN (SELECT value FROM json_each(?)))"""
        return f"""
SELECT id, kind, LENGTH(payload), priority, payload FROM outbox AS o WHERE priority=? AND id>? AND NOT (
    kind='alert' AND {aid} IS NOT NULL AND {f"{alone} AND {cleared}" if not self.unfilled else f"{cleared} AND {alone}"}
) ORDER BY id LIMIT 1"""
