"""The SQLite outbox: durable order, priorities, bounds, corruption."""

from __future__ import annotations

import json
import sqlite3

from agent.counters import Counters
from agent.outbox import Outbox
from agent.records import Outgoing
from tests.helpers import OLD_OUTBOX_SCHEMA as _OLD_SCHEMA


def _alert(i):
    return Outgoing("alert", "alerts", {"id": f"a{i}"})


def _summary(i):
    return Outgoing("summary", "summary", {"id": f"s{i}", "pad": "x" * 100})


def test_alerts_drain_before_summaries_and_in_order(tmp_path):
    ob = Outbox(tmp_path / "o.db", Counters())
    ob.put(_summary(1))
    ob.put(_alert(1))
    ob.put(_summary(2))
    ob.put(_alert(2))
    ids = [json.loads(r.payload)["id"] for r in ob.pending(10)]
    assert ids == ["a1", "a2", "s1", "s2"]


def test_alerts_get_a_persistent_sequence(tmp_path):
    ob = Outbox(tmp_path / "o.db", Counters())
    ob.put(_alert(1))
    ob.put(_alert(2))
    ob.close()
    ob = Outbox(tmp_path / "o.db", Counters())
    ob.put(_alert(3))
    seqs = [json.loads(r.payload)["seq"] for r in ob.pending(10)]
    assert seqs == [1, 2, 3]


def test_rows_survive_reopen_until_acked(tmp_path):
    ob = Outbox(tmp_path / "o.db", Counters())
    ob.put(_alert(1))
    ob.put(_alert(2))
    first = ob.pending(1)[0]
    ob.ack(first.id)
    # no close(): as after a kill, the committed rows must be there
    ob2 = Outbox(tmp_path / "o.db", Counters())
    assert [json.loads(r.payload)["id"] for r in ob2.pending(10)] == ["a2"]
    assert ob2.depth() == 1


def test_pending_excludes_inflight(tmp_path):
    ob = Outbox(tmp_path / "o.db", Counters())
    rows = [ob.put(_alert(i)) for i in range(3)]
    assert [r.id for r in ob.pending(2, exclude={rows[0]})] == rows[1:]


def test_full_drops_oldest_summaries_first_then_alerts(tmp_path):
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=3)
    ob.put(_alert(1))
    ob.put(_summary(1))
    ob.put(_summary(2))
    ob.put(_alert(2))  # drops s1
    assert [json.loads(r.payload)["id"] for r in ob.pending(10)] == ["a1", "a2", "s2"]
    ob.put(_alert(3))  # drops s2
    ob.put(_alert(4))  # nothing else left: drops the oldest alert
    assert [json.loads(r.payload)["id"] for r in ob.pending(10)] == ["a2", "a3", "a4"]
    assert c.snapshot("outbox.dropped.") == {"summary": 2, "alert": 1}


def test_byte_bound(tmp_path):
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_bytes=350)
    for i in range(5):
        ob.put(_summary(i))
    assert ob.depth() < 5
    assert c.get("outbox.dropped.summary") == 5 - ob.depth()


def test_corrupt_file_is_moved_aside_and_recreated(tmp_path):
    p = tmp_path / "o.db"
    p.write_bytes(b"this is not a database" * 100)
    c = Counters()
    ob = Outbox(p, c)
    ob.put(_alert(1))
    assert ob.depth() == 1
    assert c.get("outbox.corrupt_recovered") == 1
    assert list(tmp_path.glob("o.db.corrupt-*"))


