"""The pure parts of MQTT 5 refusals (agent/uplink_refusals.py): reading a PUBACK, sizing a PUBLISH, the dead letter
table of the real SQLite outbox, fitting a message into the broker's Maximum Packet Size, saying a refusal once, the
protocol setting and its fallback. The broker side is tests/integration/test_uplink_refused.py."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.counters import Counters
from agent.mqtt_client import BrokerConnection, make_client
from agent.outbox import Outbox
from agent.records import Outgoing
from agent.settings import ConfigError, load_settings
import agent.uplink_refusals as ur
from agent.uplink_refusals import (
    PROTOCOLS, RefusalAwareClient, Refusals, connack_limits, puback_fields, publish_size, reason_name,
)

EVIDENCE = {"windows": [[1.5] * 8] * 40}


def _outbox(tmp_path, counters=None):
    return Outbox(tmp_path / "outbox.db", counters or Counters())


def _refusals(ob, counters, protocol="auto"):
    return Refusals(ob, counters, protocol, "broker:1883", "edge/gw/#")


# -- protocol setting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, version", [("auto", mqtt.MQTTv5), ("5", mqtt.MQTTv5), ("3.1.1", mqtt.MQTTv311)])
def test_protocol_setting(value, version):
    s = load_settings(None, {"EDGE_AGENT_MQTT__PROTOCOL": value})
    assert s.mqtt.protocol == value and PROTOCOLS[value] == version


def test_protocol_defaults_to_auto():
    assert load_settings(None, {}).mqtt.protocol == "auto"


@pytest.mark.parametrize("value", ["4", "3.1", "mqtt5"])
def test_a_bad_protocol_names_variable_value_and_rule(value):
    with pytest.raises(ConfigError) as e:
        load_settings(None, {"EDGE_AGENT_MQTT__PROTOCOL": value})
    assert f"EDGE_AGENT_MQTT__PROTOCOL='{value}'" in str(e.value) and "'auto', '5' or '3.1.1'" in str(e.value)


def test_protocol_5_as_a_number_in_the_configuration_file(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text("[mqtt]\nprotocol = 5\n")
    assert load_settings(environ={"EDGE_AGENT_CONFIG_FILE": str(f)}).mqtt.protocol == "5"


# -- packets ------------------------------------------------------------------------------------------------


def test_puback_fields():
    assert puback_fields(b"\x00\x07") == (7, 0)  # MQTT 3.1.1, or MQTT 5 success without a reason code
    assert puback_fields(b"\x01\x02\x87") == (258, 0x87)
    assert puback_fields(b"\x00\x03\x95\x00") == (3, 0x95)
    with pytest.raises(ValueError):
        puback_fields(b"\x01")


def test_reason_names():
    assert reason_name(0x87) == "not authorized" and reason_name(0x95) == "packet too large"
    assert reason_name(0x9A) == "reason code 0x9a"


@pytest.mark.parametrize("payload_len", [0, 100, 110, 111, 200, 16370, 16371, 20000])
@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_publish_size_is_the_bytes_paho_sends(payload_len, qos, protocol):
    """The bytes paho writes for the PUBLISH, read from the other end of a socket pair (no broker needed)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol)
    ours, theirs = socket.socketpair()
    try:
        c._sock = ours  # paho 2.x internal: as if connected
        c._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
        c.publish("edge/gw/alerts", b"x" * payload_len, qos=qos)
        c.loop_write()
        theirs.settimeout(2)
        got = b""
        while len(got) < 2 or len(got) < publish_size("edge/gw/alerts", payload_len, qos, protocol):
            chunk = theirs.recv(65536)
            if not chunk:
                break
            got += chunk
            theirs.settimeout(0.2)
    except TimeoutError:
        pass
    finally:
        c._sock = None
        ours.close()
        theirs.close()
    assert got[0] >> 4 == 3  # PUBLISH
    assert publish_size("edge/gw/alerts", payload_len, qos, protocol) == len(got)


def test_connack_limits():
    assert connack_limits(None) == (None, None)
    props = SimpleNamespace(MaximumPacketSize=3000, ReceiveMaximum=20)
    assert connack_limits(props) == (3000, 20)


# -- the client ---------------------------------------------------------------------------------------------


def _client(protocol=mqtt.MQTTv5) -> RefusalAwareClient:
    c = make_client(BrokerConnection("127.0.0.1", 1), "t", log_name="paho.test", client_class=RefusalAwareClient,
                    protocol=protocol)
    assert isinstance(c, RefusalAwareClient)
    return c


