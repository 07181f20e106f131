"""A connection that dies with an alert in flight: on the next connection the alerts go out in the order they were
raised. The `raised` was handed to the broker connection and never reached the broker (a partition: a TCP proxy
between the agent and a real mosquitto swallows it), the connection then breaks, and the `cleared` is written while
the agent is offline. Before the fix paho re-sent the unacknowledged `raised` only after the agent's own publisher
had already sent the newer `cleared` on the fresh connection: a subscriber saw the alert cleared before it was
raised. The status built in ``on_connect`` is made slow (tests/faults/launcher.py: a loaded gateway) to hold that
moment open; the real agent process, a real mosquitto.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import AgentProcess, ROOT, wait_for
from tests.faults.conftest import agent_env, fault_recording, taught_state
from tests.faults.proxy import Proxy

SPEED = 6  # the alert is raised ~170 s of data into the recording (~28 s) and cleared ~24 s of data later (4 s)


class SlowStatusAgent(AgentProcess):
    """The agent through tests/faults/launcher.py: the status published on each connect takes 6 s to build."""

    def __init__(self, env: dict[str, str], workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"agent-{time.monotonic_ns()}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.launcher", "slow-connect-status", "6", "run"], env=env, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=log, text=True,
            )


def test_an_alert_in_flight_when_the_connection_dies_still_arrives_before_its_clear(
    tmp_path: Path, durable_broker, durable_recorder, taught, agents
) -> None:
    proxy = Proxy(durable_broker.port)
    try:
        state = taught_state(taught, tmp_path / "state")
        rec = fault_recording(tmp_path / "fault.csv", copies=1)
        env = agent_env(state, proxy.port, EDGE_AGENT_SOURCE__PATH=rec, EDGE_AGENT_SOURCE__SPEED=SPEED,
                        EDGE_AGENT_SUMMARY_INTERVAL_S="3600", EDGE_AGENT_MQTT__KEEPALIVE_S="120")
        a = SlowStatusAgent(env, tmp_path / "logs")
        agents.append(a)
        wait_for(lambda: durable_recorder.on("status"), timeout=60, what="the first status at the broker")
        proxy.blackhole()  # from now on nothing the agent sends reaches the broker, and it cannot tell
        wait_for(lambda: b'"state":"raised"' in proxy.swallowed or not a.alive(), timeout=120,
                 what="the raised alert handed to the dead connection")
        assert a.alive(), a.log
        assert not durable_recorder.on("alerts")
        proxy.cut()  # the connection breaks; reconnecting is refused for now
        wait_for(lambda: "ALERT cleared" in a.log or not a.alive(), timeout=60, what="the alert cleared, offline")
        assert b'"state":"cleared"' not in proxy.swallowed  # written to the outbox while offline, not yet sent
        proxy.heal()
        wait_for(lambda: {x["state"] for x in durable_recorder.on("alerts")} >= {"raised", "cleared"}, timeout=90,
                 what="both the raised and the cleared alert at the broker")
        order = [x["state"] for x in durable_recorder.on("alerts")]
        assert order.index("raised") < order.index("cleared"), f"cleared before raised at the subscriber: {order}"
        seqs = [x["seq"] for x in durable_recorder.on("alerts")]
        assert seqs[0] == 1, seqs
    finally:
        proxy.close()
