"""Broker stopped for 60 s of data time while alerts are being raised, then restarted: every alert arrives, in the
order it was raised, each id once after deduplication. The real agent process, a real mosquitto."""

from __future__ import annotations

import time

from tests.conftest import start_agent, wait_for
from tests.faults.conftest import agent_env, ALERT_LINE, data_time, fault_recording, parse_iso, taught_state

SPEED = 15  # 60 s of data = 4 s of wall time
OUTAGE_DATA_S = 60.0
# data time; the fault recording raises once per 185-s copy (~10:53:23, ~10:56:28, ~10:59:33): the first alert
# flows before the outage, the second is raised during it
OUTAGE_FROM = parse_iso("2020-03-09T10:55:50.000Z")


def test_broker_outage_while_alerts_are_raised_loses_nothing(tmp_path, durable_broker, durable_recorder, taught, agents):
    state = taught_state(taught, tmp_path / "state")
    rec = fault_recording(tmp_path / "fault.csv", copies=3)
    env = agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=rec, EDGE_AGENT_SOURCE__SPEED=SPEED,
                    EDGE_AGENT_SUMMARY_INTERVAL_S="5", EDGE_AGENT_MQTT__KEEPALIVE_S="5")
    a = start_agent(env, tmp_path)
    agents.append(a)

    # alerts flow while the broker is up
    wait_for(lambda: durable_recorder.on("alerts"), timeout=60, what="an alert before the outage")
    wait_for(lambda: (data_time(a.log) or 0) >= OUTAGE_FROM or not a.alive(), timeout=60,
             what="data time of the outage start")
    assert a.alive(), a.log
    log_before_stop = len(a.log)
    durable_broker.stop()
    log_at_stop = len(a.log)
    data_at_stop = data_time(a.log)
    time.sleep(OUTAGE_DATA_S / SPEED)
    log_at_start = len(a.log)
    data_at_start = data_time(a.log)
    durable_broker.start()

    assert a.proc.wait(120) == 0, a.log
    log = a.log
    # the outage lasted about 60 s of data time, and alerts were raised in it
    assert data_at_stop is not None and data_at_start is not None
    assert data_at_start - data_at_stop >= OUTAGE_DATA_S * 0.75, (data_at_stop, data_at_start)
    during = ALERT_LINE.findall(log[log_at_stop:log_at_start])
    assert "raised" in [state for state, _ in during], f"no alert raised while the broker was down: {during}"
    assert "alerts and summaries stay in the outbox" in log[log_before_stop:], log

    raised_in_log = ALERT_LINE.findall(log)
    wait_for(lambda: len({x["id"] for x in durable_recorder.on("alerts")}) >= len(raised_in_log), timeout=30,
             what=f"all {len(raised_in_log)} alerts at the broker")
    time.sleep(1)  # a late duplicate would show up now
    got = durable_recorder.on("alerts")
    # deduplicate by id (at-least-once), keeping the first arrival
    seen: set[str] = set()
    unique = [x for x in got if not (x["id"] in seen or seen.add(x["id"]))]
    # every alert, each once: the per-device sequence has no hole and no repeat
    assert [x["seq"] for x in unique] == list(range(1, len(raised_in_log) + 1)), [x["seq"] for x in unique]
    # in the order of raising: arrival order is seq order, and matches the log (state and window end)
    assert [(x["state"], x["window_end"]) for x in unique] == raised_in_log
    # the ones raised during the outage are among them, and came after the restart
    for state_, end in during:
        assert (state_, end) in [(x["state"], x["window_end"]) for x in unique]
    assert all(x["device_id"] == "test-gw" for x in unique)
    # the final summary made it too: nothing left behind
    wait_for(lambda: any(s.get("final") for s in durable_recorder.on("summary")), timeout=20, what="final summary")
    status = durable_recorder.on("status")
    assert status and status[-1]["state"] == "offline" and status[-1]["reason"] == "shutdown"