def test_a_new_outbox_after_a_corrupt_one_numbers_alerts_above_every_seq_used_before(tmp_path):
    """README: seq is persisted across restarts (subscribers may deduplicate or order on it). A corrupt outbox was
    moved aside and the new one started at seq 1 again: a subscriber that had seen 1..N dropped the next N alerts
    as repeats. The numbering goes on above anything used before, for an outbox removed by hand too."""
    p = tmp_path / "outbox.db"
    ob = Outbox(p, Counters())
    for i in range(250):  # more than one block of reserved numbers
        ob.put(_alert(i))
    used = max(json.loads(r.payload)["seq"] for r in ob.pending(1000))
    assert used == 250
    ob.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"outbox.db{suffix}").unlink(missing_ok=True)
    with open(p, "r+b") as f:  # the header and the first pages damaged (a power cut on a worn SD card)
        f.write(b"\xde\xad" * 4096)
    c = Counters()
    ob = Outbox(p, c)
    assert c.get("outbox.corrupt_recovered") == 1
    ob.put(_alert("after"))
    seq = json.loads(ob.pending(1)[0].payload)["seq"]
    assert seq > used, f"a new outbox numbered an alert {seq}, a number already used"
    ob.close()
    for suffix in ("", "-wal", "-shm"):  # removed by hand
        (tmp_path / f"outbox.db{suffix}").unlink(missing_ok=True)
    ob = Outbox(p, Counters())
    ob.put(_alert("later"))
    assert json.loads(ob.pending(1)[0].payload)["seq"] > seq
    ob.close()


def test_integrity_and_wal(tmp_path):
    ob = Outbox(tmp_path / "o.db", Counters())
    ob.put(_alert(1))
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_summary_never_evicts_an_alert(tmp_path):
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=2)
    ob.put(_alert(1))
    ob.put(_alert(2))
    assert ob.put(_summary(1)) == 0  # dropped itself, counted
    assert [json.loads(r.payload)["id"] for r in ob.pending(10)] == ["a1", "a2"]
    assert c.snapshot("outbox.dropped.") == {"summary": 1}


def test_a_reserve_file_is_kept_beside_the_outbox(tmp_path):
    Outbox(tmp_path / "o.db", Counters())
    reserve = tmp_path / "o.db.reserve"
    assert reserve.is_file() and reserve.stat().st_size > 16384


def test_a_message_bigger_than_the_byte_bound_evicts_nothing(tmp_path):
    # Evicting every queued row could never make room for it: it used to wipe out every alert queued (the broker
    # down), then be stored anyway. Real SQLite file, the default eviction policy.
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_bytes=65536)
    for i in range(5):
        ob.put(_alert(i))
    ob.put(_summary(1))
    queued = [json.loads(r.payload)["id"] for r in ob.pending(20)]
    assert ob.put(Outgoing("summary", "summary", {"id": "huge", "pad": "x" * 70000})) == 0
    assert ob.put(Outgoing("alert", "alerts", {"id": "huge-alert", "pad": "x" * 70000})) == 0
    assert [json.loads(r.payload)["id"] for r in ob.pending(20)] == queued  # nothing evicted
    assert c.snapshot("outbox.dropped.") == {"summary": 1, "alert": 1}  # the oversize ones, counted
    # an alert too big only because of its inline evidence keeps its place: stored without it (evidence_id stays)
    row = ob.put(Outgoing("alert", "alerts", {"id": "ev", "evidence_id": "e1", "evidence": {"v": "x" * 70000}}))
    assert row > 0 and c.get("outbox.evidence_stripped") == 1
    stored = {json.loads(r.payload)["id"]: json.loads(r.payload) for r in ob.pending(20)}
    assert stored["ev"]["evidence_id"] == "e1" and "evidence" not in stored["ev"]
    assert set(queued) < set(stored)
    assert [stored[f"a{i}"]["seq"] for i in range(5)] + [stored["ev"]["seq"]] == [1, 2, 3, 4, 5, 6]  # no hole


def test_evictions_undone_by_a_rollback_are_not_counted_as_drops(tmp_path):
    # A summary that does not fit even after every summary is gone is dropped itself and the transaction rolled
    # back: the summaries are still there, so they must not be counted (nor logged) as dropped.
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_bytes=65536)
    for i in range(3):
        ob.put(_summary(i))
    for i in range(12):
        ob.put(Outgoing("alert", "alerts", {"id": f"a{i}", "pad": "x" * 5000}))
    before = ob.depth()
    assert ob.put(Outgoing("summary", "summary", {"id": "s-big", "pad": "x" * 8000})) == 0
    assert ob.depth() == before  # nothing was dropped but the newcomer
    assert c.snapshot("outbox.dropped.") == {"summary": 1}


def _state(alert_id, state, pad=0):
    return Outgoing("alert", "alerts", {"id": f"{alert_id}-{state}", "alert_id": alert_id, "state": state,
                                        **({"pad": "x" * pad} if pad else {})})


