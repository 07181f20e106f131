"""A broker that refuses an alert says so over MQTT 5, in the PUBACK's reason code; over MQTT 3.1.1 it acknowledges
it and drops it (the alert is "delivered" and lost). The agent speaks MQTT 5 by default: a refused alert becomes a
dead letter in outbox.db (never lost, never re-sent in a loop), counted in the stats, named once in the log and in
the degraded status, and goes out again on the next connection once the broker accepts it (here: after a restart). A broker's size limit: an alert
over it goes without its inline evidence. The real agent process, a real mosquitto, no mock."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

from tests.conftest import Broker, Recorder, run_agent, start_agent, wait_for
from tests.faults import conftest as faults
from tests.faults.conftest import agent_env, demo_rows, fault_recording, taught_state, write_recording
from tests.faults.proxy import pipe

taught_dir = faults.taught  # the fault tests' teach-in (a session fixture, registered under this name here)

BASE = "edge/test-gw"
SPEED = 15  # the fault recording raises an alert ~170 s into it: ~11 s of wall time


def dead_letters(state: Path) -> list[tuple[str, str, int, str, bytes]]:
    """(kind, topic, reason_code, reason, payload) of every dead letter, read-only."""
    p = state / "outbox.db"
    if not p.exists():
        return []
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=10)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name='dead_letter'").fetchone() is None:
            return []
        return [(k, t, c, r, bytes(pl)) for k, t, c, r, pl in
                db.execute("SELECT kind, topic, reason_code, reason, payload FROM dead_letter ORDER BY id")]
    finally:
        db.close()


def acl_broker(tmp_path: Path, name: str, alerts_allowed: bool, extra: str = "") -> Broker:
    """mosquitto with an ACL: the agent (user ``gw``) may publish everything of its own but, unless
    ``alerts_allowed``, its alerts; anonymous clients (the test's recorder) may read everything."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    acl = d / "acl"
    acl.write_text(
        "topic read edge/#\n\nuser gw\n"
        f"topic write {BASE}/status\ntopic write {BASE}/summary\ntopic write {BASE}/stats\n"
        f"topic write {BASE}/reply/#\ntopic read {BASE}/cmd/#\n"
        + (f"topic write {BASE}/alerts\n" if alerts_allowed else "")
    )
    return Broker(d, extra_conf=f"user root\nacl_file {acl}\n{extra}")  # user root: it may read the acl in tmp


def _latest(rec: Recorder, suffix: str, pred: Any) -> Any:
    return next((m for m in reversed(rec.on(suffix)) if m and pred(m)), None)


def test_an_alert_the_broker_refuses_is_a_dead_letter_and_goes_out_after_the_acl_is_fixed(tmp_path, taught_dir, agents):
    state = taught_state(taught_dir, tmp_path / "state")
    broker = acl_broker(tmp_path, "broker", alerts_allowed=False)
    broker.start()
    rec = Recorder(broker.port, f"{BASE}/#")
    try:
        env = agent_env(state, broker.port, EDGE_AGENT_SOURCE__PATH=fault_recording(tmp_path / "fault.csv", copies=1),
                        EDGE_AGENT_SOURCE__SPEED=SPEED, EDGE_AGENT_MQTT__USERNAME="gw", EDGE_AGENT_STATS_INTERVAL_S="1",
                        EDGE_AGENT_MQTT__KEEPALIVE_S="5")
        a = start_agent(env, tmp_path / "logs")
        agents.append(a)
        dead = wait_for(lambda: dead_letters(state), timeout=90, what="a dead letter")
        kind, topic, code, reason, payload = dead[0]
        assert (kind, topic, code, reason) == ("alert", "alerts", 0x87, "not authorized"), dead
        assert b'"state":"raised"' in payload.replace(b" ", b""), payload
        stats = wait_for(lambda: _latest(rec, "stats", lambda s: s["uplink"]["refused"] >= 1), timeout=20,
                         what="the refusal in the stats")
        assert stats["uplink"]["refused_by"] == {"not_authorized": stats["uplink"]["refused"]}, stats["uplink"]
        status = wait_for(lambda: _latest(rec, "status", lambda s: s.get("state") == "degraded"), timeout=20,
                          what="a degraded status")
        assert "broker refuses alerts: not authorized" in status["reasons"], status
        assert a.proc.wait(120) == 0, a.log  # the recording ends: the outbox drains (the refused alert is not in it)
        log = a.log
        dead = dead_letters(state)
        assert len(dead) >= 2 and {d[0] for d in dead} == {"alert"}, dead  # raised and cleared, both refused
        assert log.count("refuses alerts (not authorized") == 1, log  # once per reason, not per message
        assert f"publish to {BASE}/#" in log, log
        assert log.count("refused") < 10, log  # no loop re-sending what the broker refuses
        assert not rec.on("alerts")
        refused_ids = [json.loads(d[4])["id"] for d in dead]

        # the operator fixes the ACL; the agent starts again (with a recording that raises nothing)
        broker.stop()
        broker = acl_broker(tmp_path, "broker", alerts_allowed=True)
        broker.start()
        rec.close()
        rec = Recorder(broker.port, f"{BASE}/#")
        _, rows = demo_rows()
        quiet = write_recording(tmp_path / "quiet.csv", rows[:60])
        b = start_agent({**env, "EDGE_AGENT_MQTT__PORT": str(broker.port), "EDGE_AGENT_SOURCE__PATH": str(quiet)},
                        tmp_path / "logs")
        agents.append(b)
        assert b.proc.wait(120) == 0, b.log
        wait_for(lambda: len(rec.on("alerts")) >= len(refused_ids), timeout=20, what="the re-queued alerts")
        assert [m["id"] for m in rec.on("alerts")] == refused_ids  # in their order: raised before cleared
        assert dead_letters(state) == []
        assert "the broker refused are back in the outbox" in b.log, b.log
        assert "refuses" not in b.log, b.log
    finally:
        rec.close()
        broker.stop()


def _size_run(tmp_path: Path, taught: Path, agents: list[Any], conf: str) -> tuple[Broker, Recorder, Path, Any]:
    """The fault recording (one alert raised, with its evidence inline: ~2.4 kB) through a broker with ``conf``."""
    state = taught_state(taught, tmp_path / "state")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", extra_conf=conf)
    broker.start()
    rec = Recorder(broker.port, f"{BASE}/#")
    env = agent_env(state, broker.port, EDGE_AGENT_SOURCE__PATH=fault_recording(tmp_path / "fault.csv", copies=1),
                    EDGE_AGENT_SOURCE__SPEED=SPEED, EDGE_AGENT_ALERTS__EVIDENCE_INLINE_MAX_BYTES="1000000",
                    EDGE_AGENT_SUMMARY_INTERVAL_S="5", EDGE_AGENT_STATS_INTERVAL_S="1")
    a = start_agent(env, tmp_path / "logs")
    agents.append(a)
    assert a.proc.wait(120) == 0, a.log
    return broker, rec, state, a


def _raised(rec: Recorder) -> dict[str, Any]:
    return wait_for(lambda: next((m for m in rec.on("alerts") if m["state"] == "raised"), None), timeout=20,
                    what="the raised alert")


def test_an_alert_over_the_message_size_limit_goes_without_its_inline_evidence(tmp_path, taught_dir, agents):
    # mosquitto's message_size_limit: the broker answers the PUBACK with 0x95 (which paho 2.2 alone takes for a
    # malformed packet: it dropped the connection and sent the alert again on every reconnect)
    broker, rec, state, a = _size_run(tmp_path, taught_dir, agents, "message_size_limit 1800\n")
    try:
        raised = _raised(rec)
        assert "evidence" not in raised and raised["evidence_id"], raised
        assert "sent without it" in a.log, a.log
        assert a.log.count("connected to") == 1, a.log  # the 0x95 PUBACK did not cut the connection
        assert dead_letters(state) == []
        stats = wait_for(lambda: _latest(rec, "stats", lambda s: s["uplink"]["evidence_stripped"] >= 1), timeout=5,
                         what="evidence_stripped in the stats")
        assert stats["uplink"]["refused"] == 0, stats
    finally:
        rec.close()
        broker.stop()


def test_the_brokers_maximum_packet_size_is_respected(tmp_path, taught_dir, agents):
    # max_packet_size: mosquitto says it in the CONNACK and drops the connection of a client that sends more
    broker, rec, state, a = _size_run(tmp_path, taught_dir, agents, "max_packet_size 1000\n")
    try:
        raised = _raised(rec)
        assert "evidence" not in raised and raised["evidence_id"], raised
        dead = dead_letters(state)
        assert dead and {d[0] for d in dead} == {"summary"}, dead  # summaries (~1.3 kB) cannot be made smaller
        assert all(d[2] == 0x95 and "over the broker's Maximum Packet Size 1000" in d[3] for d in dead), dead
        assert a.log.count("refuses summaries (packet too large") == 1, a.log
        assert a.log.count("connected to") == 1, a.log
        assert "oversize" not in broker.log.read_text()
    finally:
        rec.close()
        broker.stop()


class Mqtt311Only:
    """A TCP front for mosquitto (which speaks MQTT 5) that answers an MQTT 5 CONNECT as a broker that speaks only
    3.1.1 must ([MQTT-3.1.2-2]: CONNACK return code 1, unacceptable protocol version, then close) and passes every
    other connection through to mosquitto. ``silent``: closes the connection without a CONNACK, as some brokers do."""

    def __init__(self, broker_port: int, silent: bool = False):
        self.broker_port = broker_port
        self.silent = silent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refused_v5 = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        try:
            while len(head) < 13:  # fixed header (≤ 5 bytes), protocol name "MQTT" (6), level (1)
                chunk = client.recv(64)
                if not chunk:
                    client.close()
                    return
                head += chunk
            i = 1
            while head[i] & 0x80:  # the remaining length's bytes
                i += 1
            level = head[i + 1 + 6]
            if level == 5:
                self.refused_v5 += 1
                if not self.silent:
                    client.sendall(b"\x20\x02\x00\x01")
                client.close()
                return
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            broker.sendall(head)
        except OSError:
            client.close()
            return
        for src, dst in ((client, broker), (broker, client)):
            threading.Thread(target=pipe, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def _protocol_seen(broker: Broker) -> list[str]:
    """The protocols mosquitto logged for the agent's connections: p2 (its name for 3.1.1), p5."""
    return re.findall(r"as edge-agent-test-gw \((p\d)", broker.log.read_text())


def _quiet_env(tmp_path: Path, taught: Path, port: int, **extra: Any) -> dict[str, str]:
    _, rows = demo_rows()
    tmp_path.mkdir(parents=True)
    quiet = write_recording(tmp_path / "quiet.csv", rows[:20])
    return agent_env(taught_state(taught, tmp_path / "state"), port, EDGE_AGENT_SOURCE__PATH=quiet, **extra)


def test_protocol_auto_speaks_mqtt5_to_mosquitto_and_3_1_1_when_forced(tmp_path, taught_dir, agents, live_broker):
    for setting, level in (("auto", "p5"), ("3.1.1", "p2"), ("5", "p5")):
        before = len(_protocol_seen(live_broker))
        r = run_agent(_quiet_env(tmp_path / setting, taught_dir, live_broker.port, EDGE_AGENT_MQTT__PROTOCOL=setting))
        assert r.returncode == 0, r.stderr
        assert _protocol_seen(live_broker)[before:] == [level], (setting, live_broker.log.read_text()[-2000:])


def test_protocol_auto_falls_back_to_3_1_1_when_the_broker_refuses_mqtt5(tmp_path, taught_dir, agents, live_broker):
    front = Mqtt311Only(live_broker.port)
    try:
        before = len(_protocol_seen(live_broker))
        a = start_agent(_quiet_env(tmp_path / "auto", taught_dir, front.port, EDGE_AGENT_SOURCE__SPEED="2"), tmp_path)
        agents.append(a)
        assert a.proc.wait(60) == 0, a.log
        assert front.refused_v5 == 1
        assert _protocol_seen(live_broker)[before:] == ["p2"]
        assert a.log.count("does not speak MQTT 5: using MQTT 3.1.1") == 1, a.log
        assert "connected to" in a.log, a.log

        # forced to 5, it says what to set (and does not fall back)
        b = start_agent(_quiet_env(tmp_path / "five", taught_dir, front.port, EDGE_AGENT_MQTT__PROTOCOL="5",
                                   EDGE_AGENT_DRAIN_TIMEOUT_S="1"), tmp_path)
        agents.append(b)
        wait_for(lambda: "set EDGE_AGENT_MQTT__PROTOCOL=3.1.1" in b.log, timeout=30, what="the hint")
        assert "using MQTT 3.1.1" not in b.log, b.log
        b.stop()
    finally:
        front.close()


def test_protocol_auto_falls_back_to_3_1_1_when_the_broker_closes_mqtt5_connections(tmp_path, taught_dir, agents,
                                                                                      live_broker):
    front = Mqtt311Only(live_broker.port, silent=True)  # no CONNACK: the connection just ends
    try:
        before = len(_protocol_seen(live_broker))
        a = start_agent(_quiet_env(tmp_path / "auto", taught_dir, front.port, EDGE_AGENT_SOURCE__SPEED="2"), tmp_path)
        agents.append(a)
        assert a.proc.wait(90) == 0, a.log
        assert front.refused_v5 == 3, a.log
        assert _protocol_seen(live_broker)[before:] == ["p2"]
        assert a.log.count("closed the connection 3 times in a row before answering an MQTT 5 CONNECT") == 1, a.log
        assert "connected to" in a.log, a.log
    finally:
        front.close()
