"""Feedback that teaches, end to end: the real agent (generic detector, replay), a real broker, the feedback command.

A recording with one benign event repeated three times and then a real fault: the first alert is labelled
``false_positive`` over MQTT; the repeats are not raised; the real fault is.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import agent_env, start_agent, wait_for
from tests.integration.test_control import BASE, Commander

EVENTS = (600, 1200, 1800)  # benign: channel "flow" dips 7 scales for two minutes
FAULT = 2400  # real: channel "vibration" rises 12 scales


def _recording(path: Path) -> None:
    rng = np.random.default_rng(11)
    n = 2800
    x = 10.0 + rng.normal(0, 1, (n, 3))
    for start in EVENTS:
        x[start:start + 120, 0] -= 7.0
    x[FAULT:FAULT + 300, 1] += 12.0
    t0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc).timestamp()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "flow", "vibration", "current"])
        for i, row in enumerate(x):
            w.writerow([datetime.fromtimestamp(t0 + i, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), *map(float, row)])


def test_false_positive_label_folds_the_event_into_normal_and_a_real_fault_still_alerts(tmp_path, live_broker, recorder, agents):
    rec = recorder(f"{BASE}/#")
    data = tmp_path / "benign-event.csv"
    _recording(data)
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_MODEL__PATH="generic",
                    EDGE_AGENT_SOURCE__PATH=str(data), EDGE_AGENT_SOURCE__SPEED="100")
    commander = Commander(live_broker.port)
    try:
        agents.append(start_agent(env, tmp_path))
        first = wait_for(lambda: next((a for a in rec.on("alerts") if a["state"] == "raised"), None),
                         timeout=60, what="the first alert")
        assert first["top_channels"][0]["channel"] == "flow"
        cleared = wait_for(lambda: next((a for a in rec.on("alerts") if a["state"] == "cleared"
                                         and a["alert_id"] == first["alert_id"]), None), timeout=30, what="its clear")
        assert cleared
        reply = commander.send("feedback", {"request_id": "fb-1", "alert_id": first["alert_id"],
                                            "label": "false_positive", "note": "valve cycling, normal"})
        assert reply["ok"] and reply["learned"] and reply["folded_readings"] >= 120, reply
        assert reply["feedback"]["false_positive"] == 1 and reply["changed"] is True
        again = commander.send("feedback", {"request_id": "fb-2", "alert_id": first["alert_id"],
                                            "label": "false_positive"})  # sent twice: nothing to learn again
        assert again["ok"] and again["changed"] is False and again["learned"] is False, again
        assert again["why"] == "already folded into the normal model" and again["feedback"] == reply["feedback"]
        wait_for(lambda: any(s.get("final") for s in rec.on("summary")), timeout=120, what="the end of the replay")
        raised = [a for a in rec.on("alerts") if a["state"] == "raised"]
        later = [a for a in raised if a["alert_id"] != first["alert_id"]]
        assert [a["top_channels"][0]["channel"] for a in later] == ["vibration"], later
    finally:
        commander.close()


def test_a_teach_in_with_a_fault_inside_is_reported_in_the_log_status_and_calibrate(tmp_path, live_broker, recorder):
    from tests.conftest import run_agent

    rng = np.random.default_rng(12)
    x = 10.0 + rng.normal(0, 1, (700, 3))
    x[300:, 2] += 15.0  # the machine changed at reading 300, inside the 400-reading teach-in
    t0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc).timestamp()
    data = tmp_path / "changed.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "flow", "vibration", "current"])
        for i, row in enumerate(x):
            w.writerow([datetime.fromtimestamp(t0 + i, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), *map(float, row)])
    rec = recorder(f"{BASE}/#")
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_MODEL__PATH="generic",
                    EDGE_AGENT_SOURCE__PATH=str(data))
    r = run_agent(env)
    assert r.returncode == 0, r.stderr
    assert "WARNING agent.pipeline: teach-in: the second half of the teach-in differs from the first (current:" in r.stderr
    st = wait_for(lambda: next((s for s in rec.on("status") if "warning" in s.get("calibration", {})), None),
                  timeout=20, what="a status with the teach-in warning")
    assert st["calibration"]["warning"].startswith("the second half of the teach-in differs")
    shown = run_agent(env, "calibrate")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["warning"] == st["calibration"]["warning"]
    assert "warning: teach-in: the second half" in shown.stderr
    levels = json.loads(shown.stdout)["alert_levels"]  # what was learnt (on the first half), in the channels' units
    assert levels["threshold"] == 6 and levels["source"] == "calibrated" and levels["daily_profile"] is False
    assert list(levels["channels"]) == ["flow", "vibration", "current"]
    current = levels["channels"]["current"]
    assert current["level"] == pytest.approx(10.0, abs=0.5)  # before the change: the first half was fitted
    assert current["alerts_above"] == pytest.approx(current["level"] + 6 * current["scale"], rel=1e-5)
    shown = run_agent({**env, "EDGE_AGENT_MODEL__THRESHOLD": "8"}, "calibrate")
    assert json.loads(shown.stdout)["alert_levels"]["threshold"] == 8
    assert json.loads(shown.stdout)["alert_levels"]["source"] == "settings"
