"""``edge-agent monitor`` without a broker: the fleet state machine and the table rendering as pure functions; a
gateway with assets (a row per asset); the typed payloads the monitor reads."""

from __future__ import annotations

import json

import pytest

from agent.messages import Messages, topic_suffix
from agent.monitor import Fleet, format_age, render_header, render_table, snapshot_json
from agent.parse import iso
from agent.payloads import AlertMessage, AssetStatus, PayloadError, StatsPayload, StatusPayload
from agent.records import AlertEvent, PipelineSnapshot
from agent.status import _machine  # the status's own builder of a machine's part (an asset's row)

T0 = 1_800_000_000.0
MODEL = {"name": "pump-anomaly", "version": "1.0.0", "sha256": "ab", "runtime": "ai_edge_litert"}


def status(dev: str, state: str = "online", ts: float = T0, **extra) -> bytes:
    body = {"state": state, "ts": iso(ts), "device_id": dev, "agent_version": "0.1.0", "started_at": iso(T0 - 100),
            "model": MODEL, "source": {"kind": "replay", "state": "connected"}, "threshold": 1.1, **extra}
    return json.dumps(body).encode()


def stats(dev: str, state: str = "online", depth: int = 0, ratio: float | None = 0.012, dropped=None) -> bytes:
    return json.dumps({"ts": iso(T0), "device_id": dev, "state": state, "outbox": {"depth": depth, "dropped": dropped or {}},
                       "bandwidth_ratio": ratio, "source": {"kind": "replay", "state": "connected"}}).encode()


def alert(dev: str, mid: str, aid: str, state: str, created: float = T0) -> bytes:
    return json.dumps({"id": mid, "alert_id": aid, "seq": 1, "device_id": dev, "state": state, "severity": "warning",
                       "sensor": "replay", "score": 2.0, "threshold": 1.1, "created_at": iso(created)}).encode()


def by_id(fleet: Fleet, now: float) -> dict[str, dict]:
    return {r["device_id"]: r for r in fleet.rows(now)}


def test_topics_outside_the_prefix_or_kinds_are_ignored():
    f = Fleet("edge")
    assert not f.handle("other/gw/status", status("gw"), now=T0)
    assert not f.handle("edge/gw/summary", b"{}", now=T0)
    assert not f.handle("edge/gw/cmd/x", b"{}", now=T0)
    assert not f.handle("edge/gw/status", b"not json", now=T0)
    assert f.devices == {} and f.bad_messages == 1
    f2 = Fleet("site/a")  # a prefix with levels
    assert f2.handle("site/a/gw-1/stats", stats("gw-1"), now=T0)
    assert list(f2.devices) == ["gw-1"]


def test_open_alerts_raised_add_cleared_remove_duplicates_ignored():
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised"), now=T0 + 1)
    assert not f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised"), now=T0 + 2)  # at-least-once resend
    f.handle("edge/gw/alerts", alert("gw", "m2", "B", "raised"), now=T0 + 3)
    assert by_id(f, T0 + 3)["gw"]["open_alerts"] == 2
    f.handle("edge/gw/alerts", alert("gw", "m3", "A", "cleared"), now=T0 + 4)
    assert not f.handle("edge/gw/alerts", alert("gw", "m3", "A", "cleared"), now=T0 + 5)
    row = by_id(f, T0 + 5)["gw"]
    assert row["open_alerts"] == 1 and row["open_alert_ids"] == ["B"]
    assert row["alerts_seen"] == {"raised": 2, "cleared": 1} and f.duplicates == 2
    # a clear for an alert raised before the monitor started: nothing to remove, never negative
    f.handle("edge/gw/alerts", alert("gw", "m4", "OLD", "cleared"), now=T0 + 6)
    assert by_id(f, T0 + 6)["gw"]["open_alerts"] == 1
    # a raise arriving after its own clear stays closed
    f.handle("edge/gw/alerts", alert("gw", "m5", "C", "cleared"), now=T0 + 7)
    f.handle("edge/gw/alerts", alert("gw", "m6", "C", "raised"), now=T0 + 8)
    assert by_id(f, T0 + 8)["gw"]["open_alert_ids"] == ["B"]


