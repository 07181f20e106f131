"""A clean stop (SIGTERM) while one alert is open and another has cleared: the retained ``offline`` status names the
run (``started_at``) and the alert still open (``open_alerts``, as the outbox keeps it: agent/open_alerts.py), so
that a monitor that was away when the clear came, and reconnects only after the stop, closes the cleared alert and
keeps the open one (before: the offline status named neither, and the cleared one stayed open on the control
room's screen until the next run's status). The real agent (its readings published over MQTT by the test, two
sensors, so that which alert is raised and cleared when is the test's doing, not a race with a replay), mosquitto
and monitor processes; the monitor's link to the broker through tests/faults/proxy.py."""

from __future__ import annotations

import json
from pathlib import Path

from agent.counters import Counters
from agent.records import Reading
from agent.sources.replay import read_recording
from tests.conftest import Recorder, start_agent, wait_for
from tests.faults.conftest import BASE, agent_env, taught_state
from tests.faults.proxy import Proxy
from tests.faults.test_open_alerts_monitor import start_monitor
from tests.faults.test_open_alerts_restart import CLEAR_ROW, _alerts, _recording
from tests.integration.test_mqtt_source import Publisher

FIRST = 90  # the fault recording's rows FIRST..CLEAR_ROW-4 raise its alert, the rows up to CLEAR_ROW+20 clear it
TOPICS = "plant/+/telemetry"


def _rows(tmp_path: Path) -> tuple[list[Reading], list[Reading]]:
    """The fault recording's readings up to just before its alert's clear, and the rest up to after it."""
    readings = list(read_recording(_recording(tmp_path / "fault.csv", FIRST, CLEAR_ROW + 20), Counters()))
    return readings[:CLEAR_ROW - 4 - FIRST], readings[CLEAR_ROW - 4 - FIRST:]


def _publish(pub: Publisher, sensor: str, readings: list[Reading]) -> None:
    for r in readings:  # QoS 1, each acknowledged by the broker: in order, none lost
        pub.pub(f"plant/{sensor}/telemetry", json.dumps({"ts": r.ts, **r.values}, separators=(",", ":")))


def _start(tmp_path, taught, port, agents):
    a = start_agent(agent_env(taught_state(taught, tmp_path / "state"), port, EDGE_AGENT_SOURCE__KIND="mqtt",
                              EDGE_AGENT_SOURCE__TOPICS=TOPICS, EDGE_AGENT_SOURCE__SENSOR_PATTERN="plant/{sensor}/telemetry",
                              EDGE_AGENT_SOURCE__QOS="1"), tmp_path)
    agents.append(a)
    wait_for(lambda: f"subscribed to {TOPICS}" in a.log or not a.alive(), timeout=30, what="the agent's subscription")
    assert a.alive(), a.log
    return a


def _raised(recorder, sensor: str) -> dict:
    """Wait for ``sensor``'s raise (its only one) and return it."""
    def raises():
        return [x for x in _alerts(recorder) if x["sensor"] == sensor and x["state"] == "raised"]

    wait_for(raises, timeout=60, what=f"{sensor}'s raise")
    [x] = raises()
    return x


def _cleared(recorder, alert: dict) -> None:
    wait_for(lambda: [x for x in _alerts(recorder) if x["alert_id"] == alert["alert_id"] and x["state"] == "cleared"],
             timeout=60, what=f"{alert['sensor']}'s clear")


def _started_at(recorder) -> str:
    [started] = {s["started_at"] for s in recorder.on("status") if isinstance(s, dict) and s.get("state") != "offline"}
    return started


def test_the_offline_status_of_a_clean_stop_names_the_run_and_the_alerts_still_open(
        tmp_path, durable_broker, durable_recorder, taught, agents):
    before, after = _rows(tmp_path)
    pub = Publisher(durable_broker.port)
    try:
        a = _start(tmp_path, taught, durable_broker.port, agents)
        _publish(pub, "pump-1", before + after)  # raised and cleared
        cleared = _raised(durable_recorder, "pump-1")
        _cleared(durable_recorder, cleared)
        _publish(pub, "pump-2", before)  # raised, open at the stop
        still_open = _raised(durable_recorder, "pump-2")
        assert a.stop() == 0, a.log
    finally:
        pub.close()
    # what a monitor connecting now is given: the retained status
    fresh = Recorder(durable_broker.port, f"{BASE}/status")
    try:
        wait_for(lambda: fresh.messages, timeout=10, what="the retained status")
        [(_, status, retained)] = fresh.messages
    finally:
        fresh.close()
    assert retained and (status["state"], status["reason"]) == ("offline", "shutdown"), status
    assert status.get("started_at") == _started_at(durable_recorder), status
    assert status.get("open_alerts") == [still_open["alert_id"]], (status, cleared)


def test_a_monitor_back_after_a_clean_stop_closes_the_alert_that_cleared_while_it_was_away(
        tmp_path, durable_broker, durable_recorder, taught, agents):
    before, after = _rows(tmp_path)
    px = Proxy(durable_broker.port)
    mon, snaps = start_monitor(px.port)  # the control room's link through the proxy
    pub = Publisher(durable_broker.port)
    try:
        wait_for(lambda: snaps and snaps[-1]["subscribed"], timeout=20, what="the monitor subscribed")
        a = _start(tmp_path, taught, durable_broker.port, agents)
        _publish(pub, "pump-1", before)
        cleared = _raised(durable_recorder, "pump-1")
        _publish(pub, "pump-2", before)
        still_open = _raised(durable_recorder, "pump-2")
        both = sorted([cleared["alert_id"], still_open["alert_id"]])
        wait_for(lambda: [d for d in snaps[-1]["devices"] if d["open_alert_ids"] == both], timeout=20,
                 what="both open in the monitor")
        started = snaps[-1]["devices"][0]["started_at"]
        px.cut()  # the control room's link drops: the monitor misses the clear and the stop
        _publish(pub, "pump-1", after)
        _cleared(durable_recorder, cleared)
        assert a.stop() == 0, a.log
        px.heal()
        wait_for(lambda: [d for d in snaps[-1]["devices"] if d["state"] == "offline"], timeout=60,
                 what="the monitor back, with the retained offline status")
        [dev] = snaps[-1]["devices"]
        assert dev["started_at"] == started, dev  # the same run
        assert dev["open_alert_ids"] == [still_open["alert_id"]], (dev, cleared)  # before the fix: both
    finally:
        pub.close()
        mon.kill()
        mon.wait()
        px.close()
