"""A replay asset whose file has finished is done, not silent: while a live asset (a serial port, a real pty) keeps
the gateway running, the finished replay must not make the status stale or degraded. Only the assets fed by a live
source get the periodic silence checks (agent/runtime.py: ``PipelineLoop.live``, a set of asset ids)."""

from __future__ import annotations

import threading
import time

from agent.bundled import demo_recording_path
from tests.conftest import Pty, start_agent, wait_for
from tests.faults.conftest import BASE, agent_env

HOLD_S = 1.0


def test_a_finished_replay_asset_does_not_degrade_the_gateway(tmp_path, live_broker, recorder, agents):
    recording = tmp_path / "bench.csv"
    recording.write_text("".join(demo_recording_path().read_text().splitlines(keepends=True)[:61]))  # 60 rows
    pty = Pty()
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[cleaning]
max_hold_s = {HOLD_S}

[[assets]]
id = "line"
source = {{ kind = "serial", port = "{pty.path}", format = "csv", channels = ["a", "b"] }}

[[assets]]
id = "bench"
source = {{ kind = "replay", path = "{recording}" }}
""")
    rec = recorder(f"{BASE}/#")
    stop = threading.Event()

    def feed() -> None:  # the live machine, 10 readings a second
        pty.write(b"\n")  # the first fragment after an open is dropped
        i = 0
        while not stop.is_set():
            pty.write(f"{i % 7},{i % 5}\n".encode())
            i += 1
            time.sleep(0.1)

    a = start_agent(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_CONFIG_FILE=str(config),
                              EDGE_AGENT_MODEL__PATH="generic"), tmp_path)
    agents.append(a)
    feeder = threading.Thread(target=feed, daemon=True)
    try:
        def status() -> dict:
            st = rec.on("status")
            return st[-1] if st else {}

        def sources() -> dict:
            return {s["name"].split(":")[0]: s["state"] for s in status().get("sources", [])}

        wait_for(lambda: sources().get("serial") == "connected", timeout=30, what="the serial source connected")
        feeder.start()
        wait_for(lambda: sources().get("replay") == "finished", timeout=30, what="the replay finished")
        t_end = time.monotonic()
        time.sleep(4 * HOLD_S + 1.0)  # the finished replay's sensor has been quiet for far longer than MAX_HOLD_S
        assert a.alive(), a.log[-3000:]
        after = rec.since(t_end, "status") + [status()]
        bad = [s for s in after if s["assets"]["bench"].get("reasons") or s["state"] == "degraded"]
        assert not bad, ([s.get("reasons") for s in bad], a.log[-4000:])
        final = status()
        assert final["assets"]["bench"]["state"] in ("calibrating", "online"), final
        assert final["assets"]["line"]["state"] in ("calibrating", "online"), final  # the live one well too
        assert "silent for more than" not in a.log  # no sensor of the finished replay taken as silent
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(5)
        pty.unplug()
    a.stop()
