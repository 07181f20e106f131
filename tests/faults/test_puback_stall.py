"""A connection that stays alive but on which no PUBACK comes (a broker or a middlebox swallowing the agent's
PUBLISHes, PINGREQ/PINGRESP still passing) must not hold the alerts for ever: after EDGE_AGENT_MQTT__ACK_TIMEOUT_S
the agent drops it, reconnects, and every alert arrives, in order. Over MQTT 5 and 3.1.1 alike: neither lets a
client send a message again on the same connection. The real agent process, a real mosquitto behind a proxy that
parses the MQTT packets (tests/faults/proxy.py: SwallowingProxy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Recorder, start_agent, wait_for
from tests.faults.conftest import ALERT_LINE, agent_env, fault_recording, taught_state
from tests.faults.proxy import SwallowingProxy

BASE = "edge/test-gw"
SPEED = 15  # the fault recording raises an alert ~170 s into each copy: ~11 s of wall time, clears it ~1.6 s later
ACK_TIMEOUT_S = 6  # above the keepalive: a PINGREQ passes while the PUBLISHes are swallowed


@pytest.fixture
def swallowing(live_broker: Any) -> Iterator[SwallowingProxy]:
    proxy = SwallowingProxy(live_broker.port)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_pubacks_that_never_come_on_a_live_connection_do_not_hold_the_alerts(
    tmp_path, taught, agents, live_broker, swallowing, protocol
) -> None:
    state = taught_state(taught, tmp_path / "state")
    rec = Recorder(live_broker.port, f"{BASE}/#")
    try:
        env = agent_env(state, swallowing.port, EDGE_AGENT_SOURCE__PATH=fault_recording(tmp_path / "fault.csv", copies=2),
                        EDGE_AGENT_SOURCE__SPEED=SPEED, EDGE_AGENT_MQTT__PROTOCOL=protocol,
                        EDGE_AGENT_MQTT__KEEPALIVE_S="5", EDGE_AGENT_MQTT__ACK_TIMEOUT_S=str(ACK_TIMEOUT_S),
                        EDGE_AGENT_STATS_INTERVAL_S="1", EDGE_AGENT_DRAIN_TIMEOUT_S="30")
        a = start_agent(env, tmp_path / "logs")
        agents.append(a)
        # the first connection carries PUBLISHes (this agent's online status: live, not an earlier test's retained
        # one), then swallows them before any alert
        wait_for(lambda: any(t == f"{BASE}/status" and not retained and p.get("state") == "online"
                             for t, p, retained in list(rec.messages)), timeout=30,
                 what="the online status through the proxy")
        assert not ALERT_LINE.findall(a.log), a.log
        assert swallowing.accepted == 1
        swallowing.swallow()

        assert a.proc.wait(120) == 0, a.log  # the recording ends; the outbox drains
        log = a.log
        raised_in_log = ALERT_LINE.findall(log)
        assert "raised" in [s for s, _ in raised_in_log], log
        wait_for(lambda: len({x["id"] for x in rec.on("alerts")}) >= len(raised_in_log), timeout=10,
                 what=f"all {len(raised_in_log)} alerts at the broker")
        seen: set[str] = set()
        unique = [x for x in rec.on("alerts") if not (x["id"] in seen or seen.add(x["id"]))]
        assert [(x["state"], x["window_end"]) for x in unique] == raised_in_log  # every alert, in order

        # they were held on a connection that stayed alive, and the agent dropped it itself, once
        assert swallowing.publishes_swallowed >= 1
        assert swallowing.pings_while_swallowing >= 1
        assert swallowing.accepted == 2, log
        assert log.count("no PUBACK from 127.0.0.1") == 1, log
        stats = wait_for(lambda: next((s for s in reversed(rec.on("stats")) if s["uplink"]["ack_timeouts"]), None),
                         timeout=10, what="ack_timeouts in the stats")
        assert stats["uplink"]["ack_timeouts"] == 1, stats["uplink"]
        assert stats["uplink"]["short_connections"] == 0, stats["uplink"]  # the agent's drop, not the broker's
    finally:
        rec.close()
