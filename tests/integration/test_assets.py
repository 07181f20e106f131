"""One gateway, several machines: the real agent process with ``[[assets]]`` on a shared Modbus TCP bus (a real
pymodbus server, two units), on MQTT topics (the session broker) and on a replay; per-asset topics, status,
commands and state directories; a failing asset degraded alone.

pump-1 (Modbus unit 1) and bench (a replay) both play the bundled recording through the generic detector: they
must raise the same alerts, each under its own topic. pump-2 (unit 2) plays the recording's normal part; comp and
fan are MQTT assets on one client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent.bundled import demo_recording_path
from agent.counters import Counters
from agent.sources.replay import read_recording
from tests.conftest import Recorder, agent_env, run_agent, start_agent, wait_for
from tests.integration.test_control import Commander
from tests.integration.test_mqtt_source import Publisher
from tests.modbus_support import Device, Server, regs

BASE = "edge/test-gw"
CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]
NORMAL_ROWS = 560  # the recording before its fault


def _alerts(payloads: list[Any]) -> list[tuple[str, float]]:
    unique = {a["id"]: a for a in payloads}.values()
    return [(a["state"], round(a["score"], 6)) for a in sorted(unique, key=lambda a: a["seq"])]


def _device_map(name: str, unit: int) -> str:
    channels = "\n".join(f'"{c}" = {{table = "input", address = {2 * i}, type = "float32"}}' for i, c in enumerate(CHANNELS))
    return f"""
[modbus.devices.{name}]
bus = "line"
unit = {unit}
poll_s = 0.02

[modbus.devices.{name}.channels]
{channels}
"""


def _two_pumps(port: int, bus_extra: str = "", pump2_extra: str = "") -> str:
    """TOML: a Modbus TCP bus ``line`` to ``port`` with units 1 and 2 (the pump map) as assets pump-1 and pump-2."""
    pump2 = f"\n{pump2_extra}" if pump2_extra else ""
    return f"""
[modbus.buses.line]
kind = "tcp"
host = "127.0.0.1"
tcp_port = {port}
timeout_s = 0.5
{bus_extra}
{_device_map("pump1", 1)}
{_device_map("pump2", 2)}

[[assets]]
id = "pump-1"
source = {{ kind = "modbus", devices = ["pump1"] }}

[[assets]]
id = "pump-2"
source = {{ kind = "modbus", devices = ["pump2"] }}{pump2}
"""


def _playing(rows: list[list[int]], loop: bool) -> tuple[Device, dict[str, int]]:
    """A unit serving one row per poll: the recording's pace is the poll rate."""
    served = {"row": 0}

    def next_row(function: int, registers: list[int], start: int) -> None:
        i = served["row"]
        registers[0:16] = rows[i % len(rows)] if loop else rows[min(i, len(rows) - 1)]
        served["row"] = i + 1

    dev = Device(0)
    dev.on_read = next_row
    return dev, served


def _latest_status(rec: Recorder) -> dict[str, Any]:
    st = rec.on("status")
    return st[-1] if st else {}


def test_assets_on_a_shared_modbus_bus_mqtt_and_a_replay(tmp_path: Path, live_broker, recorder, agents) -> None:
    readings = list(read_recording(demo_recording_path(), Counters()))
    rows = [[v for c in CHANNELS for v in regs("f", float(rd.values[c]))] for rd in readings]
    pump1, served1 = _playing(rows, loop=False)
    pump1.unit = 1
    pump2, served2 = _playing(rows[:NORMAL_ROWS], loop=True)
    pump2.unit = 2
    server = Server([pump1, pump2])
    pumps = _two_pumps(server.port, bus_extra="retries = 0\ngap_s = 0", pump2_extra="decision = { k = 4, n = 6 }")
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
stats_interval_s = 1

[model]
path = "generic"
{pumps}
[[assets]]
id = "bench"
source = {{ kind = "replay" }}

[[assets]]
id = "comp"
source = {{ kind = "mqtt", topics = ["plant/comp/telemetry"] }}
calibration = {{ samples = 50 }}

