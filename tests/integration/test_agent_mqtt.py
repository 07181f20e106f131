"""The agent as a real process against a private mosquitto, on the bundled model and demo recording."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime

from agent.bundled import DEFAULT_MODEL, demo_recording_path
from tests.conftest import agent_env, run_agent, wait_for

ALERT_FIELDS = {"id", "alert_id", "seq", "device_id", "state", "severity", "score", "threshold", "model",
                "window_start", "window_end", "sent_at", "top_channels", "margin"}


def _parse_iso(text: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_demo_recording_raises_and_clears_alerts_and_ends_offline(tmp_path, live_broker, recorder):
    rec = recorder("edge/#")
    r = run_agent(agent_env(tmp_path / "state", live_broker.port))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "offline", what="status offline")

    alerts = rec.on("alerts")
    states = [a["state"] for a in alerts]
    assert "raised" in states and "cleared" in states, states
    for a in alerts:
        assert ALERT_FIELDS <= set(a), ALERT_FIELDS - set(a)
        assert a["device_id"] == "test-gw"
        assert a["model"]["name"] == DEFAULT_MODEL and a["model"]["version"]
        assert _parse_iso(a["window_start"]) <= _parse_iso(a["window_end"])
        _parse_iso(a["sent_at"])
        assert a["score"] >= 0 and a["threshold"] > 0
    raised = [a for a in alerts if a["state"] == "raised"]
    assert all(a["score"] > a["threshold"] for a in raised)
    # every clear closes an alert that was raised before it
    for c in (a for a in alerts if a["state"] == "cleared"):
        assert c["alert_id"] in {a["alert_id"] for a in raised}
    assert len({a["id"] for a in alerts}) == len(alerts)
    assert [a["seq"] for a in alerts] == sorted(a["seq"] for a in alerts)

    summaries = rec.on("summary")
    assert summaries and summaries[-1]["final"] is True
    total = sum(s["readings"] for s in summaries)
    rows = len(demo_recording_path().read_text().splitlines()) - 1
    assert total == rows  # every row of the recording accepted, none lost or counted twice
    assert sum(s["alerts_raised"] for s in summaries) == len(raised)
    for s in summaries:
        assert {"period_start", "period_end", "readings", "rejected", "windows", "channels"} <= set(s)
        assert set(s["channels"]) >= {"Current", "Pressure"}

    retained = [p for t, p, ret in rec.messages if t.endswith("/status")]
    assert retained[-1]["state"] == "offline"
    # the log tells a human what happened
    assert "ALERT raised" in r.stderr and "SUMMARY" in r.stderr
    # and the outbox is empty afterwards
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_broker_outage_loses_nothing(tmp_path, live_broker, recorder):
    state = tmp_path / "state"
    live_broker.stop()
    try:
        r = run_agent(agent_env(state, live_broker.port, EDGE_AGENT_DRAIN_TIMEOUT_S="1"))
        assert r.returncode == 0, r.stderr
        # said once, not once per message
        assert r.stderr.count("alerts and summaries stay in the outbox") == 1, r.stderr
        db = sqlite3.connect(state / "outbox.db")
        rows = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE kind='alert' ORDER BY id")]
        db.close()
        assert rows, "the first run produced no alert to keep"
        first_ids = [a["id"] for a in rows]
    finally:
        live_broker.start()
    rec = recorder("edge/#")
    r2 = run_agent(agent_env(state, live_broker.port))
    assert r2.returncode == 0, r2.stderr
    wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "offline", what="status offline")
    got = [a["id"] for a in rec.on("alerts")]
    assert all(i in got for i in first_ids), (first_ids, got)
    # rows from the earlier run go out first, in their order
    assert got[: len(first_ids)] == first_ids
