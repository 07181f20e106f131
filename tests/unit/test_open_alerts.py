"""Open alerts kept across a restart (agent.open_alerts): in the outbox file, in the transaction of the row that
raises or clears them; on start each goes back to its sensor's decider raised with its id, or is cleared with a
reason. Real outbox files, real pipelines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.assets import Asset, build_pipeline
from agent.bundled import bundled_model
from agent.counters import Counters
from agent.decide import CLEARED, Decisions
from agent.detectors import open_model
from agent.messages import Messages
from agent.open_alerts import expire, open_alerts, resume
from agent.outbox import Outbox
from agent.records import AlertEvent, Inference, Reading, Window
from agent.settings import Settings


def _event(state: str, alert_id: str = "a1", sensor: str = "pump-1", asset: str = "", reason: str = "",
           model: dict | None = None) -> AlertEvent:
    return AlertEvent(state=state, alert_id=alert_id, sensor=sensor, score=4.5, threshold=1.25, peak_score=4.5,
                      top=(("Current", 0.8),), window_start_ts=1583750000.0, window_end_ts=1583750010.0,
                      model=model or {"name": "pump-anomaly", "version": "1"}, asset=asset, reason=reason)


def _put(ob: Outbox, state: str, **kw) -> int:
    return ob.put(Messages("gw").one(_event(state, **kw)))


def test_a_stored_raise_is_open_in_the_file_until_its_clear_is_stored(tmp_path):
    ob = Outbox(tmp_path / "outbox.db", Counters())
    _put(ob, "raised")
    ob.close()
    ob = Outbox(tmp_path / "outbox.db", Counters())  # a restart: read back from the file
    [kept] = open_alerts(ob)
    assert (kept["alert_id"], kept["sensor"], kept["score"], kept["model"]) == ("a1", "pump-1", 4.5,
                                                                                {"name": "pump-anomaly", "version": "1"})
    _put(ob, "cleared")
    ob.close()
    ob = Outbox(tmp_path / "outbox.db", Counters())
    assert open_alerts(ob) == []
    ob.close()


def test_a_raise_the_outbox_dropped_is_not_open(tmp_path):
    ob = Outbox(tmp_path / "outbox.db", Counters(), max_rows=1)
    _put(ob, "raised", alert_id="old")
    _put(ob, "raised", alert_id="new")  # the outbox holds one row: the older raise goes (never sent)
    assert [a["alert_id"] for a in open_alerts(ob)] == ["new"]
    ob.close()
    too_big = Outbox(tmp_path / "small.db", Counters(), max_bytes=100)
    assert _put(too_big, "raised", alert_id="big") == 0
    assert open_alerts(too_big) == []
    too_big.close()


def test_the_open_alerts_read_for_the_offline_status_write_nothing(tmp_path):
    """At a clean stop the offline status names the open alerts (agent.status): read, leaving the outbox as it is
    (a full disk); what is left out there is left out as at the next start, which tidies it."""
    ob = Outbox(tmp_path / "outbox.db", Counters(), max_rows=1)
    _put(ob, "raised", alert_id="old")
    _put(ob, "raised", alert_id="new")  # the older raise dropped, never sent

    def kept() -> list[str]:
        return sorted(k for (k,) in ob._db.execute("SELECT key FROM meta WHERE key LIKE 'open_alert:%'"))

    assert kept() == ["open_alert:new", "open_alert:old"]
    assert [a["alert_id"] for a in open_alerts(ob, tidy=False)] == ["new"]
    assert kept() == ["open_alert:new", "open_alert:old"]
    assert [a["alert_id"] for a in open_alerts(ob)] == ["new"]
    assert kept() == ["open_alert:new"]
    ob.close()


def test_a_resumed_alert_is_not_raised_again_and_clears_under_its_id():
    d = Decisions(Counters())
    d.refresh(type("Spec", (), {"k": 2, "n": 3, "clear_ratio": 0.5, "recede_ratio": 0.0, "refractory": 1})(), 1.0,
              None)
    d.resume("s", "a1", 4.5)
    out = [d.judge(Inference(Window("s", t, t, np.zeros((1, 1))), score))[0] for t, score in
           enumerate([3.0, 3.0, 3.0, 0.1, 0.1])]
    assert out[:4] == [None] * 4
    assert (out[4].state, out[4].alert_id, out[4].peak_score) == (CLEARED, "a1", 4.5)


@pytest.fixture
def pipelines(tmp_path):
    """A real pipeline with teach-in off (nothing to wait for) and one that teaches in (none kept)."""
    def make(state, samples, idle_s=86400.0):
        s = Settings(source={"kind": "replay", "path": str(tmp_path / "x.csv")}, state_dir=state,
                     calibration={"samples": samples}, cleaning={"sensor_idle_s": idle_s})
        return build_pipeline(s, open_model(bundled_model("pump-anomaly")), Counters(), state_dir=state)
    return make


@pytest.mark.parametrize("samples, model_version, asset, reason", [
    (0, None, "", None),  # resumed
    (400, None, "", "recalibrated"),  # teach-in after the restart
    (0, "0.9", "", "model changed"),  # raised by another model
    (0, None, "gone", "asset removed"),
])
def test_each_open_alert_is_resumed_or_cleared_with_its_reason(tmp_path, pipelines, caplog, samples, model_version,
                                                               asset, reason):
    p = pipelines(tmp_path / "state", samples)
    ob = Outbox(tmp_path / "outbox.db", Counters())
    _put(ob, "raised", asset=asset, model={"name": p.model.name, "version": model_version or p.model.version})
    start = len(ob.pending(100))
    a = Asset("", Settings(state_dir=tmp_path / "state"), tmp_path / "state", Counters(), Messages("gw"), p)
    with caplog.at_level("INFO", logger="agent.open_alerts"):
        assert resume([a], ob) == (["a1"] if reason is None else [])
    assert ("1 resumed, 0 cleared" if reason is None else "0 resumed, 1 cleared") in caplog.text
    sent = [json.loads(r.payload) for r in ob.pending(100)][start:]
    if reason is None:
        assert p.decisions.machines["pump-1"].active_id == "a1" and sent == []
        assert [k["alert_id"] for k in open_alerts(ob)] == ["a1"]  # open until its clear is stored
    else:
        assert [(m["state"], m["alert_id"], m["reason"]) for m in sent] == [("cleared", "a1", reason)]
        assert "pump-1" not in p.decisions.machines and open_alerts(ob) == []
        assert sent[0]["sensor"] == "pump-1" and sent[0].get("asset", "") == asset
    ob.close()


def test_the_clear_payload_says_why():
    payload = Messages("gw").alert(_event("cleared", reason="recalibrated"))
    assert payload["reason"] == "recalibrated" and payload["peak_score"] == 4.5
    assert "reason" not in Messages("gw").alert(_event("cleared"))


@pytest.mark.parametrize("heard", [False, True])
def test_a_resumed_alert_whose_sensor_never_sends_again_is_cleared_after_sensor_idle(tmp_path, pipelines, heard):
    clock = [1000.0]
    p = pipelines(tmp_path / "state", 0, idle_s=100.0)
    p._clock = lambda: clock[0]
    ob = Outbox(tmp_path / "outbox.db", Counters())
    _put(ob, "raised", model={"name": p.model.name, "version": p.model.version})
    assert resume([Asset("", Settings(state_dir=tmp_path), tmp_path, Counters(), Messages("gw"), p)], ob) == ["a1"]
    if heard:  # one reading: the sensor is the decider's again, its alert clears when its fault ends
        p.process(Reading(clock[0], dict.fromkeys(p.model.sidecar.channels, 1.0), "pump-1"))
    clock[0] += 99.0
    assert expire(p) == []
    clock[0] += 1.0
    out = expire(p)
    if heard:
        assert out == [] and p.decisions.machines["pump-1"].active_id == "a1"
    else:
        assert [(e.state, e.alert_id, e.reason, e.sensor) for e in out] == [("cleared", "a1", "sensor idle", "pump-1")]
        assert "pump-1" not in p.decisions.machines
    assert expire(p) == []
    ob.close()


def test_of_two_open_alerts_on_one_sensor_the_later_is_resumed_the_earlier_cleared(tmp_path, pipelines):
    p = pipelines(tmp_path / "state", 0)
    ob = Outbox(tmp_path / "outbox.db", Counters())
    model = {"name": p.model.name, "version": p.model.version}
    _put(ob, "raised", alert_id="early", model=model)  # its clear never stored (dropped: the disk was full)
    _put(ob, "raised", alert_id="late", model=model)
    start = len(ob.pending(100))
    assert resume([Asset("", Settings(state_dir=tmp_path), tmp_path, Counters(), Messages("gw"), p)], ob) == ["late"]
    sent = [json.loads(r.payload) for r in ob.pending(100)][start:]
    assert [(m["state"], m["alert_id"], m["reason"]) for m in sent] == [("cleared", "early", "superseded")]
    assert p.decisions.machines["pump-1"].active_id == "late"
    assert [k["alert_id"] for k in open_alerts(ob)] == ["late"]
    ob.close()


def test_the_alerts_carried_over_are_those_resumed_or_left_open_with_their_asset_down(tmp_path, pipelines):
    """What resume returns is the status's ``open_alerts``: the monitor closes the earlier run's others."""
    p = pipelines(tmp_path / "state", 0)
    ob = Outbox(tmp_path / "outbox.db", Counters())
    model = {"name": p.model.name, "version": p.model.version}
    _put(ob, "raised", alert_id="up", asset="line", model=model)
    _put(ob, "raised", alert_id="down", asset="bench", model=model)  # its model refused at this start
    _put(ob, "raised", alert_id="gone", asset="old", model=model)  # asset removed: cleared now, not carried
    s = Settings(state_dir=tmp_path)
    assets = [Asset("line", s, tmp_path, Counters(), Messages("gw"), p),
              Asset("bench", s, tmp_path, Counters(), Messages("gw"), None, failure="model refused")]
    assert resume(assets, ob) == ["up", "down"]
    ob.close()
