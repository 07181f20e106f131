"""An alert's raise and clear stay together across the outbox's bounds and the broker's refusals (MQTT 5 dead
letters), with a real mosquitto refusing alerts by its ACL (PUBACK 0x87), the real uplink and a real outbox file.
Found in review: it left the control room with a raise that never clears. (The companion scenario, a clear
evicted while its raise is a dead letter, is pinned on a real outbox file in tests/unit/test_outbox.py: its broker
version here timed out waiting for the uplink's reconnection in 2 of 13 runs and was taken out.)"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from agent.counters import Counters
from agent.outbox import Outbox
from agent.records import Outgoing
from tests.conftest import Recorder, wait_for
from tests.integration.test_uplink_refused_order import _acl, _broker, _dead, _uplink


def _put(ob: Outbox, up, alert_id: str, state: str) -> None:
    ob.put(Outgoing("alert", "alerts", {"id": f"{alert_id}-{state}", "alert_id": alert_id, "state": state}))
    up.wake()


def _seen(rec: Recorder) -> list[tuple[str, str]]:
    return [(m["alert_id"], m["state"]) for m in rec.on("alerts")]


def test_trimming_the_dead_letters_keeps_the_clear_of_a_delivered_raise(tmp_path: Path) -> None:
    """A's raise delivered; then the broker refuses everything (ACL reloaded): A's clear, B's and C's raises are
    dead letters, one more than the bound (2). B goes (with its clear to come), A's clear stays: after the ACL is
    fixed the control room sees A cleared (it used to lose A's clear and show A raised for ever)."""
    broker, acl = _broker(tmp_path, alerts=True)
    rec = Recorder(broker.port, "edge/#", durable=True)
    c = Counters()
    ob = Outbox(tmp_path / "outbox.db", c, max_rows=2)
    up = _uplink(broker.port, ob, c)
    try:
        _put(ob, up, "A", "raised")
        wait_for(lambda: _seen(rec) == [("A", "raised")], what="A's raise delivered")
        _acl(acl, alerts=False)
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        _put(ob, up, "A", "cleared")
        wait_for(lambda: len(_dead(ob)) == 1, what="A's clear refused")
        for alert_id in "BC":
            _put(ob, up, alert_id, "raised")
        wait_for(lambda: ob.depth() == 0 and len(_dead(ob)) == 2, what="B and C refused, one trimmed")
        _acl(acl, alerts=True)
        broker.stop()
        broker.start()
        wait_for(lambda: len(_seen(rec)) >= 3 and ob.depth() == 0 and not _dead(ob), timeout=90, what="the drain (the uplink reconnects with backoff)")
        time.sleep(0.5)
        assert _seen(rec) == [("A", "raised"), ("A", "cleared"), ("C", "raised")]
    finally:
        up.stop()
        rec.close()
        broker.stop()
        ob.close()