def _handle_puback(c: RefusalAwareClient, packet: bytes) -> list[tuple[int, int]]:
    """Feed ``packet`` (a PUBACK's variable header) to the client as paho's reader would; (mid, code) published."""
    got: list[tuple[int, int]] = []
    c.on_publish = lambda client, userdata, mid, rc, props: got.append((mid, rc.value))
    mid = struct_mid(packet)
    c._out_messages[mid] = mqtt.MQTTMessage(mid, b"edge/gw/alerts")
    c._out_messages[mid].qos = 1
    c._in_packet["command"] = 0x40
    c._in_packet["packet"] = packet
    rc = c._handle_pubackcomp("PUBACK")
    assert rc == mqtt.MQTT_ERR_SUCCESS, rc
    return got


def struct_mid(packet: bytes) -> int:
    return int.from_bytes(packet[:2], "big")


def test_a_puback_0x95_is_a_refusal_not_a_malformed_packet():
    """paho 2.2 alone raises MalformedPacket for it (and drops the connection, and re-sends: a loop)."""
    from paho.mqtt._packet import MalformedPacket, decode_puback

    with pytest.raises(MalformedPacket):
        decode_puback(0x40, b"\x00\x05\x95", mqtt.MQTTv5)
    assert _handle_puback(_client(), b"\x00\x05\x95") == [(5, 0x95)]


@pytest.mark.parametrize("packet, expected", [(b"\x00\x06\x87", (6, 0x87)), (b"\x00\x07", (7, 0)),
                                              (b"\x00\x08\x10", (8, 0x10))])
def test_the_pubacks_paho_reads_are_paho_s(packet, expected):
    assert _handle_puback(_client(), packet) == [expected]


def test_nothing_over_the_maximum_packet_size_is_sent(caplog):
    c = _client()
    c.max_packet = 100
    with caplog.at_level(logging.WARNING):
        info = c.publish("edge/gw/stats", b"x" * 200, qos=0)
        c.publish("edge/gw/stats", b"x" * 200, qos=0)
    assert info.rc == mqtt.MQTT_ERR_PAYLOAD_SIZE
    assert not c._out_packet
    assert caplog.text.count("over the broker's Maximum Packet Size (100): not sent") == 1
    assert c.publish("edge/gw/stats", b"x" * 10, qos=0).rc == mqtt.MQTT_ERR_NO_CONN  # under it: paho's (offline)


# -- dead letters -------------------------------------------------------------------------------------------


def test_a_refused_row_becomes_a_dead_letter_and_is_requeued_in_its_place(tmp_path, caplog):
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    ids = [ob.put(Outgoing("alert", "alerts", {"id": f"a{i}"})) for i in range(3)]
    s = ob.put(Outgoing("summary", "summary", {"id": "s"}))
    with caplog.at_level(logging.WARNING):
        r.settle(ids[0], 0x87)
        r.settle(ids[1], 0x87)
        r.settle(s, 0x97)
        r.settle(ids[2], 0)
    assert ob.depth() == 0
    db = sqlite3.connect(tmp_path / "outbox.db")
    rows = db.execute("SELECT id, kind, topic, reason_code, reason FROM dead_letter ORDER BY id").fetchall()
    assert rows == [(ids[0], "alert", "alerts", 0x87, "not authorized"), (ids[1], "alert", "alerts", 0x87, "not authorized"),
                    (s, "summary", "summary", 0x97, "quota exceeded")]
    assert c.get("uplink.refused") == 3 and c.get("uplink.acked") == 1
    assert c.snapshot("uplink.refused_by.") == {"not_authorized": 2, "quota_exceeded": 1}
    assert caplog.text.count("refuses alerts (not authorized)") == 1  # once per reason
    assert caplog.text.count("refuses summaries (quota exceeded)") == 1
    assert "publish to edge/gw/#" in caplog.text
    assert r.reasons() == ["broker refuses alerts: not authorized", "broker refuses summaries: quota exceeded"]

    later = ob.put(Outgoing("alert", "alerts", {"id": "later"}))
    ob.close()
    ob = _outbox(tmp_path)
    assert ob.requeue_dead_letters() == [ids[0], ids[1], s]
    assert [json.loads(row.payload)["id"] for row in ob.pending(10)] == ["a0", "a1", "later", "s"]
    assert [row.id for row in ob.pending(10)][:3] == [ids[0], ids[1], later]
    assert ob.requeue_dead_letters() == []


def _alert(ob, alert_id, state):
    return ob.put(Outgoing("alert", "alerts", {"id": f"{alert_id}-{state}", "alert_id": alert_id, "state": state}))


