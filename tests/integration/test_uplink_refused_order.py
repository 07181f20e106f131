"""Dead letters and order, against a real mosquitto whose ACL refuses the gateway's alerts (MQTT 5 PUBACK 0x87), the
real SQLite outbox and the real uplink in this process: an alert's ``cleared`` never reaches the control room before
its refused ``raised``; dead letters are retried when the connection comes back (no agent restart), and the degraded
reason goes once they are accepted; a stale refusal code of an earlier PUBACK never makes an accepted alert a dead
letter."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent.counters import Counters
from agent.outbox import Outbox
from agent.records import Outgoing
from agent.settings import MqttSettings
from agent.uplink import Uplink
from tests.conftest import Broker, Recorder, wait_for

BASE = "edge/gw"


def _acl(acl: Path, alerts: bool, status: bool = True) -> None:
    acl.write_text("topic read edge/#\n\nuser gw\n" + (f"topic write {BASE}/status\n" if status else "")
                   + (f"topic write {BASE}/alerts\n" if alerts else ""))


def _broker(tmp_path: Path, alerts: bool, status: bool = True) -> tuple[Broker, Path]:
    d = tmp_path / "broker"
    d.mkdir()
    acl = d / "acl"
    _acl(acl, alerts, status)
    b = Broker(d, extra_conf=f"user root\nacl_file {acl}\n")
    b.start()
    return b, acl


def _dead(ob: Outbox) -> list[tuple[int, int]]:
    db = sqlite3.connect(ob.path, timeout=10)
    try:
        return [(i, c) for i, c in db.execute("SELECT id, reason_code FROM dead_letter ORDER BY id")]
    finally:
        db.close()


def _uplink(port: int, ob: Outbox, counters: Counters) -> Uplink:
    up = Uplink(MqttSettings(host="127.0.0.1", port=port, username="gw", topic_prefix="edge"), "gw", ob, counters,
                status=lambda: {"state": "ok"})
    up.start()
    wait_for(up.connected.is_set, timeout=10, what="the uplink's connection")
    return up


def _alert(ob: Outbox, up: Uplink, mid: str, state: str) -> None:
    ob.put(Outgoing("alert", "alerts", {"id": mid, "alert_id": "A", "state": state}))
    up.wake()


def _alerts(rec: Recorder) -> list[tuple[Any, ...]]:
    return [(m["id"], m["state"], m["seq"]) for m in rec.on("alerts")]


def test_a_clear_never_overtakes_its_refused_raise_and_both_go_out_when_the_broker_reconnects(tmp_path):
    broker, acl = _broker(tmp_path, alerts=False)
    rec = Recorder(broker.port, "edge/#", durable=True)
    c = Counters()
    ob = Outbox(tmp_path / "outbox.db", c)
    up = _uplink(broker.port, ob, c)
    try:
        _alert(ob, up, "m1", "raised")
        wait_for(lambda: _dead(ob), timeout=10, what="the refused raise as a dead letter")
        assert up.refusals.reasons() == ["broker refuses alerts: not authorized"]
        # the operator fixes the ACL (mosquitto reloads it on SIGHUP: the connection stays); the alert clears
        _acl(acl, alerts=True)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        _alert(ob, up, "m2", "cleared")
        wait_for(lambda: len(_dead(ob)) == 2, timeout=10, what="the clear kept behind its raise")
        time.sleep(0.5)
        assert _alerts(rec) == [], "the clear went out before its refused raise"
        assert c.get("uplink.refused") == 1  # the clear was not refused: it was not sent
        # ... and restarts the broker: on the reconnection the dead letters go out, in order, without an agent restart
        broker.stop()
        broker.start()
        wait_for(lambda: len(rec.on("alerts")) >= 2, timeout=20, what="the re-queued alerts")
        assert _alerts(rec) == [("m1", "raised", 1), ("m2", "cleared", 2)]
        assert _dead(ob) == [] and ob.depth() == 0
        wait_for(lambda: up.refusals.reasons() == [], timeout=5, what="the degraded reason to clear")
    finally:
        up.stop()
        rec.close()
        broker.stop()
        ob.close()


def test_a_stale_refusal_of_a_status_never_makes_an_accepted_alert_a_dead_letter(tmp_path):
    # the ACL lets the gateway publish its alerts, not its status: the status PUBACK on connect is a refusal (0x87)
    broker, _ = _broker(tmp_path, alerts=True, status=False)
    rec = Recorder(broker.port, "edge/#")
    c = Counters()
    ob = Outbox(tmp_path / "outbox.db", c)
    up = _uplink(broker.port, ob, c)
    client_class = type(up.client)
    try:
        wait_for(lambda: up._early_acks, timeout=5, what="the status PUBACK")
        stale = next(iter(up._early_acks))
        time.sleep(0.3)
        up.client._last_mid = stale - 1

        class Slow(client_class):  # type: ignore[misc,valid-type]
            """A loaded gateway: the alert's PUBACK (a success) arrives before the publisher records the mid."""

            def publish(self, *a: Any, **k: Any) -> Any:
                info = super().publish(*a, **k)
                time.sleep(0.3)
                return info

        up.client.__class__ = Slow
        _alert(ob, up, "m1", "raised")
        wait_for(lambda: rec.on("alerts"), timeout=10, what="the alert at the subscriber")
        wait_for(lambda: ob.depth() == 0, timeout=5, what="the alert to leave the outbox")
        assert _dead(ob) == [], "an alert the broker accepted became a dead letter"
        assert c.get("uplink.refused") == 0 and up.refusals.reasons() == []
    finally:
        up.client.__class__ = client_class
        up.stop()
        rec.close()
        broker.stop()
        ob.close()
