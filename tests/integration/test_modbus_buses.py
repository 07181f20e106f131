"""Several Modbus buses on one gateway: the link state of each bus reaches the assets on it. The real agent process
with ``[[assets]]`` on two Modbus TCP connections (two real pymodbus servers on loopback) and the session broker.

The Modbus source is connected while any of its buses is: an asset whose bus is down beside a live one was judged
by that (its silence "news", its channels stale) instead of by its own bus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import Recorder, agent_env, start_agent, wait_for
from tests.modbus_support import Device, Server, regs

BASE = "edge/test-gw"


def _device(name: str, bus: str, port: int) -> str:
    return f"""
[modbus.buses.{bus}]
kind = "tcp"
host = "127.0.0.1"
tcp_port = {port}
timeout_s = 0.3
retries = 0
reconnect_min_s = 0.2
reconnect_max_s = 0.5

[modbus.devices.{name}]
bus = "{bus}"
unit = 1
poll_s = 0.05

[modbus.devices.{name}.channels]
temperature = {{table = "input", address = 0, type = "float32"}}
pressure = {{table = "input", address = 2, type = "float32"}}
"""


def _unit() -> Device:
    return Device(1, input=dict(enumerate(regs("f", 21.5) + regs("f", 3.25))))


def _assets(st: dict[str, Any]) -> dict[str, Any]:
    return st.get("assets", {})


def _latest(rec: Recorder) -> dict[str, Any]:
    st = rec.on("status")
    return st[-1] if st else {}


def test_an_asset_on_a_dead_bus_is_disconnected_beside_a_live_one(tmp_path: Path, live_broker, recorder, agents):
    """Bus ``line-b`` stops mid-run: pump-2 (on it) shows disconnected, naming the bus, its host:port and the error,
    and not silent nor stale; pump-1 (on ``line-a``) stays as it was; the gateway's reasons name the bus once. The
    server back on the same port: pump-2 is well again, pump-1 never changed."""
    server_a, server_b = Server([_unit()]), Server([_unit()])
    port_b = server_b.port
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
stats_interval_s = 1

[model]
path = "generic"

[cleaning]
max_hold_s = 1.0
{_device("pump1", "line-a", server_a.port)}
{_device("pump2", "line-b", port_b)}
[[assets]]
id = "pump-1"
source = {{ kind = "modbus", devices = ["pump1"] }}
calibration = {{ samples = 20 }}

[[assets]]
id = "pump-2"
source = {{ kind = "modbus", devices = ["pump2"] }}
calibration = {{ samples = 20 }}
""")
    rec = recorder(f"{BASE}/#")
    a = start_agent(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config)), tmp_path)
    agents.append(a)
    restarted: list[Server] = []
    try:
        wait_for(lambda: (s := _assets(_latest(rec))) and all(r["state"] == "online" for r in s.values()),
                 timeout=30, what="both assets taught in and online")
        server_b.stop()
        at_stop = len(rec.on("status"))
        down = wait_for(lambda: (s := _latest(rec)) and "reasons" in _assets(s).get("pump-2", {}) and s,
                        timeout=20, what="pump-2 degraded")
        time.sleep(3.0)  # the bus's reasons settle (lost, then cannot open): well past the asset's silence tolerance
        down = _latest(rec)
        pump2 = _assets(down)["pump-2"]
        assert pump2["state"] == "degraded", pump2
        # the silence warnings would be the outage's consequence, not news
        quiet = a.log[a.log.index(f"modbus bus line-b: 127.0.0.1:{port_b} lost"):]
        assert "no reading arrived for" not in quiet and "sensor pump2 silent for" not in quiet, quiet
        assert pump2.get("source", {}).get("state") == "disconnected", pump2
        words = " ".join(pump2["reasons"])
        assert "line-b" in words and f"127.0.0.1:{port_b}" in words, pump2
        assert "refused" in words.lower() or "closed" in words.lower() or "error" in words.lower(), pump2
        assert not any("no readings arriving" in r for r in pump2["reasons"]), pump2  # its channels may be stale
        assert _assets(down)["pump-1"]["state"] == "online", _assets(down)["pump-1"]
        assert "reasons" not in _assets(down)["pump-1"], _assets(down)["pump-1"]
        assert sum("line-b" in r for r in down["reasons"]) == 1, down["reasons"]

        restarted.append(Server([_unit()], port=port_b))
        back = wait_for(lambda: (s := _latest(rec)) and _assets(s).get("pump-2", {}).get("state") == "online" and s,
                        timeout=30, what="pump-2 online again")
        assert back["state"] == "online" and "reasons" not in back, back
        assert _assets(back)["pump-2"].get("source", {}).get("state") == "connected", _assets(back)["pump-2"]
        # pump-1 stayed online all along
        assert all(_assets(s)["pump-1"]["state"] == "online" for s in rec.on("status")[at_stop:] if _assets(s)), \
            [_assets(s).get("pump-1") for s in rec.on("status")[at_stop:]]
        assert a.stop() == 0, a.log[-3000:]
    finally:
        server_a.stop()
        server_b.stop()
        for s in restarted:
            s.stop()


def test_a_gateway_without_assets_says_which_bus_is_down_and_why(tmp_path: Path, live_broker, recorder, agents):
    """Without ``[[assets]]`` the gateway's reasons are its source's: with its one bus down, the status says
    ``source disconnected`` and the bus, its host:port and the error beside it (they were left out when the link
    state per bus came: only ``source disconnected`` and the stale channels), as docs/modbus.md says."""
    server = Server([_unit()])
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
stats_interval_s = 1

[model]
path = "generic"

[calibration]
samples = 20

[cleaning]
max_hold_s = 1.0

[source]
kind = "modbus"
devices = ["pump1"]
{_device("pump1", "line-a", server.port)}""")
    rec = recorder(f"{BASE}/#")
    a = start_agent(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config)), tmp_path)
    agents.append(a)
    try:
        wait_for(lambda: _latest(rec).get("state") == "online", timeout=30, what="taught in and online")
        server.stop()
        down = wait_for(lambda: (s := _latest(rec)) and "source disconnected" in s.get("reasons", ()) and s,
                        timeout=20, what="source disconnected")
        assert down["source"]["state"] == "disconnected", down
        bus = [r for r in down["reasons"] if r.startswith("modbus bus line-a disconnected (")]
        assert len(bus) == 1 and f"127.0.0.1:{server.port}: " in bus[0], down["reasons"]
        assert a.stop() == 0, a.log[-3000:]
    finally:
        server.stop()