def _ids(ob):
    return [json.loads(r.payload)["id"] for r in ob.pending(100)]


def test_an_evicted_raise_takes_its_clear_with_it(tmp_path):
    """Full of alerts (the broker down for long): evicting the oldest raise used to keep its clear, which then
    reached the control room for an alert it never saw. They go together, both counted."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=4)
    for m in (_state("A", "raised"), _state("B", "raised"), _state("A", "cleared"), _state("B", "cleared")):
        assert ob.put(m)
    assert ob.put(_state("C", "raised"))  # evicts A's raise, and A's clear with it
    assert _ids(ob) == ["B-raised", "B-cleared", "C-raised"]
    assert c.snapshot("outbox.dropped.") == {"alert": 2}


def test_a_clear_whose_raise_was_evicted_before_it_came_is_dropped_too(tmp_path):
    """The raise is evicted while the alert is still raised; its clear, written later (even after a restart), is
    dropped and counted instead of stored."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=2)
    ob.put(_state("A", "raised"))
    ob.put(_state("B", "raised"))
    ob.put(_state("C", "raised"))  # evicts A's raise: A is still on, its clear comes later
    ob.close()
    ob = Outbox(tmp_path / "o.db", c, max_rows=2)
    assert ob.put(_state("A", "cleared")) == 0
    assert _ids(ob) == ["B-raised", "C-raised"]
    assert c.snapshot("outbox.dropped.") == {"alert": 2}
    seqs = [json.loads(r.payload)["seq"] for r in ob.pending(10)]
    assert ob.put(_state("D", "raised")) and json.loads(ob.pending(10)[-1].payload)["seq"] == seqs[-1] + 1


def test_a_clear_that_evicts_its_own_raise_is_dropped_with_it(tmp_path):
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=2)
    ob.put(_state("A", "raised"))
    ob.put(_state("B", "raised"))
    assert ob.put(_state("A", "cleared")) == 0  # room made by evicting A's raise: the clear goes with it
    assert _ids(ob) == ["B-raised"]
    assert c.snapshot("outbox.dropped.") == {"alert": 2}


def test_a_raise_dropped_for_its_size_takes_its_clear_with_it(tmp_path):
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_bytes=65536)
    assert ob.put(_state("A", "raised", pad=70000)) == 0
    assert ob.put(_state("A", "cleared")) == 0
    assert ob.depth() == 0 and c.snapshot("outbox.dropped.") == {"alert": 2}


def test_an_incoming_raise_dropped_for_want_of_room_takes_its_clear_with_it(tmp_path, monkeypatch):
    """Space short on the disk: alerts are kept and the incoming raise is the one dropped; its clear goes too."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=1)
    ob.put(_state("A", "raised"))
    monkeypatch.setattr(ob, "_low_on_disk", lambda times=1: True)
    assert ob.put(_state("B", "raised")) == 0
    monkeypatch.setattr(ob, "_low_on_disk", lambda times=1: False)
    assert ob.put(_state("B", "cleared")) == 0
    assert _ids(ob) == ["A-raised"] and c.snapshot("outbox.dropped.") == {"alert": 2}



def test_the_ids_of_dropped_raises_kept_are_bounded_by_their_own_count(tmp_path, monkeypatch):
    import agent.dead_letters

    monkeypatch.setattr(agent.dead_letters, "DROPPED_RAISES_KEPT", 3)
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=1)

    def kept():
        db = sqlite3.connect(tmp_path / "o.db")
        return sorted(k for (k,) in db.execute("SELECT key FROM meta WHERE key LIKE 'dropped_raise:%'"))

    ob.put(_state("R0", "raised"))
    ob.ack(ob.put(_state("R1", "raised")))  # R0 evicted while still raised
    for i in range(10):  # alerts sent meanwhile do not push its id out
        ob.ack(ob.put(_state(f"X{i}", "raised")))
    ob.put(_state("R2", "raised"))
    ob.put(_state("R3", "raised"))  # R2 evicted
    assert kept() == ["dropped_raise:R0", "dropped_raise:R2"]
    for i in range(4, 7):
        ob.put(_state(f"R{i}", "raised"))  # R3, R4, R5 evicted: the newest three kept
    assert kept() == ["dropped_raise:R3", "dropped_raise:R4", "dropped_raise:R5"]


def test_a_raise_the_broker_may_have_is_evicted_without_its_clear(tmp_path):
    """Found in review: a raise handed to the uplink (in flight when the link died, or delivered with its PUBACK
    lost) and then evicted may be on the control room's screen. Its clear used to be dropped with it (stored) or
    when it came (later): the alert then stayed raised there for ever. The clear is kept and sent."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=2)
    ob.put(_state("A", "raised"))
    assert [r.topic for r in ob.pending(1)] == ["alerts"]  # handed to the uplink
    ob.put(_state("B", "raised"))
    ob.put(_state("C", "raised"))  # evicts A's raise
    assert _ids(ob) == ["B-raised", "C-raised"]
    assert ob.put(_state("A", "cleared"))  # evicts B's raise (handed out above by _ids): A's clear is stored
    assert _ids(ob) == ["C-raised", "A-cleared"]
    assert c.snapshot("outbox.dropped.") == {"alert": 2}