def test_a_restarted_agent_keeps_the_alerts_it_carries_open_until_their_clear_and_closes_the_others():
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised", created=T0 + 1), now=T0 + 1)
    f.handle("edge/gw/alerts", alert("gw", "m2", "B", "raised", created=T0 + 2), now=T0 + 2)
    f.handle("edge/gw/status", status("gw", started_at=iso(T0 + 50), open_alerts=["A"]), now=T0 + 52)
    # a run's own alerts come after its status (the uplink publishes it on connect, before the outbox drains)
    f.handle("edge/gw/alerts", alert("gw", "m3", "N", "raised", created=T0 + 51), now=T0 + 53)
    # A resumed by the new run (agent/open_alerts.py); B not carried (cleared at the start, or lost): closed
    assert by_id(f, T0 + 52)["gw"]["open_alert_ids"] == ["A", "N"]
    f.handle("edge/gw/alerts", alert("gw", "m4", "A", "cleared", created=T0 + 60), now=T0 + 60)
    assert by_id(f, T0 + 60)["gw"]["open_alert_ids"] == ["N"]


def test_a_restart_closes_the_earlier_runs_alerts_by_the_order_of_arrival_not_by_the_gateways_clock():
    """A gateway without RTC boots after a power loss with its clock an hour behind: the new run's ``started_at``
    is earlier than the last run's alerts. They are closed all the same (not carried), and the new run's own
    alerts, created "before" the old run's by that clock, stay open; at a later restart they are closed when not
    carried whatever the clocks say, kept when carried."""
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw", started_at=iso(T0 - 100)), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "OLD", "raised", created=T0 + 1), now=T0 + 1)
    slow = T0 - 3600  # run 2: the clock an hour behind
    f.handle("edge/gw/status", status("gw", ts=slow, started_at=iso(slow), open_alerts=[]), now=T0 + 60)
    assert by_id(f, T0 + 60)["gw"]["open_alert_ids"] == []  # OLD was created after started_at by the clocks: a ghost
    f.handle("edge/gw/alerts", alert("gw", "m2", "SLOW1", "raised", created=slow + 5), now=T0 + 65)
    f.handle("edge/gw/alerts", alert("gw", "m3", "SLOW2", "raised", created=slow + 6), now=T0 + 66)
    assert by_id(f, T0 + 66)["gw"]["open_alert_ids"] == ["SLOW1", "SLOW2"]
    f.handle("edge/gw/status", status("gw", ts=slow + 10, started_at=iso(slow + 10), open_alerts=[]), now=T0 + 67)
    assert by_id(f, T0 + 67)["gw"]["open_alert_ids"] == []  # a run after: its started_at is later by every clock
    f.handle("edge/gw/alerts", alert("gw", "m4", "S3", "raised", created=slow + 12), now=T0 + 68)
    f.handle("edge/gw/alerts", alert("gw", "m5", "S4", "raised", created=slow + 13), now=T0 + 69)
    f.handle("edge/gw/status", status("gw", ts=T0 + 70, started_at=iso(T0 - 7200), open_alerts=["S4"]), now=T0 + 70)
    assert by_id(f, T0 + 70)["gw"]["open_alert_ids"] == ["S4"]  # a started_at earlier than S3's creation: closed


@pytest.mark.parametrize("carried", [None, []], ids=["older-agent", "none-carried"])
def test_a_restart_that_carries_no_alert_closes_the_alerts_of_the_previous_run(carried):
    """An outbox without open alerts kept (upgraded from a version before them, set aside as corrupt, a wiped state
    directory) carries none: ``open_alerts: []``; an older agent says nothing and carries none either."""
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised", created=T0 + 1), now=T0 + 1)
    extra = {} if carried is None else {"open_alerts": carried}
    f.handle("edge/gw/status", status("gw", ts=T0 + 50, started_at=iso(T0 + 50), **extra), now=T0 + 50)
    assert by_id(f, T0 + 50)["gw"]["open_alerts"] == 0
    assert StatusPayload.from_payload(json.loads(status("gw", **extra))).open_alerts == (
        None if carried is None else ())


def offline(dev: str, ts: float, **extra) -> bytes:
    return json.dumps({"state": "offline", "device_id": dev, "ts": iso(ts), **extra}).encode()


