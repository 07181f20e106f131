"""An alert raised when the agent stops (SIGKILL, SIGTERM) stays one alert across the restart: the new process
resumes it (agent.open_alerts), so a fault that goes on raises nothing new and its end clears it under the same id;
a restart into a new teach-in clears it at once with its reason. The real agent process, a real mosquitto."""

from __future__ import annotations

import shutil
import signal

import pytest

from tests.conftest import start_agent, wait_for
from tests.faults.conftest import agent_env, demo_rows, taught_state, write_recording

# the demo's rows 960.. (tests.faults.conftest.fault_recording): with the session's teach-in the fault model raises
# on the window ending at row 124 of them and clears on the one ending at row 148; a replay from row 120 on raises
# too (at row 131): the restarted replay takes the fault up there, a window's worth before where the first one
# stopped, so that it is still on for k windows after the restart (without the resume: a second alert)
CLEAR_ROW, RESTART_ROW = 148, 118
SPEED = 8


def _recording(path, first: int, last: int):
    """Rows ``first``..``last`` of the fault recording, with the times they have there (one second apart)."""
    _, rows = demo_rows()
    full = write_recording(path.with_suffix(".full"), rows[960:]).read_text().splitlines()
    path.write_text("\n".join([full[0], *full[1 + first:1 + last]]) + "\n")
    return path


def _alerts(recorder):
    seen: set[str] = set()  # at-least-once: a message may come twice, under the same id
    return [x for x in recorder.on("alerts") if not (x["id"] in seen or seen.add(x["id"]))]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_an_alert_raised_at_a_restart_is_resumed_and_cleared_once(tmp_path, durable_broker, durable_recorder, taught,
                                                                   agents, sig):
    state = taught_state(taught, tmp_path / "state")
    # the fault is on when the agent is stopped: its replay goes on past the raise, stopped before the clear
    first = _recording(tmp_path / "before.csv", 90, CLEAR_ROW - 4)
    a = start_agent(agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=first,
                              EDGE_AGENT_SOURCE__SPEED=SPEED), tmp_path)
    agents.append(a)
    wait_for(lambda: any(x["state"] == "raised" for x in _alerts(durable_recorder)), timeout=60, what="the raise")
    assert a.alive(), "the replay ended before the stop: stopped while raised is what this tests"
    a.stop(sig)
    raised = [x for x in _alerts(durable_recorder) if x["state"] == "raised"]
    assert len(raised) == 1 and not [x for x in _alerts(durable_recorder) if x["state"] == "cleared"]

    # the restart: the fault goes on for a few windows more, then ends
    after = _recording(tmp_path / "after.csv", RESTART_ROW, CLEAR_ROW + 20)
    b = start_agent(agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=after,
                              EDGE_AGENT_SOURCE__SPEED=SPEED * 4), tmp_path)
    agents.append(b)
    assert b.proc.wait(60) == 0, b.log
    assert "open alerts from before the restart: 1 resumed, 0 cleared" in b.log, b.log
    wait_for(lambda: any(x["state"] == "cleared" for x in _alerts(durable_recorder)), timeout=20, what="the clear")
    alerts = _alerts(durable_recorder)
    assert [(x["state"], x["alert_id"]) for x in alerts] == [("raised", raised[0]["alert_id"]),
                                                              ("cleared", raised[0]["alert_id"])], alerts
    assert "reason" not in alerts[1] and alerts[1]["seq"] == alerts[0]["seq"] + 1


def test_an_alert_open_at_a_restart_into_a_new_teach_in_is_cleared_with_its_reason(tmp_path, durable_broker,
                                                                                   durable_recorder, taught, agents):
    state = taught_state(taught, tmp_path / "state")
    first = _recording(tmp_path / "before.csv", 90, CLEAR_ROW - 4)  # ends raised: the replay's end stops it
    a = start_agent(agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=first), tmp_path)
    agents.append(a)
    assert a.proc.wait(60) == 0, a.log
    wait_for(lambda: _alerts(durable_recorder), timeout=20, what="the raise")
    raised = _alerts(durable_recorder)
    assert [x["state"] for x in raised] == ["raised"], raised

    for p in state.glob("calibration*"):  # the teach-in discarded: the next start teaches in again
        p.unlink() if p.is_file() else shutil.rmtree(p)
    after = _recording(tmp_path / "after.csv", RESTART_ROW, CLEAR_ROW + 20)
    b = start_agent(agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=after), tmp_path)
    agents.append(b)
    assert b.proc.wait(60) == 0, b.log
    assert "open alerts from before the restart: 0 resumed, 1 cleared" in b.log, b.log
    wait_for(lambda: len(_alerts(durable_recorder)) >= 2, timeout=20, what="the clear")
    cleared = _alerts(durable_recorder)[1:]
    assert [(x["state"], x["alert_id"], x.get("reason")) for x in cleared] == [
        ("cleared", raised[0]["alert_id"], "recalibrated")], cleared