def test_a_raise_stored_before_a_restart_is_evicted_without_its_clear(tmp_path):
    """A raise stored by an earlier run may have been sent by it (power cut before the PUBACK was recorded)."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=3)
    ob.put(_state("A", "raised"))
    ob.put(_state("A", "cleared"))
    ob.close()
    ob = Outbox(tmp_path / "o.db", c, max_rows=3)
    ob.put(_state("B", "raised"))
    ob.put(_state("C", "raised"))  # evicts A's raise only
    assert _ids(ob) == ["A-cleared", "B-raised", "C-raised"]
    assert c.snapshot("outbox.dropped.") == {"alert": 1}


def _alerts_in(ob, table):
    return [(json.loads(p)["alert_id"], json.loads(p)["state"])
            for (p,) in ob._db.execute(f"SELECT payload FROM {table} ORDER BY id")]


def test_a_clear_evicted_while_its_raise_is_a_dead_letter_takes_the_raise_with_it(tmp_path):
    """Found in review: A's raise refused (a dead letter), its clear written while the broker was down, the outbox
    full: the clear was evicted alone, and the raise, re-queued at the next connection, stayed raised for ever."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=3)
    ob.put(_state("A", "raised"))
    [row] = ob.pending(10)
    ob.dead_letter(row.id, 0x87, "not authorized")
    ob.put(_state("A", "cleared"))
    for x in "BCD":
        ob.put(_state(x, "raised"))  # D evicts A's clear, and its dead raise with it
    ob.requeue_dead_letters()
    assert _alerts_in(ob, "outbox") == [("B", "raised"), ("C", "raised"), ("D", "raised")]
    assert c.snapshot("outbox.dropped.") == {"alert": 2}


def test_a_refused_raise_is_not_taken_for_one_the_broker_may_have(tmp_path):
    """Found in review: a raise the broker refused stayed 'handed out'; re-queued and then evicted it went alone and
    its clear reached the control room for an alert it never saw."""
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=3)
    ob.put(_state("A", "raised"))
    [row] = ob.pending(10)
    ob.dead_letter(row.id, 0x87, "not authorized")
    ob.requeue_dead_letters()
    ob.put(_state("A", "cleared"))
    for x in "BC":
        ob.put(_state(x, "raised"))  # C evicts A's raise: never at the broker, so its clear goes with it
    assert _alerts_in(ob, "outbox") == [("B", "raised"), ("C", "raised")]


