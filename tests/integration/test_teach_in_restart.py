"""A restart in the middle of a teach-in (an upgrade, a reboot: systemd's SIGTERM) resumes it: the real daemon is
stopped while it teaches in, started again on the rest of the recording, and ends its teach-in at the same reading
and sends the same alerts as ``evaluate`` of the whole recording (agent/calibrate.py, the checkpoint)."""

from __future__ import annotations

import json
import re
import signal

from tests.conftest import agent_env, run_agent, start_agent, wait_for


def test_a_teach_in_stopped_halfway_is_resumed_and_alerts_as_an_uninterrupted_one(tmp_path, live_broker, recorder, agents):
    from agent.evaluate import Evaluation
    from tests.unit.test_evaluate_modes import _write_slow

    f = tmp_path / "slow.csv"
    _write_slow(f)  # a temperature every 5 min for 3 days; a 10-degree fall on day 3
    res = Evaluation.create({"calibration.duration": 86400.0}).run(f)
    want = [("raised", a.raise_window_end) for a in res.run.alerts]
    want += [("cleared", a.clear_window_end) for a in res.run.alerts if a.clear_window_end is not None]
    assert res.run.teach_in_rows == 289 and sorted(s for s, _ in want) == ["cleared", "raised"]

    state = tmp_path / "state"
    env = dict(EDGE_AGENT_CALIBRATION__DURATION="1d")
    # paced: a reading every 0.05 s, the day's teach-in about 15 s; stopped after some 60 readings
    a = start_agent(agent_env(state, live_broker.port, EDGE_AGENT_SOURCE__PATH=str(f), EDGE_AGENT_SOURCE__SPEED="6000",
                              **env), tmp_path)
    agents.append(a)
    wait_for(lambda: a.log.count("SUMMARY") >= 60, timeout=60, what="60 readings into the teach-in")
    assert a.stop(signal.SIGTERM) == 0, a.log[-3000:]
    assert "teach-in done" not in a.log, "the teach-in ended before the stop: slow the replay down"
    m = re.search(r"teach-in not finished: (\d+) readings taken", a.log)
    assert m, a.log[-3000:]
    taken = int(m.group(1))
    assert 0 < taken < 289 and (state / "teach-in.npz").is_file()
    shown = run_agent(agent_env(state, live_broker.port, **env), "calibrate")  # what an engineer on the box sees
    assert shown.returncode == 0, shown.stderr
    teach_in = json.loads(shown.stdout)["teach_in"]
    assert teach_in["collected"] == taken and teach_in["elapsed_s"] == 300.0 * (taken - 1)

    lines = f.read_text().splitlines()
    rest = tmp_path / "rest.csv"  # what the machine went on to send after the restart
    rest.write_text("\n".join([lines[0], *lines[1 + taken:]]) + "\n")
    rec = recorder("edge/#")
    r = run_agent(agent_env(state, live_broker.port, EDGE_AGENT_SOURCE__PATH=str(rest), **env))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"teach-in resumed after a restart: {taken} readings" in r.stderr
    assert "teach-in done after 289 readings" in r.stderr  # as without the restart
    assert not (state / "teach-in.npz").exists()
    wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "offline", what="status offline")
    assert [(x["state"], x["window_end"]) for x in rec.on("alerts")] == want
