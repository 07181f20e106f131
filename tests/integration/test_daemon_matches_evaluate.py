"""What ``edge-agent evaluate`` measures is what the daemon does: the real agent process (replay source, default
model, 400-reading teach-in, alerts over a private mosquitto) sends exactly the alert events that ``evaluate``
reports for the same SKAB recordings (pinned in tests/data/evaluate_pin.json). The independent evaluation of
issue 11 runs the daemon this way; the leave-one-family-out numbers come from ``evaluate``, so this is what makes
them an estimate of it."""

from __future__ import annotations

import json

import pytest

from agent.bundled import DEFAULT_MODEL
from tests.conftest import agent_env, run_agent, wait_for
from tests.evaluate_pin import FILES, FIXTURE, source

PINNED = json.loads(FIXTURE.read_text())[f"{DEFAULT_MODEL}/ai_edge_litert"]


def _expected(name: str) -> list[tuple[str, str]]:
    out = []
    for a in PINNED[name]["alerts"]:
        out.append(("raised", a["raise_window_end"]))
        if a["clear_window_end"] is not None:
            out.append(("cleared", a["clear_window_end"]))
    return out


def test_the_pin_has_raises_and_clears_to_compare():
    events = [e for name in FILES for e in _expected(name)]
    assert sum(1 for s, _ in events if s == "raised") >= 6 and any(s == "cleared" for s, _ in events)


@pytest.mark.parametrize("name", FILES)
def test_the_daemon_sends_the_alerts_evaluate_reports(name, tmp_path, live_broker, recorder):
    rec = recorder("edge/#")
    r = run_agent(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_SOURCE__PATH=source(name)))
    assert r.returncode == 0, r.stderr[-3000:]
    wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "offline", what="status offline")
    alerts = rec.on("alerts")
    assert [(a["state"], a["window_end"]) for a in alerts] == _expected(name)
    raised = [a for a in alerts if a["state"] == "raised"]
    for got, want in zip(raised, PINNED[name]["alerts"]):
        assert got["score"] == pytest.approx(want["score"], rel=1e-3)
        assert [c["channel"] for c in got["top_channels"]] == [c["channel"] for c in want["top_channels"]]


def test_a_teach_in_given_as_a_duration_is_the_daemons_in_evaluate(tmp_path, live_broker, recorder):
    """A sensor every 5 min, a teach-in of one day (EDGE_AGENT_CALIBRATION__DURATION): the daemon and ``evaluate``
    (the same setting) end the teach-in at the same reading and send the same alerts (a 10-degree fall on day 3)."""
    from agent.evaluate import Evaluation
    from tests.unit.test_evaluate_modes import _write_slow

    f = tmp_path / "slow.csv"
    _write_slow(f)
    res = Evaluation.create({"calibration.duration": 86400.0}).run(f)
    assert res.first_row == res.run.teach_in_rows == 289  # one day of 5-minute readings, both ends included
    want = []
    for a in res.run.alerts:
        want.append(("raised", a.raise_window_end))
        if a.clear_window_end is not None:
            want.append(("cleared", a.clear_window_end))
    assert [s for s, _ in want] == ["raised", "cleared"]
    rec = recorder("edge/#")
    r = run_agent(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_SOURCE__PATH=str(f),
                            EDGE_AGENT_CALIBRATION__DURATION="1d"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "teach-in done after 289 readings" in r.stderr
    wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "offline", what="status offline")
    assert [(a["state"], a["window_end"]) for a in rec.on("alerts")] == want
