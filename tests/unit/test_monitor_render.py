"""``edge-agent monitor`` without a broker: the fleet state machine and the table rendering as pure functions."""

from __future__ import annotations

import json

from agent.monitor import Fleet, format_age, render_table, snapshot_json
from agent.parse import iso

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


def test_a_restarted_agent_closes_the_alerts_of_its_previous_run():
    f = Fleet("edge")
    f.handle("edge/gw/status", status("gw"), now=T0)
    f.handle("edge/gw/alerts", alert("gw", "m1", "A", "raised", created=T0 + 1), now=T0 + 1)
    f.handle("edge/gw/status", status("gw", started_at=iso(T0 + 50)), now=T0 + 50)
    assert by_id(f, T0 + 50)["gw"]["open_alerts"] == 0


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