def test_trimming_the_dead_letters_keeps_an_alerts_rows_together(tmp_path):
    """Found in review: the dead letters were trimmed row by row. A delivered raise's refused clear went first (the
    raise then never cleared), and a refused raise went while its clear stayed (sent later, for an alert never
    seen)."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=2)
    ob.put(_state("A", "raised"))
    [row] = ob.pending(10)
    ob.ack(row.id)  # A's raise is on the screen
    for m in (_state("A", "cleared"), _state("B", "raised"), _state("C", "raised")):
        ob.put(m)
        [row] = ob.pending(1)
        ob.dead_letter(row.id, 0x97, "quota exceeded")
    # over the bound: B's raise goes (A's lone clear is kept: its raise was delivered), and B's clear to come with it
    assert _alerts_in(ob, "dead_letter") == [("A", "cleared"), ("C", "raised")]
    assert ob.put(_state("B", "cleared")) == 0
    assert c.snapshot("outbox.dropped.") == {"alert": 2}


def test_a_refused_resend_is_still_taken_for_a_raise_the_broker_may_have(tmp_path):
    """Found in review: a raise sent, the link lost before its PUBACK, sent again and then refused: the first copy
    may be on the screen, so when it is evicted its clear must stay (in doubt, a clear too many, never a raise
    left on)."""
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=3)
    ob.put(_state("A", "raised"))
    [row] = ob.pending(1)
    assert [r.id for r in ob.pending(1)] == [row.id]  # handed out again after the reconnection
    ob.dead_letter(row.id, 0x97, "quota exceeded")
    ob.requeue_dead_letters()
    ob.put(_state("A", "cleared"))
    for x in "BC":
        ob.put(_state(x, "raised"))  # C evicts A's raise alone
    assert _alerts_in(ob, "outbox") == [("A", "cleared"), ("B", "raised"), ("C", "raised")]


def test_trimming_the_dead_letters_looks_past_any_number_of_delivered_raises_clears(tmp_path):
    """Found in review: only the 256 oldest dead letters were looked at, so with that many clears of delivered
    raises at the front one of them went although a refused raise behind them could have gone instead."""
    n = 300
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=n)
    for i in range(n):
        ob.put(_state(f"L{i}", "cleared"))
        [row] = ob.pending(1)
        ob.dead_letter(row.id, 0x97, "quota exceeded")
    for x in ("R", "S"):
        ob.put(_state(x, "raised"))
        [row] = ob.pending(1)
        ob.dead_letter(row.id, 0x97, "quota exceeded")  # S takes the table over the bound: R goes
    dead = _alerts_in(ob, "dead_letter")
    assert len(dead) == n and dead[0] == ("L0", "cleared") and ("R", "raised") not in dead


def test_a_clear_whose_raise_was_delivered_is_evicted_after_every_other_alert(tmp_path):
    """A full outbox used to evict a lone clear (its raise delivered) as the oldest alert row: the control room was
    left with an alert that never clears. The dead letters' trim already kept such clears last; the outbox now
    does too: summaries first, then the other alerts (a raise with its clear), the lone clear last."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=3)
    ob.put(_state("A", "raised"))
    [row] = ob.pending(1)
    ob.ack(row.id)  # A's raise is on the screen
    for m in (_state("A", "cleared"), _state("B", "raised"), _summary(0)):
        ob.put(m)
    ob.put(_state("C", "raised"))  # the summary goes
    ob.put(_state("D", "raised"))  # B's raise goes, not A's clear
    assert _alerts_in(ob, "outbox") == [("A", "cleared"), ("C", "raised"), ("D", "raised")]
    assert ob.put(_state("B", "cleared")) == 0  # its raise was dropped: it goes too
    assert c.snapshot("outbox.dropped.") == {"summary": 1, "alert": 2}


def test_a_clear_whose_raise_the_broker_may_have_is_evicted_after_every_other_alert(tmp_path):
    """A raise handed to the uplink is evicted alone and its clear kept (the raise may be on the screen): that clear
    must then not be the next alert row evicted either."""
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=3)
    ob.put(_state("A", "raised"))
    ob.pending(1)  # handed out: in flight when the link died
    for x in ("A-cleared", "B-raised", "C-raised", "D-raised"):  # C evicts A's raise alone, D then B's
        ob.put(_state(*x.split("-")))
    assert _alerts_in(ob, "outbox") == [("A", "cleared"), ("C", "raised"), ("D", "raised")]


def test_lone_clears_go_oldest_first_once_no_other_alert_is_left(tmp_path):
    """One put that has to evict several rows evicts every other alert before the first lone clear."""
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=4)
    for x in ("A-cleared", "B-raised", "L-cleared", "C-raised"):  # A's and L's raises delivered (not stored here)
        ob.put(_state(*x.split("-")))
    ob.max_rows = 2
    ob.put(_state("D", "raised"))  # 3 rows to go: B, C, then the older lone clear
    assert _alerts_in(ob, "outbox") == [("L", "cleared"), ("D", "raised")]
    assert c.snapshot("outbox.dropped.") == {"alert": 3}