[[assets]]
id = "fan"
source = {{ kind = "mqtt", topics = ["plant/fan/#"] }}
calibration = {{ samples = 50 }}
""")
    state = tmp_path / "state"
    rec = recorder(f"{BASE}/#")
    cmd = Commander(live_broker.port)
    a = start_agent(agent_env(state, live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config),
                              EDGE_AGENT_COMMANDS__BURST="50"), tmp_path)
    agents.append(a)
    try:
        # the retained status names every asset and each one's teach-in
        first = wait_for(lambda: _latest_status(rec).get("assets"), timeout=30, what="a status with assets")
        assert set(first) == {"pump-1", "pump-2", "bench", "comp", "fan"}, first
        assert all(s["model"]["name"] == "generic" for s in first.values())
        assert first["pump-2"]["state"] == "calibrating" and first["pump-2"]["calibration"]["samples"] == 400
        st = _latest_status(rec)
        modbus = [s for s in st["sources"] if s["name"].startswith("modbus:")]
        assert len(modbus) == 1 and set(modbus[0]["assets"]) == {"pump-1", "pump-2"}, st["sources"]  # one bus owner
        mqtt_sources = [s for s in st["sources"] if s["name"].startswith("mqtt:")]
        assert len(mqtt_sources) == 1 and set(mqtt_sources[0]["assets"]) == {"comp", "fan"}  # one client per broker

        # MQTT assets: each topic feeds its own machine
        wait_for(lambda: "subscribed to plant/comp/telemetry, plant/fan/#" in a.log, timeout=20, what="the subscription")
        pub = Publisher(live_broker.port)
        try:
            for i in range(120):
                values = json.dumps({c: readings[i].values[c] for c in CHANNELS})
                pub.pub("plant/comp/telemetry", values)
                if i < 30:
                    pub.pub("plant/fan/telemetry", values)
                time.sleep(0.005)
        finally:
            pub.close()

        # the same recording through Modbus and through a replay: the same alerts, each under its asset's topic
        wait_for(lambda: any(p["state"] == "cleared" for p in rec.on("asset/bench/alerts")), timeout=60,
                 what="the replay asset's alerts")
        wait_for(lambda: served1["row"] >= len(rows), timeout=120, what="every row of pump-1 polled")
        expected = _alerts(rec.on("asset/bench/alerts"))
        assert expected and expected[0][0] == "raised"
        wait_for(lambda: len(_alerts(rec.on("asset/pump-1/alerts"))) >= len(expected), timeout=30, what="pump-1's alerts")
        got = _alerts(rec.on("asset/pump-1/alerts"))[:len(expected)]
        assert [g[0] for g in got] == [e[0] for e in expected], (got, expected)
        # float32 registers carry the CSV's values to ~7 digits: the scores agree to that
        assert all(abs(g[1] - e[1]) <= 1e-5 * abs(e[1]) for g, e in zip(got, expected)), (got, expected)
        alerts = rec.on("asset/pump-1/alerts")
        assert all(p["asset"] == "pump-1" and p["sensor"] == "pump1" for p in alerts)
        assert rec.on("alerts") == []  # with assets nothing goes to the gateway-level topic
        assert rec.on("asset/pump-2/alerts") == []  # its normal part only

        # each its own teach-in and state directory
        wait_for(lambda: _latest_status(rec)["assets"]["comp"]["state"] != "calibrating", timeout=20,
                 what="comp's teach-in (50 readings) done")
        st = _latest_status(rec)
        fan = st["assets"]["fan"]
        assert fan["calibration"]["collected"] == 30, fan  # its teach-in waits for its own readings
        # and it fell silent after them: still teaching in, or already degraded by its stale channels (the silence
        # is noticed while the other assets keep the pipeline busy)
        assert fan["state"] == "calibrating" or any(r.startswith("channel stale") for r in fan.get("reasons", [])), fan
        for asset in ("pump-1", "pump-2", "bench", "comp"):
            assert (state / "assets" / asset / "calibration.json").exists(), asset
        assert not (state / "assets" / "fan" / "calibration.json").exists()

        # isolation: pump-2 stops answering; it alone is degraded, pump-1 keeps scoring
        pump2.offline = True
        degraded = wait_for(lambda: (s := _latest_status(rec)).get("assets", {}).get("pump-2", {}).get("state") == "degraded" and s,
                            timeout=30, what="pump-2 degraded")
        assert any("pump2" in r for r in degraded["assets"]["pump-2"]["reasons"]), degraded
        assert degraded["assets"]["pump-1"]["state"] == "online", degraded
        assert any(r.startswith("asset pump-2: ") for r in degraded["reasons"]), degraded["reasons"]
        windows = rec.on("stats")[-1]["assets"]["pump-1"]["windows"]
        wait_for(lambda: rec.on("stats")[-1]["assets"]["pump-1"]["windows"] > windows + 20, timeout=20,
                 what="pump-1 still scoring")

        # per-asset commands
        r = cmd.send("set-threshold", {"request_id": "t0", "threshold": 9.5})
        assert not r["ok"] and "asset is required" in r["reason"], r
        before2 = _latest_status(rec)["assets"]["pump-2"]["threshold"]
        r = cmd.send("set-threshold", {"request_id": "t1", "asset": "pump-1", "threshold": 9.5})
        assert r["ok"] and r["asset"] == "pump-1" and r["threshold"] == 9.5, r
        assert json.loads((state / "assets" / "pump-1" / "overrides.json").read_text())["threshold"] == 9.5
        wait_for(lambda: _latest_status(rec)["assets"]["pump-1"]["threshold"] == 9.5, what="pump-1's new threshold")
        assert _latest_status(rec)["assets"]["pump-2"]["threshold"] == before2
        r = cmd.send("set-threshold", {"request_id": "t2", "asset": "nope", "threshold": 9.5})
        assert not r["ok"] and "no asset 'nope'" in r["reason"], r

        raised = next(p for p in alerts if p["state"] == "raised")
        r = cmd.send("feedback", {"request_id": "f0", "asset": "bench", "alert_id": raised["alert_id"], "label": "true_positive"})
        assert not r["ok"] and "raised by asset 'pump-1'" in r["reason"], r
        r = cmd.send("feedback", {"request_id": "f1", "alert_id": raised["alert_id"], "label": "true_positive"})
        assert r["ok"] and r["asset"] == "pump-1", r

        # comp's data stopped: it is degraded alone (stale), and a teach-in restarts on it alone
        stale = wait_for(lambda: (s := _latest_status(rec))["assets"]["comp"].get("reasons") and s, timeout=20,
                         what="comp's channels stale")
        assert any(r.startswith("channel stale") for r in stale["assets"]["comp"]["reasons"]), stale["assets"]["comp"]
        assert stale["assets"]["pump-1"]["state"] == "online"
        r = cmd.send("calibrate", {"request_id": "c1", "asset": "comp"})
        assert r["ok"] and r["asset"] == "comp" and r["changed"], r
        # a reply's state is its asset's: pump-1 is online while the gateway is degraded (comp stale)
        r = cmd.send("reload-model", {"request_id": "m1", "asset": "pump-1", "path": "generic",
                                      "sha256": first["pump-1"]["model"]["sha256"]})
        assert r["ok"] and not r["changed"] and r["state"] == "online", r
        assert _latest_status(rec)["state"] == "degraded"
        wait_for(lambda: _latest_status(rec)["assets"]["comp"].get("calibration", {}).get("collected") == 0,
                 what="comp teaching in again")
        st = _latest_status(rec)
        assert st["assets"]["pump-1"]["state"] == "online" and "calibration" not in st["assets"]["pump-1"], st

        assert a.stop() == 0, a.log[-3000:]
    finally:
        cmd.close()
        server.stop()
    # final summaries, one per asset, each on its topic and naming it
    finals = {p["asset"]: p for t in ("pump-1", "pump-2", "bench", "comp", "fan")
              for p in rec.on(f"asset/{t}/summary") if p.get("final")}
    assert set(finals) == {"pump-1", "pump-2", "bench", "comp", "fan"}, finals.keys()
    counted = {t: sum(p["readings"] for p in rec.on(f"asset/{t}/summary")) for t in finals}
    assert counted["fan"] == 30 and counted["comp"] == 120 and counted["bench"] == len(readings), counted
    assert all(p["asset"] == t for t in finals for p in rec.on(f"asset/{t}/summary"))
    assert "[pump-1] " in a.log  # the pipeline's log lines name their machine

    # `edge-agent calibrate` shows every asset's teach-in, or one; a reset names its asset
    env = agent_env(state, live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config))
    shown = run_agent(env, "calibrate")
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)
    assert set(result) == {"pump-1", "pump-2", "bench", "comp", "fan"}, result
    assert result["pump-1"]["calibrated"] is True and result["fan"]["calibrated"] is False
    assert result["fan"]["teach_in"]["collected"] == 30  # its teach-in under way, kept at the stop in its own dir
    one = run_agent(env, "calibrate", "--asset", "pump-2")
    assert json.loads(one.stdout) == {"pump-2": result["pump-2"]}
    refused = run_agent(env, "calibrate", "--reset")
    assert refused.returncode == 78 and "--asset" in refused.stderr, refused.stderr
    reset = run_agent(env, "calibrate", "--reset", "--asset", "pump-2")
    assert reset.returncode == 0 and not (state / "assets" / "pump-2" / "calibration.json").exists()
    assert (state / "assets" / "pump-1" / "calibration.json").exists()
    assert reset.stdout.startswith(f"calibration in {state / 'assets' / 'pump-2'} removed"), reset.stdout
    again = run_agent(env, "calibrate", "--reset", "--asset", "pump-2")  # nothing left to remove: it says so
    assert again.returncode == 0 and again.stdout.startswith("no calibration in") and "nothing removed" in again.stdout


def test_an_asset_whose_model_is_refused_is_down_alone(tmp_path: Path, live_broker, recorder, agents) -> None:
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"not a flatbuffer")
    (tmp_path / "broken.json").write_text("{}")
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
stats_interval_s = 1

[[assets]]
id = "good"
source = {{ kind = "replay", speed = 100, loop = true }}

[[assets]]
id = "bad"
source = {{ kind = "replay", speed = 100, loop = true, sensor = "bad-bench" }}
model = {{ path = "{bad}" }}
""")
    rec = recorder(f"{BASE}/#")
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config))
    a = start_agent(env, tmp_path)
    agents.append(a)
    wait_for(lambda: any(p["state"] == "cleared" for p in rec.on("asset/good/alerts")), timeout=60,
             what="the good asset's alerts")
    st = _latest_status(rec)
    assert st["state"] == "degraded" and st["assets"]["good"]["state"] == "online", st
    assert st["assets"]["bad"]["state"] == "degraded" and "model refused" in st["assets"]["bad"]["reasons"][0], st
    assert any(r.startswith("asset bad: model refused") for r in st["reasons"])
    stats = wait_for(lambda: [s for s in rec.on("stats") if s["assets"]["bad"]["rejected"].get("asset_down", 0) > 100],
                     what="the down asset's readings counted")[-1]
    assert stats["assets"]["good"]["windows"] > 100 and stats["assets"]["bad"]["windows"] == 0, stats["assets"]
    assert rec.on("asset/bad/alerts") == [] and rec.on("asset/bad/summary") == []
    assert a.stop() == 0, a.log[-3000:]
    assert "asset bad is down (the others run)" in a.log


