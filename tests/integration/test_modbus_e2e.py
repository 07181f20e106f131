"""The agent process reading the demo recording from Modbus registers (float32, one row per poll) raises the same
alerts as the replay of the same recording (same model, same teach-in); configured by a TOML file."""

from __future__ import annotations

from typing import Any

import pytest

from agent.bundled import demo_recording_path
from agent.counters import Counters
from agent.sources.replay import read_recording
from tests.conftest import agent_env, run_agent, start_agent, wait_for
from tests.modbus_support import Device, Server, regs

CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]


def _alerts(rec: Any) -> list[tuple[str, float]]:
    unique = {a["id"]: a for a in rec.on("alerts")}.values()
    return [(a["state"], round(a["score"], 6)) for a in sorted(unique, key=lambda a: a["seq"])]


def test_recording_served_from_registers_alerts_like_the_replay(tmp_path, live_broker, recorder, agents) -> None:
    readings = list(read_recording(demo_recording_path(), Counters()))
    ref = recorder("edge/test-gw/alerts")
    r = run_agent(agent_env(tmp_path / "replay", live_broker.port))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: any(a["state"] == "cleared" for a in ref.on("alerts")), what="replay alerts")
    expected = _alerts(ref)
    ref.close()

    rows = [[v for c in CHANNELS for v in regs("f", float(rd.values[c]))] for rd in readings]
    served = {"row": 0}

    def next_row(function: int, registers: list[int], start: int) -> None:
        i = served["row"]  # one row per poll: the registers change at the poll rate
        registers[0:16] = rows[min(i, len(rows) - 1)]
        served["row"] = i + 1

    dev = Device(1)
    dev.on_read = next_row
    server = Server([dev])
    try:
        channels = "\n".join(f'"{c}" = {{table = "input", address = {2 * i}, type = "float32"}}'
                             for i, c in enumerate(CHANNELS))
        config = tmp_path / "agent.toml"
        config.write_text(f"""
stats_interval_s = 1

[source]
kind = "modbus"
devices = ["pump"]

[modbus.buses.plc]
kind = "tcp"
host = "127.0.0.1"
tcp_port = {server.port}
timeout_s = 2.0
gap_s = 0

[modbus.devices.pump]
bus = "plc"
unit = 1
poll_s = 0.02
sensor = "replay"

[modbus.devices.pump.channels]
{channels}
""")
        rec = recorder("edge/test-gw/#")
        a = start_agent(agent_env(tmp_path / "modbus", live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config)), tmp_path)
        agents.append(a)
        wait_for(lambda: served["row"] >= len(rows) or not a.alive(), timeout=120, what="every row polled")
        assert a.alive(), a.log[-3000:]
        served["row"] = 10**9  # keep serving the last row until the agent stops
        wait_for(lambda: len(_alerts(rec)) >= len(expected), timeout=30, what="the alerts")
        dev.offline = True  # no more readings: the ones after the recording would be extra windows
        assert a.stop() == 0, a.log[-3000:]
    finally:
        server.stop()
    assert "source modbus:plc(pump)" in a.log
    got = _alerts(rec)
    assert [g[0] for g in got] == [e[0] for e in expected], (got, expected)
    # the values went through float32 registers: scores agree to float32 precision, not to the last digit
    assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], rel=1e-5)
    assert sum(s["readings"] for s in rec.on("summary")) >= len(readings)