def _old_outbox_file(path):
    """An outbox file as the previous version left it: A's clear (its raise delivered), B's clear (its raise a dead
    letter), C's raise, a summary; alert seq 4."""
    from agent.records import message_bytes

    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    cols = "id, kind, priority, topic, payload, qos, retain, created_ts"
    rows = [(2, "alert", 0, "alerts", {"id": "b1", "alert_id": "B", "state": "raised", "seq": 2})]
    db.executemany(f"INSERT INTO dead_letter ({cols}, reason_code, reason, refused_ts) VALUES (?,?,?,?,?,1,0,0,135,"
                   "'not authorized',0)", [(*r[:4], message_bytes(r[4])) for r in rows])
    rows = [(3, "alert", 0, "alerts", {"id": "a2", "alert_id": "A", "state": "cleared", "seq": 3}),
            (4, "alert", 0, "alerts", {"id": "b2", "alert_id": "B", "state": "cleared", "seq": 4}),
            (5, "summary", 2, "summary", {"id": "s1"}),
            (6, "alert", 0, "alerts", {"id": "c1", "alert_id": "C", "state": "raised", "seq": 5})]
    db.executemany(f"INSERT INTO outbox ({cols}) VALUES (?,?,?,?,?,1,0,0)", [(*r[:4], message_bytes(r[4])) for r in rows])
    db.execute("INSERT INTO meta VALUES ('alert_seq', 5)")
    db.commit()
    db.close()


def test_an_outbox_file_from_the_previous_version_opens_and_keeps_working(tmp_path):
    """The alert_id column (evictions find an alert's rows by its index) is added to an older file when it is
    opened, and filled for the alerts it holds: their pairs are still kept together, lone clears still last."""
    _old_outbox_file(tmp_path / "o.db")
    c = Counters()
    ob = Outbox(tmp_path / "o.db", c, max_rows=4)
    assert ob.put(_state("D", "raised"))  # the summary goes
    assert ob.put(_state("E", "raised"))  # B's clear goes, with its raise (a dead letter: never seen), not A's clear
    assert _alerts_in(ob, "outbox") == [("A", "cleared"), ("C", "raised"), ("D", "raised"), ("E", "raised")]
    assert _alerts_in(ob, "dead_letter") == []
    assert c.snapshot("outbox.dropped.") == {"summary": 1, "alert": 2}
    assert [json.loads(r.payload)["seq"] for r in ob.pending(10)][-2:] == [6, 7]
    for r in ob.pending(10):
        ob.ack(r.id)
    ob.close()
    ob = Outbox(tmp_path / "o.db", c, max_rows=4)  # opens again as it is
    assert ob.depth() == 0 and ob.put(_state("F", "raised"))
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT alert_id FROM outbox").fetchall() == [("F",)]
    plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN SELECT id FROM dead_letter WHERE alert_id='F'"))
    assert "INDEX dead_letter_alert" in plan, plan


def test_an_outbox_file_from_before_the_dead_letters_opens_and_keeps_working(tmp_path):
    path = tmp_path / "o.db"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA.split("CREATE TABLE dead_letter")[0])
    db.executemany("INSERT INTO outbox (kind, priority, topic, payload, qos, retain, created_ts) VALUES "
                   "('alert', 0, 'alerts', ?, 1, 0, 0)", [(b'{"id":"a2","alert_id":"A","state":"cleared","seq":2}',),
                                                         (b'{"id":"b1","alert_id":"B","state":"raised","seq":3}',)])
    db.commit()
    db.close()
    ob = Outbox(path, Counters(), max_rows=2)
    assert ob.put(_state("C", "raised"))  # B's raise goes (alone: an earlier run may have sent it), A's clear stays
    assert _alerts_in(ob, "outbox") == [("A", "cleared"), ("C", "raised")]
    ob.max_rows = 10
    ob.put(_state("C", "cleared"))
    [_, raised, cleared] = ob.pending(10)
    assert ob.dead_letter(raised.id, 0x87, "not authorized") == "alert" and ob.dead_letter_behind(cleared.id, "C")
    assert ob._db.execute("SELECT alert_id FROM dead_letter ORDER BY id").fetchall() == [("C",), ("C",)]