def test_modbus_failures_are_in_the_stats_with_assets_too(tmp_path: Path, live_broker, recorder, agents) -> None:
    """With [[assets]] the stats' per-source `source` block gives way to the `sources` list; the failure counts by
    reason (a device answering exception 2) used to go with it and were published nowhere: `source_totals` keeps
    them, and the asset's status names the device."""
    from pymodbus.constants import ExcCodes

    readings = list(read_recording(demo_recording_path(), Counters()))
    rows = [[v for c in CHANNELS for v in regs("f", float(rd.values[c]))] for rd in readings]
    pump1, _ = _playing(rows, loop=True)
    pump1.unit = 1
    pump2 = Device(2)
    pump2.refuse[4] = ExcCodes.ILLEGAL_ADDRESS  # read input registers: exception 2, every poll
    server = Server([pump1, pump2])
    try:
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
stats_interval_s = 1
{_two_pumps(server.port)}""")
        rec = recorder(f"{BASE}/#")
        a = start_agent(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config)), tmp_path)
        agents.append(a)
        stats = wait_for(lambda: [s for s in rec.on("stats")
                                  if s.get("source_totals", {}).get("errors", {}).get("exception_2", 0) > 0],
                         timeout=30, what="exception 2 counted in the stats")[-1]
        assert "source" not in stats and stats["source_totals"]["reconnects"] >= 0, stats
        st = wait_for(lambda: (s := _latest_status(rec)).get("assets", {}).get("pump-2", {}).get("reasons") and s,
                      timeout=30, what="pump-2's reasons")
        assert any("pump2" in r or "device 2" in r for r in st["assets"]["pump-2"]["reasons"]), st["assets"]["pump-2"]
        assert a.stop() == 0, a.log[-3000:]
    finally:
        server.stop()
