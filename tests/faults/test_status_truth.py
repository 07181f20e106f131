"""The retained status tells the truth after a connection that died without a word (a hung broker, a network
partition): statuses published into the dead connection and never acknowledged must not be sent again after the
fresh one on the reconnect, or the broker keeps a stale status as the retained one.

The broker is stopped with SIGSTOP (its TCP connections stay open, nothing is acknowledged), the serial adapter (a
pty) is unplugged and plugged back in while it hangs (two statuses the broker never acknowledges), the agent gives
up on the connection (keepalive), the adapter is unplugged again, and the broker comes back: the retained status
must say ``source disconnected``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import Broker, Pty, Recorder, start_agent, wait_for
from tests.faults.conftest import BASE, agent_env


def _plug(link: Path) -> Pty:
    pty = Pty()
    tmp = link.with_name(link.name + ".tmp")
    tmp.symlink_to(pty.path)
    os.replace(tmp, link)
    return pty


def _retained_status(port: int) -> dict:
    r = Recorder(port, f"{BASE}/status")
    try:
        return wait_for(lambda: (r.on("status") or [None])[-1], timeout=10, what="the retained status")
    finally:
        r.close()


def test_stale_status_not_resent_after_a_silent_connection_loss(tmp_path, agents):
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    broker.start()
    link = tmp_path / "usb-serial"
    ptys = [_plug(link)]
    env = agent_env(tmp_path / "state", broker.port, EDGE_AGENT_MODEL__PATH="generic",
                    EDGE_AGENT_SOURCE__KIND="serial", EDGE_AGENT_SOURCE__PORT=link,
                    EDGE_AGENT_SOURCE__FORMAT="csv", EDGE_AGENT_SOURCE__CHANNELS="a,b",
                    EDGE_AGENT_SOURCE__RECONNECT_MIN_S="0.2", EDGE_AGENT_SOURCE__RECONNECT_MAX_S="0.5",
                    EDGE_AGENT_MQTT__KEEPALIVE_S="5")
    a = start_agent(env, tmp_path)
    agents.append(a)
    try:
        first = wait_for(lambda: (s := _retained_status(broker.port))["source"]["state"] == "connected" and s,
                         timeout=30, what="status: serial source connected")
        assert "source disconnected" not in first.get("reasons", []), first
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)  # hung: nothing acknowledged, the TCP connection stays up
        ptys[0].unplug()
        link.unlink()
        wait_for(lambda: a.log.count("disconnected (") >= 1, timeout=10, what="the unplug seen")
        time.sleep(1.0)  # the degraded status goes into the dead connection
        ptys.append(_plug(link))
        wait_for(lambda: "connected again" in a.log, timeout=10, what="the replug seen")
        time.sleep(1.0)  # and the recovered one
        wait_for(lambda: "Keep alive timeout" in a.log, timeout=30, what="the agent giving up on the connection")
        ptys[1].unplug()
        link.unlink()
        wait_for(lambda: a.log.count("disconnected (") >= 2, timeout=10, what="the second unplug seen")
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait()
        broker.proc = None
        broker.start()
        wait_for(lambda: "connected to 127.0.0.1:%d again" % broker.port in a.log, timeout=30, what="reconnect")
        time.sleep(2.0)  # whatever paho still had to send has been sent
        st = _retained_status(broker.port)
        assert st["source"]["state"] == "disconnected", st
        assert st["state"] == "degraded" and "source disconnected" in st.get("reasons", []), st
    finally:
        for p in ptys:
            p.unplug()
        if broker.proc is not None:
            os.kill(broker.proc.pid, signal.SIGCONT)
        a.stop(signal.SIGTERM)
        broker.stop()