def test_the_rows_of_an_alert_whose_raise_is_a_dead_letter_follow_it_there_unsent(tmp_path):
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    raised, other = _alert(ob, "A", "raised"), _alert(ob, "B", "raised")
    assert r.body(ob.pending(1)[0], "edge/gw/alerts") is not None
    r.settle(raised, 0x87)
    cleared = _alert(ob, "A", "cleared")
    rows = {row.id: row for row in ob.pending(10)}
    assert r.body(rows[cleared], "edge/gw/alerts") is None  # not sent: the control room never saw the raise
    assert r.body(rows[other], "edge/gw/alerts") is not None  # another alert goes out
    db = sqlite3.connect(tmp_path / "outbox.db")
    assert db.execute("SELECT id, reason_code, reason FROM dead_letter ORDER BY id").fetchall() == [
        (raised, 0x87, "not authorized"), (cleared, 0x87, f"not sent: follows refused row {raised}")]
    assert c.get("uplink.refused") == 1 and c.get("uplink.held_behind_refused") == 1
    r.settle(other, 0)
    r.requeue()  # the next connection: the two go out again, together and in order
    assert [row.id for row in ob.pending(10)] == [raised, cleared]
    assert r.reasons() == ["broker refuses alerts: not authorized"]  # until the broker takes them
    r.settle(raised, 0)
    assert r.reasons() != []
    r.settle(cleared, 0)
    assert r.reasons() == [] and ob.depth() == 0


def test_a_row_of_an_alert_waits_while_an_earlier_one_is_in_flight(tmp_path):
    """The broker may yet refuse the raise (a quota): its clear is not sent before the raise's PUBACK."""
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    raised, cleared = _alert(ob, "A", "raised"), _alert(ob, "A", "cleared")
    rows = ob.pending(10)
    assert r.body(rows[0], "t") is not None
    assert r.body(rows[1], "t") == ur.WAIT and ob.depth() == 2  # waits, in the outbox, and the rows after it too
    assert r.body(rows[0], "t") is not None  # the raise itself, sent again (a failed publish)
    r.settle(raised, 0x97)
    assert r.body(rows[1], "t") is None  # now behind the dead letter
    r.connected(None, None)
    r.requeue()
    rows = ob.pending(10)
    assert [row.id for row in rows] == [raised, cleared]
    assert r.body(rows[0], "t") is not None and r.body(rows[1], "t") == ur.WAIT
    r.settle(raised, 0)
    assert r.body(rows[1], "t") is not None


def test_temporary_refusals_are_retried_on_a_timer_others_at_the_next_connection(tmp_path, monkeypatch):
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    denied, quota = _alert(ob, "A", "raised"), _alert(ob, "B", "raised")
    r.settle(denied, 0x87)
    assert not r.retry()  # not before RETRY_S
    r._next_retry = 0.0
    assert not r.retry() and ob.depth() == 1  # 0x87 (not authorized) is not over by itself: not retried on a timer
    r.settle(quota, 0x97)
    r._next_retry = 0.0
    assert not r.retry() and ob.depth() == 0  # refused just now: not yet
    db = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    db.execute("UPDATE dead_letter SET refused_ts = refused_ts - ?", (ur.RETRY_S + 1,))
    assert not r.retry()  # checked at most every RETRY_S
    r._next_retry = 0.0
    assert r.retry()  # all of them, in order
    assert [row.id for row in ob.pending(10)] == [denied, quota]
    assert not r.retry()


def test_dead_letters_have_the_outbox_bounds(tmp_path):
    c = Counters()
    ob = Outbox(tmp_path / "outbox.db", c, max_rows=10)
    r = _refusals(ob, c)
    for kind, topic, n in (("alert", "alerts", 8), ("summary", "summary", 4)):  # never more than 10 in the outbox
        ids = [ob.put(Outgoing(kind, topic, {"id": f"{kind[0]}{i}"})) for i in range(n)]
        for i in ids:
            r.settle(i, 0x87)
    db = sqlite3.connect(tmp_path / "outbox.db")
    kept = [json.loads(p)["id"] for (p,) in db.execute("SELECT payload FROM dead_letter ORDER BY id")]
    assert kept == [f"a{i}" for i in range(8)] + ["s2", "s3"]  # the oldest summaries went first
    assert c.get("outbox.dropped.summary") == 2 and c.get("uplink.refused") == 12


