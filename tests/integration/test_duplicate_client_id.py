"""Two gateways with one device id (a cloned SD card keeps the host name, the default device id) connect with one
MQTT client id: the broker lets each in by throwing the other out, again and again. The agent says what that
almost always is, once, instead of a line per reconnect, and says when a connection holds again.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import AgentProcess, agent_env, start_agent, wait_for

TAKEN = "is another client connected with the client id 'edge-agent-test-gw'?"


def _two_on_one_id(tmp_path: Path, port: int, agents: list) -> tuple[AgentProcess, AgentProcess]:
    """Two agents with one device id (own state directories, else the second is refused), the first connected
    before the second starts; returns once the first has named the duplicate client id."""
    def env(state: str) -> dict[str, str]:
        return agent_env(tmp_path / state, port, EDGE_AGENT_SOURCE__SPEED="1", EDGE_AGENT_DRAIN_TIMEOUT_S="1",
                         EDGE_AGENT_STATS_INTERVAL_S="1")

    first = start_agent(env("one"), tmp_path / "logs")
    agents.append(first)
    wait_for(lambda: "connected to" in first.log, timeout=60, what="the first agent connected")
    second = start_agent(env("two"), tmp_path / "logs")
    agents.append(second)
    wait_for(lambda: TAKEN in first.log, timeout=90, what="the first agent naming the duplicate client id")
    return first, second


def test_two_agents_with_one_client_id_are_named_once_not_logged_per_reconnect(tmp_path: Path, live_broker,
                                                                                recorder, agents) -> None:
    rec = recorder("edge/test-gw/stats")
    first, second = _two_on_one_id(tmp_path, live_broker.port, agents)
    at_warning = first.log
    assert "EDGE_AGENT_DEVICE_ID" in at_warning
    time.sleep(8)  # the two keep taking each other's place meanwhile
    during = first.log[len(at_warning):]
    assert "connected to" not in during and "disconnected from" not in during, during
    assert at_warning.count("disconnected from") <= 2, at_warning  # the lines before it was recognised

    assert second.stop() == 0
    wait_for(lambda: "holds again" in first.log, timeout=40, what="the first agent's connection holding again")
    assert first.log.count(TAKEN) == 1, first.log
    assert first.alive()
    t0 = time.monotonic()
    stats = wait_for(lambda: next(iter(rec.since(t0, "stats")), None), timeout=20, what="stats after it holds")
    up = stats["uplink"]
    assert up["short_connections"] >= 3 and up["connects"] > up["short_connections"], up


def test_a_broker_outage_while_taken_over_is_still_logged(tmp_path: Path, live_broker, agents) -> None:
    first, second = _two_on_one_id(tmp_path, live_broker.port, agents)
    at_warning = len(first.log)
    second.stop()
    live_broker.stop()  # now the broker is down: that is what the log must say, not the client id
    try:
        wait_for(lambda: "stay in the outbox" in first.log[at_warning:], timeout=60, what="the outage logged")
    finally:
        live_broker.start()
    wait_for(lambda: "again; publishing" in first.log[at_warning:], timeout=60, what="the reconnect logged")
    assert first.alive()
