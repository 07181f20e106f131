"""Small helpers for tests that drive a Pipeline directly."""

from __future__ import annotations

from typing import Any, Iterable

from agent.messages import Messages
from agent.records import Outgoing


def outgoing(events: Iterable[Any], device_id: str = "gw") -> list[Outgoing]:
    """The messages the daemon would publish for these events (agent.messages, the one place that builds them)."""
    return Messages(device_id).outgoing(list(events))


# The outbox file's schema before the alert_id column (agent/outbox.py up to 09ee619): the migration's subject
# (tests/unit/test_outbox.py, tests/faults/test_outbox_disk.py).
OLD_OUTBOX_SCHEMA = """
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, priority INTEGER NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created_ts REAL NOT NULL);
CREATE INDEX outbox_order ON outbox (priority, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, priority INTEGER NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created_ts REAL NOT NULL,
    reason_code INTEGER NOT NULL, reason TEXT NOT NULL, refused_ts REAL NOT NULL);
"""
