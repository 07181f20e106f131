"""Rows reach the broker in outbox order, also across alerts: an alert's clear waits while its raise awaits a
PUBACK (so that a refusal of the raise takes the clear to the dead letters too), and the rows after the clear wait
with it. The rows after it were sent meanwhile, so a newer alert arrived between an earlier alert's raise and its
clear (seen in tests/integration/test_agent_mqtt.py::test_broker_outage_loses_nothing: a new run's alert between
the last run's raise and clear). The uplink itself, paho, a real mosquitto, a real SQLite outbox."""

from __future__ import annotations

from agent.counters import Counters
from agent.outbox import Outbox
from agent.records import Outgoing
from agent.settings import MqttSettings
from agent.uplink import Uplink
from tests.conftest import Recorder, wait_for


def test_a_clear_waiting_for_its_raise_holds_the_rows_after_it(tmp_path, live_broker):
    outbox = Outbox(tmp_path / "outbox.db", Counters())
    order = [("A", "raised"), ("A", "cleared"), ("B", "raised"), ("C", "raised"), ("B", "cleared")]
    for alert, state in order:
        outbox.put(Outgoing("alert", "alerts", {"id": f"{alert}-{state}", "alert_id": alert, "state": state}))
    recorder = Recorder(live_broker.port, "edge/order-gw/alerts")
    up = Uplink(MqttSettings(host="127.0.0.1", port=live_broker.port, max_inflight=10), "order-gw", outbox,
                Counters(), status=lambda: {"state": "online"})
    try:
        up.start()
        wait_for(lambda: len(recorder.on("alerts")) >= len(order), timeout=20, what="every alert at the broker")
        assert [m["id"] for m in recorder.on("alerts")] == [f"{a}-{s}" for a, s in order]
        wait_for(lambda: outbox.depth() == 0, timeout=10, what="the outbox drained")
    finally:
        up.stop()
        recorder.close()
        outbox.close()