def test_a_refusal_that_cannot_be_stored_holds_the_row_back(tmp_path, caplog):
    """The dead letter cannot be written (here: the database is closed under it): the row is neither lost nor sent
    again and again; it stays for the next start."""
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    a = _alert(ob, "A", "raised")
    cleared = _alert(ob, "A", "cleared")
    rows = ob.pending(10)
    assert r.body(rows[0], "t") is not None
    db = ob._db
    ob._db = sqlite3.connect(":memory:", check_same_thread=False)  # no tables: the dead letter cannot be written
    with caplog.at_level(logging.ERROR):
        r.settle(a, 0x87)
    ob._db.close()
    ob._db = db
    assert r.held == {a} and c.get("uplink.refused") == 1
    r.connected(None, None)  # a reconnection too
    assert r.body(rows[1], "t") is None  # its clear is held back with it, not sent before it; the rows after it go
    assert "stays in the outbox, not sent again before the next start" in caplog.text
    assert r.reasons() == ["broker refuses messages: not authorized"]
    ob.close()
    ob = _outbox(tmp_path)
    assert [row.id for row in ob.pending(10)] == [a, cleared]


def test_a_row_already_gone_is_not_counted(tmp_path):
    c = Counters()
    ob = _outbox(tmp_path, c)
    _refusals(ob, c).refuse(12345, 0x87)
    assert c.get("uplink.refused") == 0


def test_an_alert_refused_as_too_large_goes_once_more_without_its_evidence(tmp_path):
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    a = ob.put(Outgoing("alert", "alerts", {"id": "a", "evidence_id": "e1", "evidence": EVIDENCE}))
    r.settle(a, 0x95)
    (row,) = ob.pending(10)
    assert row.id == a and "evidence" not in json.loads(row.payload) and json.loads(row.payload)["evidence_id"] == "e1"
    assert c.get("uplink.evidence_stripped") == 1 and c.get("uplink.refused") == 0
    r.settle(a, 0x95)  # still too large: now a dead letter, not a loop
    assert ob.depth() == 0 and c.get("uplink.refused") == 1


# -- the Maximum Packet Size --------------------------------------------------------------------------------


def test_body_fits_the_maximum_packet_size(tmp_path):
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    ob.put(Outgoing("alert", "alerts", {"id": "a", "evidence_id": "e1", "evidence": EVIDENCE}))
    ob.put(Outgoing("summary", "summary", {"id": "s", "pad": "x" * 2000}))
    alert, summary = ob.pending(10)
    r.connected(None, None)  # MQTT 3.1.1 (or no limit said): as stored, with sent_at
    assert "evidence" in json.loads(r.body(alert, "edge/gw/alerts") or b"")
    r.connected(None, SimpleNamespace(MaximumPacketSize=1000))
    body = r.body(alert, "edge/gw/alerts")
    assert body is not None
    sent = json.loads(body)
    assert "evidence" not in sent and sent["evidence_id"] == "e1" and sent["sent_at"]
    assert c.get("uplink.evidence_stripped") == 1
    assert r.body(summary, "edge/gw/summary") is None  # nothing to strip: a dead letter
    assert ob.depth() == 1
    db = sqlite3.connect(tmp_path / "outbox.db")
    ((code, reason),) = db.execute("SELECT reason_code, reason FROM dead_letter").fetchall()
    assert code == 0x95 and reason.startswith("packet too large: ") and "Maximum Packet Size 1000" in reason


def test_the_clear_of_an_alert_over_the_maximum_packet_size_follows_it_into_the_dead_letters(tmp_path):
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    raised = ob.put(Outgoing("alert", "alerts", {"id": "r", "alert_id": "A", "state": "raised", "pad": "x" * 2000}))
    cleared = _alert(ob, "A", "cleared")
    r.connected(None, SimpleNamespace(MaximumPacketSize=1000))
    rows = ob.pending(10)
    assert r.body(rows[0], "edge/gw/alerts") is None and r.body(rows[1], "edge/gw/alerts") is None
    db = sqlite3.connect(tmp_path / "outbox.db")
    assert [i for (i,) in db.execute("SELECT id FROM dead_letter ORDER BY id")] == [raised, cleared]
    assert ob.depth() == 0


def test_receive_maximum_bounds_the_messages_in_flight(tmp_path):
    r = _refusals(_outbox(tmp_path), Counters())
    assert r.room(10) == 10
    r.connected(None, SimpleNamespace(ReceiveMaximum=4))
    assert r.room(10) == 4
    r.connected(None, SimpleNamespace(ReceiveMaximum=20))
    assert r.room(10) == 10


# -- the fallback -------------------------------------------------------------------------------------------


