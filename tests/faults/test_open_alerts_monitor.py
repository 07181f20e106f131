"""An alert open when the agent stops, seen by a running ``edge-agent monitor``: after the restart the monitor keeps
it open when the new run carries it over (its status's ``open_alerts``), and closes it when the new run could not
(an outbox from a version before open alerts were kept, an outbox found corrupt and set aside): without that it
stayed open on the control room's screen for ever, its clear never coming. The real agent, mosquitto and monitor
processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import start_agent, wait_for
from tests.faults.conftest import agent_env, taught_state
from tests.faults.test_open_alerts_restart import CLEAR_ROW, RESTART_ROW, _alerts, _recording
from tests.integration.test_monitor import ROOT, _cmd, _ctrl_c_default, _env


def start_monitor(port: int) -> tuple[subprocess.Popen[str], list[dict]]:
    """``edge-agent monitor --json`` on the broker at ``port``, and the snapshots it prints, as it prints them."""
    prefix = agent_env(Path("unused"), port).get("EDGE_AGENT_MQTT__TOPIC_PREFIX", "edge")
    mon = subprocess.Popen(_cmd(port, prefix, "--json", "--interval", "0.3"), env=_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
    snaps: list[dict] = []
    threading.Thread(target=lambda: [snaps.append(json.loads(line)) for line in mon.stdout], daemon=True).start()
    return mon, snaps


def first_run_ends_raised(tmp_path, port, taught, agents, recorder, snaps) -> tuple[Path, dict, str]:
    """Once the monitor has subscribed: a first run whose replay ends with its alert raised, seen open by the
    monitor. Returns its state directory, the raise and the run's started_at."""
    wait_for(lambda: snaps and snaps[-1]["subscribed"], timeout=20, what="the monitor subscribed")
    state = taught_state(taught, tmp_path / "state")
    first = _recording(tmp_path / "before.csv", 90, CLEAR_ROW - 4)  # ends raised: the replay's end stops it
    a = start_agent(agent_env(state, port, EDGE_AGENT_SOURCE__PATH=first), tmp_path)
    agents.append(a)
    assert a.proc.wait(60) == 0, a.log
    wait_for(lambda: any(d["open_alerts"] == 1 for d in snaps[-1]["devices"]), timeout=20, what="open in monitor")
    [raised] = _alerts(recorder)
    return state, raised, snaps[-1]["devices"][0]["started_at"]


def _forget_open_alerts(state):
    """The outbox as a version before agent.open_alerts wrote it: no ``open_alert:`` rows in its meta table."""
    db = sqlite3.connect(state / "outbox.db")
    with db:
        assert db.execute("DELETE FROM meta WHERE key LIKE 'open_alert:%'").rowcount == 1
    db.close()


def _corrupt(state):
    """The outbox found corrupt at the next start (an SD card): set aside, a new one started, its open alert lost."""
    ob = state / "outbox.db"
    ob.write_bytes(b"garbage!" * (ob.stat().st_size // 8))
    for suffix in ("-wal", "-shm"):
        (state / f"outbox.db{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("before_restart", [None, _forget_open_alerts, _corrupt],
                         ids=["resumed", "upgraded", "corrupt"])
def test_the_monitor_closes_at_a_restart_the_open_alerts_the_new_run_does_not_carry(
        tmp_path, durable_broker, durable_recorder, taught, agents, before_restart):
    mon, snaps = start_monitor(durable_broker.port)
    try:
        state, raised, started = first_run_ends_raised(tmp_path, durable_broker.port, taught, agents,
                                                       durable_recorder, snaps)
        if before_restart is not None:
            before_restart(state)
        # resumed: the fault goes on to the replay's end (the alert stays open); otherwise it goes on and ends (a
        # new alert, raised and cleared: the old one's clear never comes)
        last = CLEAR_ROW - 4 if before_restart is None else CLEAR_ROW + 20
        b = start_agent(agent_env(state, durable_broker.port,
                                  EDGE_AGENT_SOURCE__PATH=_recording(tmp_path / "after.csv", RESTART_ROW, last)),
                        tmp_path)
        agents.append(b)
        assert b.proc.wait(60) == 0, b.log
        carried = [s.get("open_alerts") for s in durable_recorder.on("status") if isinstance(s, dict)
                   and s.get("state") != "offline"][-1]
        assert carried == ([raised["alert_id"]] if before_restart is None else []), b.log
        if before_restart is not None:
            wait_for(lambda: [x["state"] for x in _alerts(durable_recorder)][1:] == ["raised", "cleared"], timeout=20,
                     what="the new run's own alert")
        # the monitor's own state: the new run's status taken in, and every alert message sent (the new run's own
        # alert, raised and cleared, when it had one)
        seen = {"raised": 1, "cleared": 0} if before_restart is None else {"raised": 2, "cleared": 1}

        def new_run_seen():
            return [d for s in snaps[-1:] for d in s["devices"][:1]
                    if d["started_at"] not in (None, started) and d["alerts_seen"] == seen]

        wait_for(new_run_seen, timeout=20, what="the new run's status and alerts in the monitor")
        [dev] = new_run_seen()
        expected = [raised["alert_id"]] if before_restart is None else []
        assert dev["open_alert_ids"] == expected, (_alerts(durable_recorder), dev)
    finally:
        mon.kill()
        mon.wait()
