"""``edge-agent monitor`` as a real process against a private mosquitto and real agent processes."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.bundled import default_model_path
from tests.conftest import ROOT, agent_env, free_port, start_agent, wait_for
from tests.ptys import fresh_openpty

SIDECAR = json.loads(default_model_path().read_text())  # the default model's spec: what the agents run


def _prefix() -> str:
    return f"mon-{uuid.uuid4().hex[:8]}"  # the session broker keeps retained statuses of other tests: stay apart


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}


def _cmd(port: int, prefix: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "monitor", "--host", "127.0.0.1", "--port", str(port), "--prefix", prefix, *args]


def _ctrl_c_default() -> None:
    """In the monitor's child before exec: SIGINT back to its default, so that Python makes it KeyboardInterrupt as
    in a terminal. A suite started in the background inherits SIGINT ignored, and Python keeps an ignored SIGINT:
    the monitor would then never see the Ctrl-C these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_monitor(port: int, prefix: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(port, prefix, *args), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _looping_agent(tmp_path: Path, port: int, prefix: str, device: str, agents: list) -> Any:
    env = agent_env(
        tmp_path / device, port, EDGE_AGENT_DEVICE_ID=device, EDGE_AGENT_MQTT__TOPIC_PREFIX=prefix,
        EDGE_AGENT_SOURCE__LOOP="true", EDGE_AGENT_SOURCE__SPEED="50", EDGE_AGENT_STATS_INTERVAL_S="1",
    )
    a = start_agent(env, tmp_path / "logs")
    agents.append(a)
    return a


def _last_status(rec: Any, device: str) -> dict[str, Any] | None:
    st = [p for t, p, _ in list(rec.messages) if t.endswith(f"/{device}/status") and isinstance(p, dict)]
    return st[-1] if st else None


def _has_stats(rec: Any, device: str) -> bool:
    return any(t.endswith(f"/{device}/stats") for t, _, _ in list(rec.messages))


def _alert_sets(rec: Any, device: str) -> tuple[set[str], set[str]]:
    alerts = [p for t, p, _ in list(rec.messages) if t.endswith(f"/{device}/alerts")]
    return ({a["alert_id"] for a in alerts if a["state"] == "raised"},
            {a["alert_id"] for a in alerts if a["state"] == "cleared"})


def test_once_snapshot_of_two_agents_then_one_killed_shows_offline(tmp_path, live_broker, recorder, agents):
    prefix = _prefix()
    rec = recorder(f"{prefix}/#")
    gw_a = _looping_agent(tmp_path, live_broker.port, prefix, "gw-a", agents)
    gw_b = _looping_agent(tmp_path, live_broker.port, prefix, "gw-b", agents)
    for dev in ("gw-a", "gw-b"):
        wait_for(lambda: (_last_status(rec, dev) or {}).get("state") == "online" and _has_stats(rec, dev), timeout=90,
                 what=f"{dev} online (after teach-in) with stats")

    t0 = time.monotonic()
    r = run_monitor(live_broker.port, prefix, "--once", "--timeout", "20", "--json")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert took < 15, f"--once should stop as soon as every device has status and stats, took {took:.1f} s"
    snap = json.loads(r.stdout)
    assert snap["prefix"] == prefix
    devices = {d["device_id"]: d for d in snap["devices"]}
    assert set(devices) == {"gw-a", "gw-b"}, snap
    for dev, d in devices.items():
        assert d["state"] == "online", d
        assert d["model"] == {"name": SIDECAR["name"], "version": SIDECAR["version"]}
        assert isinstance(d["bandwidth_ratio"], float) and d["bandwidth_ratio"] > 0
        assert isinstance(d["outbox_depth"], int) and d["outbox_depth"] >= 0
        assert d["age_s"] is not None and 0 <= d["age_s"] < 10 and not d["stale"]
        assert d["have"] == {"status": True, "stats": True}
        assert d["open_alerts"] == len(d["open_alert_ids"]) >= 0
        raised, _ = _alert_sets(rec, dev)
        assert set(d["open_alert_ids"]) <= raised  # only alerts that were really raised

    # the table form
    r = run_monitor(live_broker.port, prefix, "--once", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for col in ("DEVICE", "STATE", "LAST SEEN", "MODEL", "ALERTS", "OUTBOX", "BW RATIO"):
        assert col in lines[0]
    body = {line.split()[0]: line for line in lines[1:]}
    assert set(body) == {"gw-a", "gw-b"}
    for line in body.values():
        assert "online" in line and f"{SIDECAR['name']} {SIDECAR['version']}" in line and " ago" in line

    # SIGKILL: no clean offline from the agent, the broker publishes its last will
    gw_b.stop(signal.SIGKILL)
    wait_for(lambda: (_last_status(rec, "gw-b") or {}).get("state") == "offline", timeout=30, what="gw-b last will")
    t0 = time.monotonic()
    r = run_monitor(live_broker.port, prefix, "--once", "--timeout", "20", "--json")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert took < 15, f"an offline device sends no stats and must not hold --once up ({took:.1f} s)"
    snap = json.loads(r.stdout)
    assert [d["device_id"] for d in snap["devices"]] == ["gw-b", "gw-a"]  # offline first
    b, a = snap["devices"]
    assert b["state"] == "offline" and b["reason"] == "connection lost" and not b["stale"]
    assert a["state"] == "online" and gw_a.alive()

    r = run_monitor(live_broker.port, prefix, "--once", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[1]
    assert first.startswith("gw-b") and "offline" in first and "connection lost" in first


def test_live_open_alerts_match_what_was_raised_and_cleared(tmp_path, live_broker, recorder, agents):
    """Monitor and recorder both subscribe before the agents start, so both see every alert: at the end (agents
    killed, nothing in flight) the monitor's open alerts are exactly raised − cleared of the recorder."""
    prefix = _prefix()
    rec = recorder(f"{prefix}/#")
    mon = subprocess.Popen(_cmd(live_broker.port, prefix, "--json", "--interval", "0.3"), env=_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
    snapshots: list[dict[str, Any]] = []

    def read() -> None:
        assert mon.stdout is not None
        for line in mon.stdout:
            snapshots.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: snapshots and snapshots[-1]["subscribed"], timeout=20, what="monitor subscribed")
        assert snapshots[-1]["devices"] == [] and snapshots[-1]["connected"] is True
        for dev in ("gw-a", "gw-b"):
            _looping_agent(tmp_path, live_broker.port, prefix, dev, agents)

        def open_seen() -> bool:
            return any(d["open_alerts"] >= 1 for s in list(snapshots) for d in s["devices"])

        wait_for(open_seen, timeout=120, what="a snapshot with an open alert")
        wait_for(lambda: any(_alert_sets(rec, d)[1] for d in ("gw-a", "gw-b")), timeout=60, what="a cleared alert")
        for a in agents:
            a.stop(signal.SIGKILL)
        wait_for(lambda: snapshots and {d["device_id"]: d["state"] for d in snapshots[-1]["devices"]}
                 == {"gw-a": "offline", "gw-b": "offline"}, timeout=30, what="both agents offline in the monitor")
        time.sleep(1.0)
        final = {d["device_id"]: d for d in snapshots[-1]["devices"]}
        for dev in ("gw-a", "gw-b"):
            raised, cleared = _alert_sets(rec, dev)
            assert set(final[dev]["open_alert_ids"]) == raised - cleared, (dev, final[dev], raised, cleared)
            assert final[dev]["open_alerts"] == len(raised - cleared)
            assert final[dev]["alerts_seen"]["raised"] == len(raised)
        for s in snapshots:
            for d in s["devices"]:
                assert d["open_alerts"] == len(d["open_alert_ids"]) >= 0
        # Ctrl-C ends the live view cleanly
        mon.send_signal(signal.SIGINT)
        assert mon.wait(timeout=10) == 0
        assert mon.stderr is not None and "Traceback" not in mon.stderr.read()
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()
        reader.join(timeout=5)


def _publish(port: int, messages: list[tuple[str, dict[str, Any] | None, bool]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, payload, retain in messages:
            body = json.dumps(payload) if payload is not None else b""  # None: clear the retained message
            c.publish(topic, body, qos=1, retain=retain).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_live_table_in_a_terminal_redraws_in_place_and_ctrl_c_exits_0(live_broker):
    prefix = _prefix()
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    _publish(live_broker.port, [
        (f"{prefix}/gw-live/status", {"state": "online", "ts": now, "device_id": "gw-live", "started_at": now,
                                      "model": {"name": "pump-anomaly", "version": "1.0.0"}}, True),
        (f"{prefix}/gw-sick/status", {"state": "degraded", "ts": now, "device_id": "gw-sick", "started_at": now,
                                      "reasons": ["source disconnected"], "model": {"name": "pump-anomaly", "version": "1.0.0"}}, True),
    ])
    master, slave = fresh_openpty()
    env = {**_env(), "COLUMNS": "70", "LINES": "20"}
    mon = subprocess.Popen(_cmd(live_broker.port, prefix, "--interval", "0.2"), env=env, cwd=ROOT,
                           stdin=slave, stdout=slave, stderr=subprocess.PIPE, preexec_fn=_ctrl_c_default)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (out.count(b"\x1b[H") >= 3 and b"gw-live" in out.split(b"\x1b[H")[-2]):
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        text = out.decode(errors="replace")
        assert "\x1b[H" in text and text.count("\x1b[H") >= 3, text[-2000:]  # redrawn in place, not scrolled
        frame = text.split("\x1b[H")[-2]  # the last complete frame (the one after it may be cut mid-way)
        assert frame.index("gw-sick") < frame.index("gw-live")  # degraded before online
        assert "2 devices" in frame and "connected" in frame
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame)
        assert all(len(line) <= 70 for line in plain.splitlines()), plain
        mon.send_signal(signal.SIGINT)
        assert mon.wait(timeout=10) == 0
        rest = b""
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            rest += chunk
        assert b"\x1b[?25h" in out + rest  # the cursor is given back
        assert mon.stderr is not None and b"Traceback" not in mon.stderr.read()
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()
        os.close(master)
        _publish(live_broker.port, [(f"{prefix}/gw-live/status", None, True), (f"{prefix}/gw-sick/status", None, True)])


def test_unreachable_broker_exits_2_with_a_clear_message():
    port = free_port()  # nothing listens there
    r = run_monitor(port, "edge", "--once", "--timeout", "5", timeout=30)
    assert r.returncode == 2
    assert f"cannot reach the broker 127.0.0.1:{port}" in r.stderr and "connection refused" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    r = run_monitor(port, "edge", timeout=30)  # the live view says the same
    assert r.returncode == 2 and "cannot reach the broker" in r.stderr


def test_no_device_exits_1(live_broker):
    t0 = time.monotonic()
    r = run_monitor(live_broker.port, _prefix(), "--once", "--timeout", "1.5")
    assert r.returncode == 1, r.stderr
    assert "no device seen under" in r.stderr and r.stdout == ""
    assert time.monotonic() - t0 < 15


def test_a_gateway_with_assets_shows_a_row_per_asset(tmp_path, live_broker, recorder, agents):
    """A real agent with assets like deploy/gateway.toml.example's (a pump on a Modbus TCP bus, a compressor on MQTT,
    a bench replaying a recording) plus one whose model is refused: the monitor shows each asset under its gateway
    with its own state, model and alerts; alerts on ``asset/<id>/alerts`` count for that asset only."""
    from agent.counters import Counters
    from agent.sources.replay import read_recording
    from agent.bundled import demo_recording_path
    from tests.integration.test_assets import CHANNELS, NORMAL_ROWS, _device_map, _playing
    from tests.modbus_support import Server, regs

    prefix, device = _prefix(), "gw-line"
    readings = list(read_recording(demo_recording_path(), Counters()))
    pump, _ = _playing([[v for c in CHANNELS for v in regs("f", float(r.values[c]))] for r in readings[:NORMAL_ROWS]],
                       loop=True)
    pump.unit = 1
    server = Server([pump])
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    (tmp_path / "broken.json").write_text("{}")
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
stats_interval_s = 1

[model]
path = "generic"

[modbus.buses.line1]
kind = "tcp"
host = "127.0.0.1"
tcp_port = {server.port}
timeout_s = 0.5
retries = 0
gap_s = 0
{_device_map("pump1-meter", 1).replace('bus = "line"', 'bus = "line1"')}

[[assets]]
id = "pump-1"
source = {{ kind = "modbus", devices = ["pump1-meter"] }}
calibration = {{ samples = 100 }}

[[assets]]
id = "compressor"
source = {{ kind = "mqtt", topics = ["{prefix}-plant/compressor/telemetry"] }}
calibration = {{ samples = 50 }}

[[assets]]
id = "test-bench"
source = {{ kind = "replay", speed = 50, loop = true }}

[[assets]]
id = "spare"
source = {{ kind = "replay", speed = 50, loop = true, sensor = "spare-bench" }}
model = {{ path = "{broken}" }}
""")
    rec = recorder(f"{prefix}/#")
    mon = subprocess.Popen(_cmd(live_broker.port, prefix, "--json", "--interval", "0.3"), env=_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
    snapshots: list[dict[str, Any]] = []

    def read() -> None:
        assert mon.stdout is not None
        for line in mon.stdout:
            snapshots.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: snapshots and snapshots[-1]["subscribed"], timeout=20, what="monitor subscribed")
        agent = start_agent(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config),
                                      EDGE_AGENT_DEVICE_ID=device, EDGE_AGENT_MQTT__TOPIC_PREFIX=prefix),
                            tmp_path / "logs")
        agents.append(agent)

        def asset_rows() -> dict[str, dict[str, Any]]:
            devs = [d for d in snapshots[-1]["devices"] if d["device_id"] == device] if snapshots else []
            return {a["asset_id"]: a for a in devs[0].get("assets") or []} if devs else {}

        def ready() -> bool:
            a = asset_rows()
            return (set(a) == {"pump-1", "compressor", "test-bench", "spare"} and a["pump-1"]["state"] == "online"
                    and a["test-bench"]["last_alert"] is not None)

        wait_for(ready, timeout=120, what="every asset row, pump-1 taught in and an alert of the test bench")
        rows = asset_rows()
        # nothing is published on the compressor's topic: its MQTT source is live, so it says so (still teaching in)
        assert rows["compressor"]["state"] == "degraded" and rows["compressor"]["reasons"] == ["no readings arriving"]
        assert rows["compressor"]["calibration"]["samples"] == 50
        assert rows["spare"]["state"] == "degraded" and "model refused" in rows["spare"]["reasons"][0]
        assert rows["spare"]["model"] is None
        for a in ("pump-1", "compressor", "test-bench"):
            assert rows[a]["model"] == {"name": "generic", "version": "1.1.0"}, rows[a]
        assert rows["test-bench"]["last_alert"]["sensor"] == "replay"

        # the table: the gateway, then its assets indented under it
        r = run_monitor(live_broker.port, prefix, "--once", "--timeout", "20")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[1].startswith(device) and "4 assets" in lines[1], r.stdout
        under = {line.split()[0]: line for line in lines[2:]}
        assert set(under) == {"pump-1", "compressor", "test-bench", "spare"}, r.stdout
        assert all(line.startswith("  ") for line in lines[2:])
        # most severe first (by name among equals)
        assert [line.split()[:2] for line in lines[2:4]] == [["compressor", "degraded"], ["spare", "degraded"]]
        assert "model refused" in under["spare"] and "no readings arriving" in under["compressor"]
        assert "online" in under["pump-1"] and "generic 1.1.0" in under["pump-1"] and "scoring" in under["pump-1"]
        # a monitor started after the alerts never saw them (not retained); the stats count them since the start
        assert re.search(r"scoring; \d+ raised since the agent started$", under["test-bench"]), under["test-bench"]

        # alerts counted per asset: at the end (agent killed, nothing in flight) each asset's open alerts are
        # exactly what was raised and not cleared on its own topic
        wait_for(lambda: any(p["state"] == "cleared" for p in rec.on("asset/test-bench/alerts")), timeout=60,
                 what="a cleared alert of the test bench")
        agent.stop(signal.SIGKILL)
        wait_for(lambda: snapshots and [d["state"] for d in snapshots[-1]["devices"]] == ["offline"], timeout=30,
                 what="the gateway offline in the monitor")
        time.sleep(1.0)
        final = snapshots[-1]["devices"][0]
        per_asset = {a["asset_id"]: a for a in final["assets"]}
        assert {a["state"] for a in per_asset.values()} == {"offline"}
        opened: set[str] = set()
        for asset, row in per_asset.items():
            alerts = rec.on(f"asset/{asset}/alerts")
            raised = {p["alert_id"] for p in alerts if p["state"] == "raised"}
            cleared = {p["alert_id"] for p in alerts if p["state"] == "cleared"}
            assert set(row["open_alert_ids"]) == raised - cleared, (asset, row, raised, cleared)
            assert row["alerts_seen"] == {"raised": len(raised), "cleared": len(cleared)}, (asset, row)
            opened |= raised - cleared
        assert per_asset["test-bench"]["alerts_seen"]["raised"] >= 1
        assert set(final["open_alert_ids"]) == opened  # the gateway's count is its assets' together
        assert rec.on("alerts") == []  # with assets nothing goes to the gateway-level topic
        mon.send_signal(signal.SIGINT)
        assert mon.wait(timeout=10) == 0
        assert mon.stderr is not None and "Traceback" not in mon.stderr.read()
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()
        reader.join(timeout=5)
        server.stop()