def _unsupported() -> ReasonCode:
    return ReasonCode(PacketTypes.CONNACK, "Unsupported protocol version")


def test_auto_falls_back_to_3_1_1_on_unsupported_protocol_version(tmp_path, caplog):
    c = _client()
    r = _refusals(_outbox(tmp_path), Counters(), "auto")
    assert not r.fall_back(c, ReasonCode(PacketTypes.CONNACK, "Not authorized"))
    with caplog.at_level(logging.WARNING):
        assert r.fall_back(c, _unsupported())
    assert c._protocol == mqtt.MQTTv311 and c._clean_session is True
    assert "does not speak MQTT 5: using MQTT 3.1.1" in caplog.text
    assert not r.fall_back(c, _unsupported())  # on 3.1.1 already: nothing lower to try


@pytest.mark.parametrize("setting", ["5", "3.1.1"])
def test_a_forced_protocol_never_falls_back(tmp_path, setting):
    c = _client(PROTOCOLS[setting])
    r = _refusals(_outbox(tmp_path), Counters(), setting)
    assert not r.fall_back(c, _unsupported())
    assert c._protocol == PROTOCOLS[setting]


def test_auto_falls_back_after_mqtt5_connections_closed_in_a_row_before_any_connack(tmp_path, caplog):
    c = _client()
    r = _refusals(_outbox(tmp_path), Counters(), "auto")
    r.closed(c, False)
    r.closed(c, False)
    r.fall_back(c, ReasonCode(PacketTypes.CONNACK, "Not authorized"))  # a CONNACK (a refusal): not a silent close
    r.closed(c, False)
    r.closed(c, False)
    r.connected(c, None)
    r.closed(c, True)  # a connection that was accepted and then ended
    r.closed(c, False)
    r.closed(c, False)
    assert c._protocol == mqtt.MQTTv5
    with caplog.at_level(logging.WARNING):
        r.closed(c, False)
    assert c._protocol == mqtt.MQTTv311 and c._clean_session is True
    assert "closed the connection 3 times in a row before answering an MQTT 5 CONNECT" in caplog.text
    for setting in ("5", "3.1.1"):
        forced = _client(PROTOCOLS[setting])
        r = _refusals(_outbox(tmp_path / setting), Counters(), setting)
        for _ in range(5):
            r.closed(forced, False)
        assert forced._protocol == PROTOCOLS[setting]


def test_the_refused_reason_goes_when_the_outboxs_bounds_dropped_the_dead_letters(tmp_path):
    """Found in review: dead letters evicted by the outbox's bounds stayed 'unsettled', so the status said
    `broker refuses alerts` for good after everything left had been accepted."""
    c = Counters()
    ob = Outbox(tmp_path / "outbox.db", c, max_rows=2)
    r = _refusals(ob, c)
    raised = _alert(ob, "A", "raised")
    assert r.body(ob.pending(1)[0], "edge/gw/alerts") is not None
    r.settle(raised, 0x87)
    r.requeue()  # back in the outbox, not sent yet (the link drops)
    _alert(ob, "B", "raised")
    _alert(ob, "C", "raised")  # evicts A's raise
    assert r.reasons() == ["broker refuses alerts: not authorized"]
    r.requeue()  # the next connection: nothing of A is left to be accepted
    assert r.reasons() == []


def test_back_in_the_outbox_is_one_warning_per_episode_not_one_per_reconnection(tmp_path, caplog):
    # A flaky link with a refused alert waiting: every reconnection re-queues it. That was a warning each time.
    c = Counters()
    ob = _outbox(tmp_path, c)
    r = _refusals(ob, c)
    row = _alert(ob, "A", "raised")
    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        for _ in range(3):  # refused, then three reconnections each taking it back and the broker refusing again
            assert r.body(ob.pending(1)[0], "edge/gw/alerts") is not None
            r.settle(row, 0x87)
            r.requeue()
    back = [rec for rec in caplog.records if "are back in the outbox" in rec.getMessage()]
    assert [rec.levelname for rec in back] == ["WARNING", "INFO", "INFO"]
    assert r.body(ob.pending(1)[0], "edge/gw/alerts") is not None
    r.settle(row, 0)  # the operator fixed the ACL: accepted
    assert r.reasons() == []
    again = _alert(ob, "B", "raised")  # a new refusal later is news again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        assert r.body(ob.pending(1)[0], "edge/gw/alerts") is not None
        r.settle(again, 0x87)
        r.requeue()
    assert [rec.levelname for rec in caplog.records if "are back in the outbox" in rec.getMessage()] == ["WARNING"]
