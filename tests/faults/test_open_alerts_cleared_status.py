"""An alert carried over a restart clears: the retained status no longer lists it in ``open_alerts`` (the list was
set once at the start and never shrank), so a monitor that was away when the clear came, and reconnects, closes
it (the earlier run's alert, not carried any more) instead of keeping it open until the next restart. The real
agent, mosquitto and monitor processes; the monitor's link to the broker through tests/faults/proxy.py."""

from __future__ import annotations

from tests.conftest import start_agent, wait_for
from tests.faults.conftest import agent_env, demo_rows, write_recording
from tests.faults.proxy import Proxy
from tests.faults.test_open_alerts_monitor import first_run_ends_raised, start_monitor
from tests.faults.test_open_alerts_restart import CLEAR_ROW, RESTART_ROW, _alerts

FAULT = 960  # the recording's row 0 in the demo's rows (tests/faults/test_open_alerts_restart.py)


def _long_after_the_clear(path):
    """From RESTART_ROW on (the fault goes on, then ends: the resumed alert clears), then the normal rows after it
    over and over: the agent keeps running (and publishing its status) while the monitor reconnects."""
    _, rows = demo_rows()
    tail = rows[FAULT + CLEAR_ROW + 20:]
    return write_recording(path, rows[FAULT + RESTART_ROW:FAULT + CLEAR_ROW + 20] + tail * 40)


def _live(recorder):
    return [s for s in recorder.on("status") if isinstance(s, dict) and s.get("state") != "offline"]


def test_a_carried_alert_that_clears_leaves_the_status_and_a_reconnecting_monitor_closes_it(
        tmp_path, durable_broker, durable_recorder, taught, agents):
    px = Proxy(durable_broker.port)
    mon, snaps = start_monitor(px.port)  # the control room's link through the proxy
    try:
        state, raised, started = first_run_ends_raised(tmp_path, durable_broker.port, taught, agents,
                                                       durable_recorder, snaps)
        px.cut()  # the control room's link drops: the monitor misses the clear
        b = start_agent(agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=_long_after_the_clear(
            tmp_path / "after.csv"), EDGE_AGENT_SOURCE__SPEED=8), tmp_path)
        agents.append(b)
        wait_for(lambda: [x["state"] for x in _alerts(durable_recorder)] == ["raised", "cleared"], timeout=60,
                 what="the resumed alert's clear")
        assert _alerts(durable_recorder)[1]["alert_id"] == raised["alert_id"]
        assert [raised["alert_id"]] in [s.get("open_alerts") for s in _live(durable_recorder)]  # carried at first
        # the retained status is published again without it (before the fix: listed until the next restart)
        wait_for(lambda: _live(durable_recorder)[-1].get("open_alerts") == [], timeout=20,
                 what="a status without the cleared alert")
        assert b.alive(), b.log
        px.heal()
        wait_for(lambda: snaps[-1]["devices"][0]["started_at"] not in (None, started), timeout=60,
                 what="the monitor back, with the new run's status")
        dev = next(d for s in snaps for d in s["devices"][:1] if d["started_at"] not in (None, started))
        assert dev["open_alert_ids"] == [], dev  # closed with the status that brought the new run
        assert b.alive(), b.log
    finally:
        mon.kill()
        mon.wait()
        px.close()