def test_a_clean_stop_closes_the_alerts_of_its_run_that_its_offline_status_does_not_name():
    """A monitor that was away when an alert's clear came, and is back only after the agent stopped, is given the
    retained offline status: at a clean stop it names the run and every alert still open (the next start resumes
    them); the others are closed (their clear is stored: sent before it, or at the next start)."""
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised"), now=T0 + 1)
    f.handle("edge/gw/alerts", alert("gw", "m2", "B", "raised"), now=T0 + 2)
    f.handle("edge/gw/status", offline("gw", T0 + 9, reason="shutdown", started_at=iso(T0 - 100), open_alerts=["B"]),
             retained=True, now=T0 + 20)
    row = by_id(f, T0 + 20)["gw"]
    assert row["state"] == "offline" and row["open_alert_ids"] == ["B"] and row["started_at"] == iso(T0 - 100)
    # the next run carries B over: kept open until its clear
    f.handle("edge/gw/status", status("gw", ts=T0 + 30, started_at=iso(T0 + 30), open_alerts=["B"]), now=T0 + 30)
    assert by_id(f, T0 + 30)["gw"]["open_alert_ids"] == ["B"]


def test_a_clean_stop_is_taken_from_a_gateway_whose_clock_is_behind():
    """A gateway without a real-time clock, 10 minutes behind: its retained clean-stop status carries a ``ts``
    older than the monitor's receipt of the run's live status. It was thrown away as an old retained copy (the
    device shown online, both alerts open); a run's clean stop is its last status, whatever its clock says."""
    f = Fleet("edge")
    behind = T0 - 600
    f.handle("edge/gw/status", status("gw", ts=behind, started_at=iso(behind - 100)), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised", created=behind + 1), now=T0 + 1)
    f.handle("edge/gw/alerts", alert("gw", "m2", "B", "raised", created=behind + 2), now=T0 + 2)
    f.handle("edge/gw/status", offline("gw", behind + 9, reason="shutdown", started_at=iso(behind - 100),
                                       open_alerts=["B"]), retained=True, now=T0 + 300)
    row = by_id(f, T0 + 300)["gw"]
    assert row["state"] == "offline" and row["open_alert_ids"] == ["B"]


def test_a_clean_stop_of_a_run_the_monitor_did_not_see_start_counts_as_that_runs_start():
    """The monitor missed a restart (away for it) and is back after that later run stopped cleanly: the offline
    status names another ``started_at`` than the one known: the earlier run's alerts it does not name are closed,
    as a new run's status closes them, and its run becomes the device's."""
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised"), now=T0 + 1)
    f.handle("edge/gw/alerts", alert("gw", "m2", "B", "raised"), now=T0 + 2)
    f.handle("edge/gw/status", offline("gw", T0 + 90, reason="shutdown", started_at=iso(T0 + 50), open_alerts=["A"]),
             retained=True, now=T0 + 95)
    row = by_id(f, T0 + 95)["gw"]
    assert row["open_alert_ids"] == ["A"] and row["started_at"] == iso(T0 + 50)


@pytest.mark.parametrize("extra", [{"reason": "shutdown"}, {"reason": "connection lost", "started_at": iso(T0 - 500)},
                                   {"reason": "shutdown", "started_at": iso(T0 - 100), "open_alerts": ["B"]}],
                         ids=["older-agent-stop", "last-will", "clean-stop"])
def test_only_an_offline_status_that_names_the_open_alerts_closes_any(extra):
    """An older agent's offline status names neither the run nor the open alerts, and the last will (set at start)
    names only its run, here an earlier one's will the broker published late: the monitor keeps the alerts it has
    open and the run it knows, as before (their clear, or the next run's status, closes them). Only a clean stop's
    names the alerts still open, and closes the others."""
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised"), now=T0 + 1)
    f.handle("edge/gw/alerts", alert("gw", "m2", "B", "raised"), now=T0 + 2)
    f.handle("edge/gw/status", offline("gw", T0 + 5, **extra), now=T0 + 5)
    row = by_id(f, T0 + 5)["gw"]
    assert row["state"] == "offline" and row["started_at"] == iso(T0 - 100)
    assert row["open_alert_ids"] == (["B"] if "open_alerts" in extra else ["A", "B"])


def test_state_last_seen_model_outbox_ratio():
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw", "calibrating", calibration={"collected": 5, "samples": 10, "progress": 0.5}), now=T0)
    f.handle("edge/gw/stats", stats("gw", "calibrating", depth=7, ratio=0.0523, dropped={"summary": 2}), now=T0 + 2)
    row = by_id(f, T0 + 5)["gw"]
    assert row["state"] == "calibrating" and row["age_s"] == 3.0 and row["last_seen"] == iso(T0 + 2)
    assert row["model"] == {"name": "pump-anomaly", "version": "1.0.0"}
    assert row["outbox_depth"] == 7 and row["outbox_dropped"] == 2 and row["bandwidth_ratio"] == 0.0523
    # the last will carries no model: the one known is kept; the state is the newest message's
    f.handle("edge/gw/status", json.dumps({"state": "offline", "device_id": "gw", "ts": iso(T0), "reason": "connection lost"}), now=T0 + 9)
    row = by_id(f, T0 + 10)["gw"]
    assert row["state"] == "offline" and row["reason"] == "connection lost" and row["model"]["name"] == "pump-anomaly"
    assert not row["stale"]


def test_retained_status_counts_from_its_own_ts():
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw", "offline", ts=T0 - 3600), retained=True, now=T0)
    row = by_id(f, T0)["gw"]
    assert row["age_s"] == 3600.0 and row["state"] == "offline"
    assert f.complete()  # an offline device sends no stats: it does not hold up --once


def test_stale_after_three_usual_intervals():
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    for i in range(4):
        f.handle("edge/gw/stats", stats("gw"), now=T0 + 10 * i)  # every 10 s
    assert by_id(f, T0 + 30 + 29)["gw"]["stale"] is False
    row = by_id(f, T0 + 30 + 31)["gw"]
    assert row["stale"] is True and row["stats_interval_s"] == 10.0
    assert "(stale)" in render_table([row])[1]


def test_complete_needs_status_and_stats():
    f = Fleet("edge")
    assert not f.complete()
    f.handle("edge/a/stats", stats("a"), now=T0)
    assert not f.complete()
    f.handle("edge/a/status", status("a"), now=T0)
    assert f.complete()
    f.handle("edge/b/status", status("b"), now=T0)
    assert not f.complete()


def sample_rows() -> list[dict]:
    f = Fleet("edge")
    f.handle("edge/gw-ok/status", status("gw-ok"), now=T0)
    f.handle("edge/gw-ok/stats", stats("gw-ok", ratio=0.0123456), now=T0)
    f.handle("edge/gw-bad/status", status("gw-bad", "degraded", reasons=["source disconnected", "outbox dropping"]), now=T0)
    f.handle("edge/gw-bad/stats", stats("gw-bad", "degraded", depth=42, dropped={"summary": 3}), now=T0)
    f.handle("edge/gw-dead/status", json.dumps({"state": "offline", "device_id": "gw-dead", "ts": iso(T0), "reason": "connection lost"}), now=T0)
    f.handle("edge/gw-ok/alerts", alert("gw-ok", "m1", "A", "raised"), now=T0 + 1)
    return f.rows(T0 + 3)


def test_rows_sorted_offline_degraded_first():
    assert [r["device_id"] for r in sample_rows()] == ["gw-dead", "gw-bad", "gw-ok"]


def test_render_table_columns_and_values():
    lines = render_table(sample_rows(), width=200)
    assert lines[0].split()[:3] == ["DEVICE", "STATE", "LAST"]
    for col in ("DEVICE", "STATE", "LAST SEEN", "MODEL", "ALERTS", "OUTBOX", "BW RATIO", "NOTE"):
        assert col in lines[0]
    dead, bad, ok = lines[1:]
    assert dead.startswith("gw-dead") and "offline" in dead and "connection lost" in dead and "3s ago" in dead
    assert "degraded" in bad and "42 (3 dropped)" in bad and "source disconnected" in bad
    assert "online" in ok and "pump-anomaly 1.0.0" in ok and "0.0123" in ok and "2s ago" in ok
    # columns are aligned: every row has its STATE where the header has it
    at = lines[0].index("STATE")
    assert all(line[at:].split()[0] in ("offline", "degraded", "online") for line in lines[1:])
    # ALERTS column: the open count
    at = lines[0].index("ALERTS")
    assert [line[at:].split()[0] for line in lines[1:]] == ["0", "0", "1"]


def test_render_table_fits_narrow_terminals():
    rows = sample_rows()
    rows[0]["device_id"] = "a-very-long-gateway-name-in-hall-7-line-3"
    for width in (120, 80, 60, 40, 20):
        lines = render_table(rows, width=width, ellipsis="~")
        assert all(len(line) <= width for line in lines), (width, lines)
    lines = render_table(rows, width=80, ellipsis="~")
    assert "NOTE" not in lines[0] or len(lines[0]) <= 80
    assert "a-very-long" in lines[1] and "~" in lines[1]  # truncated, marked


def test_render_table_colour_keeps_alignment():
    rows = sample_rows()
    plain, coloured = render_table(rows, 200), render_table(rows, 200, colour=True)
    strip = lambda s: __import__("re").sub(r"\x1b\[[0-9;]*m", "", s)  # noqa: E731
    assert [strip(line) for line in coloured] == plain
    assert "\x1b[31moffline" in coloured[1]


def test_empty_fleet_renders_the_header_only():
    assert len(render_table([], 80)) == 1


def test_format_age_and_json_snapshot():
    assert [format_age(x) for x in (None, 0.4, 59, 61, 7200, 3 * 86400)] == ["-", "0s ago", "59s ago", "1m ago", "2h ago", "3d ago"]
    doc = json.loads(snapshot_json(sample_rows(), T0, prefix="edge"))
    assert doc["prefix"] == "edge" and doc["ts"] == iso(T0) and len(doc["devices"]) == 3


def advice(mid: str, state: str = "advised", actions=(), changes=None) -> bytes:
    return json.dumps({
        "id": mid, "alert_id": "A", "state": state, "probability": 0.996, "advised_probability": 0.004,
        "changes": changes if changes is not None else [{"channel": "Rotational speed [rpm]", "from": 1350, "to": 1390}],
        "actions": list(actions), "available_actions": [{"name": "tool change", "set": {"Tool wear [min]": 0}}],
        "created_at": iso(T0),
    }).encode()


def test_last_advice_is_shown_per_device():
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/stats", stats("gw"), now=T0)
    assert by_id(f, T0)["gw"]["last_advice"] is None
    assert f.handle("edge/gw/advice", advice("x1"), now=T0 + 1)
    assert not f.handle("edge/gw/advice", advice("x1"), now=T0 + 2)  # a resend (at least once) is a duplicate
    lines = render_table(f.rows(T0 + 2), width=200)
    at = lines[0].index("LAST ADVICE")
    assert lines[1][at:].startswith("Rotational speed [rpm] 1350->1390")
    tool = [{"channel": "Tool wear [min]", "from": 217, "to": 0}, {"channel": "Torque [Nm]", "from": 62, "to": 57.5}]
    f.handle("edge/gw/advice", advice("x2", actions=["tool change"], changes=tool), now=T0 + 3)
    row = by_id(f, T0 + 3)["gw"]
    assert [c["channel"] for c in row["last_advice"]["changes"]] == ["Torque [Nm]"]  # the action names itself
    assert "Torque [Nm] 62->57.5; tool change" in render_table([row], width=200)[1]
    f.handle("edge/gw/advice", advice("x3", state="no_advice", changes=[]), now=T0 + 4)
    assert "none within bounds" in render_table(f.rows(T0 + 4), width=200)[1]
    assert not f.handle("edge/gw/advice", b'{"id": "x4", "state": "maybe"}', now=T0 + 5)


# ------------------------------------------------------------------------------------------------ gateways with assets

GENERIC = {"name": "generic", "version": "1.0.0", "sha256": "cd"}


def asset_status(dev: str, ts: float = T0, started: float = T0 - 100) -> bytes:
    """A retained status with assets, built like agent.status.Board.status builds it."""
    teaching = PipelineSnapshot(calibrating=True, calibration_collected=120, calibration_samples=400, model=GENERIC)
    scoring = PipelineSnapshot(threshold=6.0, model=GENERIC, calibration_warning=None)
    assets = {
        "pump-1": _machine({"state": "online", "model": dict(GENERIC)}, scoring, []),
        "pump-2": _machine({"state": "degraded", "model": dict(GENERIC)}, scoring,
                           ["modbus device pump2-meter (unit 2) on line1 not answering"]),
        "bench": _machine({"state": "calibrating", "model": dict(GENERIC)}, teaching, []),
        "comp": {"state": "degraded", "reasons": ["model refused: no such file"]},  # its pipeline was never built
    }
    return json.dumps({"state": "degraded", "ts": iso(ts), "device_id": dev, "agent_version": "0.1.0",
                       "started_at": iso(started), "sources": [{"name": "modbus:line1", "state": "connected",
                                                                "assets": ["pump-1", "pump-2"]}],
                       "config_digest": "x", "reasons": ["asset pump-2: modbus device … not answering"],
                       "assets": assets, "some_future_field": {"ignored": True}}).encode()


def asset_stats(dev: str) -> bytes:
    row = {"state": "online", "windows": 500, "alerts": {"raised": 3, "cleared": 2, "suppressed": 0}, "rejected": {},
           "threshold": 6.0, "sensors": 1, "inference_ms": {"p50": 0.1, "p99": 0.2}}
    return json.dumps({"ts": iso(T0), "device_id": dev, "state": "degraded", "outbox": {"depth": 0, "dropped": {}},
                       "bandwidth_ratio": 0.02, "sources": [{"name": "modbus:line1", "state": "connected"}],
                       "assets": {"pump-1": row, "pump-2": {**row, "state": "degraded"},
                                  "bench": {**row, "state": "calibrating", "windows": 0,
                                            "alerts": {"raised": 0, "cleared": 0, "suppressed": 0}},
                                  "comp": {"state": "degraded", "windows": 0, "alerts": {}, "rejected": {}}}}).encode()


def asset_alert(dev: str, asset: str, aid: str, state: str, score: float = 6.5,
                reason: str = "") -> tuple[str, bytes]:
    """An alert message as the agent makes it (agent.messages), on the asset's topic."""
    e = AlertEvent(state=state, alert_id=aid, sensor="pump1-meter", score=score, threshold=6.0, peak_score=score,
                   top=(("Current", 0.75), ("Pressure", 0.25)), window_start_ts=T0 - 10, window_end_ts=T0,
                   model={"name": "generic", "version": "1.0.0"}, asset=asset, reason=reason)
    return f"edge/{dev}/{topic_suffix('alerts', asset)}", json.dumps(Messages(dev).alert(e)).encode()


def assets_fleet() -> Fleet:
    f = Fleet("edge")
    f.handle("edge/gw-line/status", asset_status("gw-line"), now=T0)
    f.handle("edge/gw-line/stats", asset_stats("gw-line"), now=T0)
    f.handle("edge/gw-solo/status", status("gw-solo"), now=T0)
    f.handle("edge/gw-solo/stats", stats("gw-solo"), now=T0)
    for topic, body in (asset_alert("gw-line", "pump-1", "A1", "raised"), asset_alert("gw-line", "pump-1", "A2", "raised"),
                        asset_alert("gw-line", "pump-1", "A1", "cleared", 3.0), asset_alert("gw-line", "pump-2", "B1", "raised")):
        assert f.handle(topic, body, now=T0 + 1)
    return f


def test_asset_rows_under_their_gateway_with_state_model_and_alerts():
    rows = {r["device_id"]: r for r in assets_fleet().rows(T0 + 3)}
    line, solo = rows["gw-line"], rows["gw-solo"]
    assert "assets" not in solo  # a gateway without assets: the row of before
    assert line["open_alerts"] == 2 and line["open_alert_ids"] == ["A2", "B1"]  # the gateway counts all its assets'
    assets = {a["asset_id"]: a for a in line["assets"]}
    assert [a["asset_id"] for a in line["assets"]] == ["comp", "pump-2", "bench", "pump-1"]  # most severe first
    p1, p2, bench, comp = assets["pump-1"], assets["pump-2"], assets["bench"], assets["comp"]
    assert p1["state"] == "online" and p1["model"] == {"name": "generic", "version": "1.0.0"} and p1["threshold"] == 6.0
    assert p1["open_alert_ids"] == ["A2"] and p1["alerts_seen"] == {"raised": 2, "cleared": 1}
    assert p1["last_alert"]["state"] == "cleared" and p1["last_alert"]["alert_id"] == "A1"
    assert p1["last_alert"]["score"] == 3.0 and p1["last_alert"]["age_s"] == 2.0
    assert p1["alerts"] == {"raised": 3, "cleared": 2, "suppressed": 0} and p1["windows"] == 500  # from the stats
    assert p2["state"] == "degraded" and p2["reasons"] == ["modbus device pump2-meter (unit 2) on line1 not answering"]
    assert p2["open_alert_ids"] == ["B1"]
    assert bench["state"] == "calibrating" and bench["calibration"]["samples"] == 400 and bench["last_alert"] is None
    assert comp["state"] == "degraded" and comp["model"] is None and comp["reasons"] == ["model refused: no such file"]


def test_asset_rows_render_indented_under_their_gateway():
    f = assets_fleet()
    lines = render_table(f.rows(T0 + 3), width=220)
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["gw-line", "comp", "pump-2", "bench", "pump-1", "gw-solo"]
    by = {line.split()[0]: line for line in lines[1:]}
    assert by["gw-line"].startswith("gw-line") and "4 assets" in by["gw-line"]  # the models are on the asset rows
    for a in ("comp", "pump-2", "bench", "pump-1"):
        assert by[a].startswith("  " + a)  # indented under the gateway
    at = {c: lines[0].index(c) for c in ("STATE", "MODEL", "ALERTS", "NOTE")}
    cell = lambda line, col: line[at[col]:].split("  ")[0]  # noqa: E731
    assert cell(by["pump-1"], "STATE") == "online" and cell(by["pump-1"], "MODEL") == "generic 1.0.0"
    assert cell(by["pump-1"], "ALERTS") == "1" and cell(by["pump-2"], "ALERTS") == "1" and cell(by["gw-line"], "ALERTS") == "2"
    assert by["pump-1"][at["NOTE"]:] == "scoring; last alert cleared 2s ago; 3 raised since the agent started"
    assert by["bench"][at["NOTE"]:] == "teach-in running (400 readings)"
    assert by["pump-2"][at["NOTE"]:].startswith("modbus device pump2-meter (unit 2) on line1 not answering; last alert raised")
    assert cell(by["comp"], "MODEL") == "-" and "model refused" in by["comp"]
    assert render_header(f.rows(T0 + 3), T0, "b:1 edge/+", True)[1] == "2 devices: 1 degraded, 1 online; 4 assets; 2 open alerts"
    for width in (100, 60, 30):  # narrow terminals: every line still fits
        assert all(len(line) <= width for line in render_table(f.rows(T0 + 3), width=width, ellipsis="~"))


def test_asset_alerts_are_deduplicated_and_a_last_will_keeps_the_asset_rows():
    f = assets_fleet()
    topic, body = asset_alert("gw-line", "pump-1", "A3", "raised")
    assert f.handle(topic, body, now=T0 + 4) and not f.handle(topic, body, now=T0 + 5)  # a resend
    assert not f.handle("edge/gw-line/asset/pump-1/summary", b"{}", now=T0 + 5)  # not a kind the monitor reads
    assert not f.handle("edge/gw-line/asset//alerts", body, now=T0 + 5)
    assert not f.handle("edge/gw-line/asset/pump-1/alerts", b'{"alert_id": "X", "state": "maybe"}', now=T0 + 5)
    f.handle("edge/gw-line/status", json.dumps({"state": "offline", "device_id": "gw-line", "ts": iso(T0 + 6),
                                                 "reason": "connection lost"}), now=T0 + 6)
    row = f.rows(T0 + 7)[0]
    assert row["device_id"] == "gw-line" and row["state"] == "offline"
    assert {a["asset_id"]: a["state"] for a in row["assets"]} == dict.fromkeys(("comp", "pump-2", "bench", "pump-1"), "offline")
    assert {a["asset_id"]: a["model"] for a in row["assets"]}["pump-1"] == {"name": "generic", "version": "1.0.0"}


@pytest.mark.parametrize("extra", [{"open_alerts": []}, {}], ids=["this-agent", "older-agent"])
def test_a_restart_without_assets_drops_the_asset_rows_and_their_alerts_close(extra):
    f = assets_fleet()
    # the agent clears them at the start with reason "asset removed" (agent/open_alerts.py): it carries none over
    f.handle("edge/gw-line/status", status("gw-line", ts=T0 + 50, started_at=iso(T0 + 50), **extra), now=T0 + 50)
    row = by_id(f, T0 + 51)["gw-line"]
    assert "assets" not in row and row["open_alerts"] == 0 and row["model"]["name"] == "pump-anomaly"
    for topic, body in (asset_alert("gw-line", "pump-1", "A2", "cleared", 3.0, reason="asset removed"),
                        asset_alert("gw-line", "pump-2", "B1", "cleared", 3.0, reason="asset removed")):
        assert f.handle(topic, body, now=T0 + 52)
    row = by_id(f, T0 + 53)["gw-line"]
    assert row["open_alerts"] == 0 and row["alerts_seen"]["cleared"] == 3, row
    assert "assets" not in row, row["assets"]  # the clears of removed assets bring back no asset row


def test_a_clear_with_a_reason_shows_it_in_the_last_alert():
    f = assets_fleet()
    assert f.handle(*asset_alert("gw-line", "pump-2", "B1", "cleared", 3.0, reason="recalibrated"), now=T0 + 2)
    p2 = {a["asset_id"]: a for a in by_id(f, T0 + 4)["gw-line"]["assets"]}["pump-2"]
    assert p2["last_alert"]["reason"] == "recalibrated" and p2["open_alerts"] == 0
    by = {line.split()[0]: line for line in render_table(f.rows(T0 + 4), width=250)[1:]}
    assert "last alert cleared (recalibrated) 2s ago" in by["pump-2"]
    p1 = {a["asset_id"]: a for a in by_id(f, T0 + 4)["gw-line"]["assets"]}["pump-1"]
    assert p1["last_alert"]["reason"] is None  # a clear by the alert's own end
    # a clear for an asset of the status that no alert named yet makes its last alert
    assert f.handle(*asset_alert("gw-line", "bench", "C1", "cleared", 3.0), now=T0 + 5)
    bench = {a["asset_id"]: a for a in by_id(f, T0 + 6)["gw-line"]["assets"]}["bench"]
    assert bench["last_alert"]["alert_id"] == "C1"


def test_asset_advice_goes_to_its_asset_row():
    f = assets_fleet()
    assert f.handle("edge/gw-line/asset/pump-1/advice", advice("adv1"), now=T0 + 2)
    row = by_id(f, T0 + 3)["gw-line"]
    assert row["last_advice"] is None
    assert {a["asset_id"]: a for a in row["assets"]}["pump-1"]["last_advice"]["state"] == "advised"
    by = {line.split()[0]: line for line in render_table(f.rows(T0 + 3), width=250)[1:]}
    assert "Rotational speed [rpm] 1350->1390" in by["pump-1"] and "Rotational speed" not in by["gw-line"]


def test_gateway_without_assets_renders_exactly_as_before_assets():
    """The table of sample_rows() as the monitor printed it before asset rows existed (commit e8ddfd3)."""
    assert render_table(sample_rows(), width=200) == [
        "DEVICE   STATE     LAST SEEN  MODEL               ALERTS  OUTBOX          BW RATIO  LAST ADVICE  NOTE",
        "gw-dead  offline   3s ago     -                   0       -               -         -            connection lost",
        "gw-bad   degraded  3s ago     pump-anomaly 1.0.0  0       42 (3 dropped)  0.012     -            "
        "source disconnected; outbox dropping",
        "gw-ok    online    2s ago     pump-anomaly 1.0.0  1       0               0.0123    -",
    ]


# ------------------------------------------------------------------------------------------------ typed payloads


def test_alert_payload_reads_back_as_the_pipelines_alert_event():
    _, body = asset_alert("gw", "pump-1", "A1", "raised")
    msg = AlertMessage.from_payload(json.loads(body), asset="pump-1")
    e = msg.event
    assert (e.state, e.alert_id, e.sensor, e.score, e.threshold, e.asset) == ("raised", "A1", "pump1-meter", 6.5, 6.0, "pump-1")
    assert e.top == (("Current", 0.75), ("Pressure", 0.25)) and e.window_end_ts == T0 and e.window_start_ts == T0 - 10
    assert msg.severity == "warning" and msg.device_id == "gw" and msg.id


def test_payloads_tolerate_missing_and_unknown_fields():
    e = AlertMessage.from_payload({"alert_id": "A", "state": "cleared", "score": "high", "new": 1}).event
    assert e.alert_id == "A" and e.score != e.score and e.top == () and e.asset == ""  # NaN: not a number
    for bad in ({"state": "raised"}, {"alert_id": "A", "state": "open"}, {"alert_id": 7, "state": "raised"}):
        try:
            AlertMessage.from_payload(bad)
        except PayloadError:
            continue
        raise AssertionError(f"accepted {bad}")
    st = StatusPayload.from_payload({"state": "online", "assets": {"a": {"state": "online"}, "b": "junk", "": {}}})
    assert st.ts is None and st.model is None and set(st.assets) == {"a"} and st.assets["a"].snapshot is None
    assert StatusPayload.from_payload({}).state is None and StatsPayload.from_payload({"assets": []}).assets == {}
    row = AssetStatus.from_payload(json.loads(asset_status("gw"))["assets"]["bench"])
    assert row.snapshot is not None and row.snapshot.calibrating and row.snapshot.calibration_progress == 0.3


def test_a_port_outside_1_to_65535_or_two_reference_forms_are_usage_errors():
    import subprocess
    import sys

    for port, why in (("0", "0 is not a TCP port (1-65535)"), ("99999", "99999 is not a TCP port (1-65535)"),
                      ("x", "not a whole number: 'x'")):
        r = subprocess.run([sys.executable, "-m", "agent", "monitor", "--once", "--port", port],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--port" in r.stderr and why in r.stderr, (port, r.stderr)
        assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "agent", "config-reference", "--toml", "--markdown"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr, r.stderr
