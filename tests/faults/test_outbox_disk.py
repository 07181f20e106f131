"""The outbox on a nearly full disk, on real tmpfs mounts (root, as ``tiny_fs``): a file from the version before the
alert_id column opens and keeps every row (filling that column in one transaction needed as much free space as the
whole file: exit 78 at every start, on the very device that was shedding for want of space), and a put does not
shed for a lack of space its own checkpoint has just made up."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.counters import Counters
from agent.outbox import Outbox
from agent.records import Outgoing, message_bytes
from tests.helpers import OLD_OUTBOX_SCHEMA as _OLD_SCHEMA



@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"fs{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (root needed, as for tiny_fs): {r.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _free(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def _leave_free(fs: Path, free: int) -> None:
    with open(fs / "filler", "wb") as f:
        f.write(b"\0" * (_free(fs) - free))


def _alert(alert_id: str, state: str, seq: int, pad: int = 0) -> bytes:
    return message_bytes({"id": f"{alert_id}-{state}", "alert_id": alert_id, "state": state, "seq": seq,
                          **({"pad": "x" * pad} if pad else {})})


def _old_outbox_file(path: Path, filler: int) -> None:
    """The previous version's file: a dead letter (Y's raise: refused, the control room never saw it), then queued
    L's clear (its raise delivered), Y's clear, X's raise and clear, four summaries, and ``filler`` raises of ~800
    bytes."""
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    cols = "id, kind, priority, topic, payload, qos, retain, created_ts"
    db.execute(f"INSERT INTO dead_letter ({cols}, reason_code, reason, refused_ts) VALUES "
               "(1, 'alert', 0, 'alerts', ?, 1, 0, 0, 135, 'not authorized', 0)", (_alert("Y", "raised", 1),))
    rows = [("alert", _alert("L", "cleared", 2)), ("alert", _alert("Y", "cleared", 3)),
            ("alert", _alert("X", "raised", 4)), ("alert", _alert("X", "cleared", 5))]
    rows += [("summary", message_bytes({"id": f"s{i}"})) for i in range(4)]
    rows += [("alert", _alert(f"F{i}", "raised", 6 + i, pad=700)) for i in range(filler)]
    db.executemany(f"INSERT INTO outbox ({cols}) VALUES (?, ?, ?, ?, ?, 1, 0, 0)",
                   [(i, kind, 0 if kind == "alert" else 2, kind + "s", p) for i, (kind, p) in enumerate(rows, 2)])
    db.execute("INSERT INTO meta VALUES ('alert_seq', ?)", (5 + filler,))
    db.commit()
    db.close()


def _ids(ob: Outbox, table: str) -> list[str]:
    return [json.loads(p)["id"] for (p,) in ob._db.execute(f"SELECT payload FROM {table} ORDER BY id")]


def _unfilled(ob: Outbox) -> int:
    return sum(ob._db.execute(f"SELECT COUNT(*) FROM {t} WHERE kind='alert' AND alert_id IS NULL").fetchone()[0]
               for t in ("outbox", "dead_letter"))


@pytest.mark.parametrize("filler, size, free, reserve, filled", [
    (3000, "8m", 1536 * 1024, 0, True),  # the file 2.5 MB, its WAL filled at once 2.7 MB: filled 200 rows a commit
    (20, "2m", 40 * 1024, 256 * 1024, True),  # the column added once the reserve is given up, then filled
    (3000, "8m", 100 * 1024, 0, False),  # under the free-space reserve: filled later, found by payload meanwhile
], ids=["3000-rows-1.5MB-free", "20-rows-40KB-free-reserve", "3000-rows-100KB-free"])
def test_an_outbox_file_from_the_previous_version_opens_on_a_nearly_full_disk(
    tmpfs: Callable[[str], Path], filler: int, size: str, free: int, reserve: int, filled: bool
) -> None:
    fs = tmpfs(size)
    path = fs / "state" / "outbox.db"
    path.parent.mkdir()
    _old_outbox_file(path, filler)
    if reserve:  # the ballast the previous version kept beside it
        (path.parent / "outbox.db.reserve").write_bytes(b"\0" * reserve)
    _leave_free(fs, free)
    before = {"outbox": None, "dead_letter": None}
    db = sqlite3.connect(path)
    before = {t: [json.loads(p)["id"] for (p,) in db.execute(f"SELECT payload FROM {t} ORDER BY id")] for t in before}
    db.close()

    c = Counters()
    ob = Outbox(path, c, max_rows=100_000)
    assert {t: _ids(ob, t) for t in before} == before  # nothing lost
    assert (_unfilled(ob) == 0) == filled, _unfilled(ob)
    assert ob.put(Outgoing("alert", "alerts", {"id": "Z-raised", "alert_id": "Z", "state": "raised"}))
    assert json.loads(ob._db.execute("SELECT payload FROM outbox ORDER BY id DESC").fetchone()[0])["seq"] == 6 + filler
    alerts = [i for i in before["outbox"] if not i.startswith("s")]  # under the free-space reserve a summary is shed
    assert [i for i in _ids(ob, "outbox") if not i.startswith("s")] == alerts + ["Z-raised"]

    # the lookups find the old rows, alert_id filled or not: the summaries go, then Y's clear with its raise (a dead
    # letter, never seen: found by its payload while unfilled). Filled: Y's clear is the oldest alert that is not a
    # lone clear; L's clear is lone (its raise delivered): kept. Unfilled: oldest first (looking for lone clears
    # would scan the rows without alert_id once per candidate): L's clear, then Y's clear and raise
    summaries = sum(1 for r in ob.pending(100_000) if r.kind == "summary")
    ob.max_rows = ob.depth() - summaries - (0 if filled else 1)
    assert ob.put(Outgoing("alert", "alerts", {"id": "V-raised", "alert_id": "V", "state": "raised"}))
    kept = ["L-cleared"] if filled else []
    assert _ids(ob, "outbox") == kept + ["X-raised", "X-cleared"] + alerts[4:] + ["Z-raised", "V-raised"]
    assert _ids(ob, "dead_letter") == []
    assert c.snapshot("outbox.dropped.") == {"summary": 4, "alert": 2 if filled else 3}
    assert ob._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ob.close()

    (fs / "filler").unlink()  # room again: the next start fills the rest
    ob = Outbox(path, c, max_rows=100_000)
    assert _unfilled(ob) == 0
    ob.close()


def test_a_put_whose_checkpoint_makes_room_again_sheds_nothing(tmpfs: Callable[[str], Path]) -> None:
    """Free space under the reserve because of the WAL: once the put's checkpoint has emptied it there is room
    again, and nothing is dropped for it."""
    fs = tmpfs("4m")  # the reserve: 5 % of it, 205 KB
    path = fs / "outbox.db"
    c = Counters()
    ob = Outbox(path, c, max_rows=100_000)
    (fs / "outbox.db.reserve").unlink()
    reader = sqlite3.connect(path)  # a reader keeps the WAL from being reset: it grows
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM outbox").fetchone()
    for i in range(150):
        assert ob.put(Outgoing("summary", "summary", {"id": f"s{i}", "pad": "x" * 300}))
    reader.rollback()
    reader.close()
    wal = os.path.getsize(str(path) + "-wal")
    assert wal > 400 * 1024, wal
    threshold = min(2**20, os.statvfs(fs).f_blocks * os.statvfs(fs).f_frsize // 20)
    _leave_free(fs, threshold - 64 * 1024)  # short of the reserve by 64 KB: the WAL's checkpoint frees far more
    assert ob.put(Outgoing("summary", "summary", {"id": "last"}))
    assert c.snapshot("outbox.dropped.") == {}
    assert ob.depth() == 151
    ob.close()


def test_filling_an_older_file_never_takes_the_room_new_alerts_need(tmpfs: Callable[[str], Path]) -> None:
    """20,000 alerts of the previous version with just over the reserve free: the fill at open grew the file
    (column and index) until the disk was full, giving up the ballast on the way; then every new alert was dropped
    (20 of 20) and acknowledgements failed. It stops once free space is under the reserve: the rest waits."""
    fs = tmpfs("24m")
    path = fs / "state" / "outbox.db"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.executemany("INSERT INTO outbox (kind, priority, topic, payload, qos, retain, created_ts) "
                   "VALUES ('alert', 0, 'alerts', ?, 1, 0, 0)",
                   [(_alert(f"{i:032x}", "raised", i + 1, pad=500),) for i in range(20_000)])  # ids as long as real ones
    db.execute("INSERT INTO meta VALUES ('alert_seq', 20000)")
    db.commit()
    db.close()
    _leave_free(fs, 1100 * 1024)  # the reserve is 1 MiB here
    c = Counters()
    ob = Outbox(path, c, max_rows=100_000)
    free_after_open = _free(fs)
    for i in range(20):
        ob.put(Outgoing("alert", "alerts", {"id": f"N{i}-raised", "alert_id": f"N{i}", "state": "raised"}))
    assert c.get("outbox.written.alert") == 20 and c.snapshot("outbox.dropped.") == {}, (free_after_open, c.snapshot())
    assert free_after_open >= 2**20 - 256 * 1024, free_after_open  # at most about one batch under the reserve
    assert _unfilled(ob) > 0  # the rest later
    for row in ob.pending(10):
        ob.ack(row.id)
    assert c.get("outbox.ack_failed") == 0 and ob.depth() == 20_010
    ob.close()


def test_an_older_file_opens_when_even_the_new_index_has_no_room(tmpfs: Callable[[str], Path]) -> None:
    """No ballast left (the previous version gave it up) and 40 KB free: the column and its index did not fit even
    after the WAL was emptied, and the agent could not start (exit 78). The column goes in alone; its index is
    made once the rows are filled, at a start with room."""
    fs = tmpfs("2m")
    path = fs / "state" / "outbox.db"
    path.parent.mkdir()
    _old_outbox_file(path, 20)
    _leave_free(fs, 40 * 1024)
    before = {t: [json.loads(p)["id"] for (p,) in sqlite3.connect(path).execute(f"SELECT payload FROM {t} ORDER BY id")]
              for t in ("outbox", "dead_letter")}
    ob = Outbox(path, Counters(), max_rows=100_000)
    assert {t: _ids(ob, t) for t in before} == before
    assert not ob._db.execute("SELECT 1 FROM sqlite_master WHERE name='outbox_alert'").fetchone()
    ob.close()
    (fs / "filler").unlink()
    ob = Outbox(path, Counters(), max_rows=100_000)
    assert _unfilled(ob) == 0 and {t: _ids(ob, t) for t in before} == before
    assert ob._db.execute("SELECT 1 FROM sqlite_master WHERE name='outbox_alert'").fetchone()
    ob.close()