def test_alerts_an_older_version_wrote_into_a_new_file_are_indexed_when_it_opens_again(tmp_path):
    """Rolled back to an older version and forward again: the rows that version wrote have no alert_id."""
    Outbox(tmp_path / "o.db", Counters()).close()
    db = sqlite3.connect(tmp_path / "o.db")  # what the older version's put writes
    db.executemany("INSERT INTO outbox (kind, priority, topic, payload, qos, retain, created_ts) VALUES "
                   "('alert', 0, 'alerts', ?, 1, 0, 0)", [(b'{"id":"a2","alert_id":"A","state":"cleared","seq":2}',),
                                                         (b'{"id":"b1","alert_id":"B","state":"raised","seq":3}',)])
    db.commit()
    db.close()
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=2)
    assert ob.put(_state("C", "raised"))  # B's raise goes, A's lone clear stays
    assert _alerts_in(ob, "outbox") == [("A", "cleared"), ("C", "raised")]


def _refused_after_a_resend(ob, alert_id):
    """Its raise handed to the uplink, handed again after a lost connection, then refused: a dead letter whose first
    copy the broker may have (on the control room's screen)."""
    ob.put(_state(alert_id, "raised"))
    [row] = [r for r in ob.pending(10) if json.loads(r.payload)["alert_id"] == alert_id]
    ob.pending(10)
    assert ob.dead_letter(row.id, 0x97, "quota exceeded") == "alert"


def test_a_clear_whose_raise_refused_after_a_resend_may_be_on_screen_is_evicted_last(tmp_path):
    """The broker may have the first copy of R's raise: R's clear is a lone clear (evicted after every other alert),
    not one of an alert the control room never saw (evicted at once with its dead raise)."""
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=3)
    _refused_after_a_resend(ob, "R")
    for x in ("R-cleared", "B-raised", "C-raised", "D-raised"):  # D evicts B, not R's clear
        ob.put(_state(*x.split("-")))
    assert _alerts_in(ob, "outbox") == [("R", "cleared"), ("C", "raised"), ("D", "raised")]
    assert _alerts_in(ob, "dead_letter") == [("R", "raised")]


def test_trimming_the_dead_letters_drops_a_raise_the_broker_may_have_alone_and_keeps_its_clear(tmp_path):
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=2)
    _refused_after_a_resend(ob, "R")
    ob.put(_state("R", "cleared"))
    for a in ("S", "T"):
        ob.put(_state(a, "raised"))
        [row] = [r for r in ob.pending(10) if json.loads(r.payload)["alert_id"] == a]
        ob.dead_letter(row.id, 0x87, "not authorized")  # T takes the dead letters over the bound: R's raise goes
    assert _alerts_in(ob, "dead_letter") == [("S", "raised"), ("T", "raised")]
    assert _alerts_in(ob, "outbox") == [("R", "cleared")]
    assert ob._db.execute("SELECT key FROM meta WHERE key LIKE 'dropped_raise:%'").fetchall() == []


def test_trimming_the_dead_letters_keeps_a_held_back_clear_of_a_raise_the_broker_may_have_for_last(tmp_path):
    """R's clear followed its raise into the dead letters unsent: it is a lone clear there too."""
    ob = Outbox(tmp_path / "o.db", Counters(), max_rows=3)
    _refused_after_a_resend(ob, "R")
    ob.put(_state("R", "cleared"))
    [clear] = ob.pending(10)
    assert ob.dead_letter_behind(clear.id, "R")
    for a in ("S", "T"):
        ob.put(_state(a, "raised"))
        [row] = [r for r in ob.pending(10) if json.loads(r.payload)["alert_id"] == a]
        ob.dead_letter(row.id, 0x87, "not authorized")  # T: 4 dead letters, R's raise goes alone
    assert _alerts_in(ob, "dead_letter") == [("R", "cleared"), ("S", "raised"), ("T", "raised")]
