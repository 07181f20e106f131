"""The tables of the outbox file (agent.outbox, agent.dead_letters), and the migration that lets a file written by
an older version open and keep working.

An alert's rows carry its ``alert_id`` in a column of their own, indexed: evicting an alert finds its raise and
clear (queued or dead letters) by that index, not by reading every payload (a full scan of both tables per evicted
row held the outbox's lock 30 ms a row with 10,000 rows in each). Files from before it get the column added and
filled from their payloads when they are opened, in one transaction."""

from __future__ import annotations

import sqlite3

from agent.dead_letters import DEAD_LETTER_INDEX, alert_of

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


def create_or_migrate(db: sqlite3.Connection) -> list[str]:
    """Create the tables, or add the ``alert_id`` column to those of an older file, and fill it for alerts without it
    (the value ``agent.dead_letters.alert_of`` reads from the payload, as for a row written now); returns the tables
    that had no such column. One transaction: all or nothing, and a new file's schema is written to the WAL once (a
    statement at a time wrote its pages again and again: 16 KB more, on a state directory that may be nearly full)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            db.execute(statement)
        old = [t for t in TABLES if "alert_id" not in {r[1] for r in db.execute(f"PRAGMA table_info({t})")}]
        for table in TABLES:  # also rows an older version wrote into this file (rolled back to, then forward again)
            if table in old:
                db.execute(f"ALTER TABLE {table} ADD COLUMN alert_id TEXT")
            rows = db.execute(f"SELECT id, payload FROM {table} WHERE kind='alert' AND alert_id IS NULL").fetchall()
            ids = [(alert_of(p.encode() if isinstance(p, str) else bytes(p))[0], i) for i, p in rows]
            db.executemany(f"UPDATE {table} SET alert_id=? WHERE id=?", [x for x in ids if x[0] is not None])
        db.execute(OUTBOX_INDEX)
        if db.execute("SELECT 1 FROM dead_letter LIMIT 1").fetchone():
            db.execute(DEAD_LETTER_INDEX)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return old
