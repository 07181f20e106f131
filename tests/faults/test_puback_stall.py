"""A connection that stays alive but on which a PUBACK does not come (a broker or a middlebox swallowing the agent's
PUBLISHes, the connection itself accepted) must not hold the alerts for ever: after EDGE_AGENT_MQTT__ACK_TIMEOUT_S
the agent drops it, reconnects, and every alert arrives, in order. Over MQTT 5 and 3.1.1 alike: neither lets a
client send a message again on the same connection. The real agent process, a real mosquitto behind a proxy that
parses the MQTT packets (tests/faults/proxy.py: SwallowingProxy, DroppingOneProxy)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Recorder, start_agent, wait_for
from tests.faults.conftest import ALERT_LINE, agent_env, fault_recording, taught_state
from tests.faults.proxy import DroppingOneProxy, SwallowingProxy

BASE = "edge/test-gw"
ACK_TIMEOUT_S = 3
OUTAGE_WARNING = "alerts and summaries stay in the outbox"  # agent/uplink.py, _outage


def _env(state: Any, port: int, tmp_path: Any, speed: int, **extra: Any) -> dict[str, str]:
    # a summary every second of wall time: rows to publish (and to acknowledge) from the first seconds on
    return agent_env(state, port, EDGE_AGENT_SOURCE__PATH=fault_recording(tmp_path / "fault.csv", copies=2),
                     EDGE_AGENT_SOURCE__SPEED=speed, EDGE_AGENT_SUMMARY_INTERVAL_S=str(speed),
                     EDGE_AGENT_MQTT__KEEPALIVE_S="5", EDGE_AGENT_MQTT__ACK_TIMEOUT_S=str(ACK_TIMEOUT_S),
                     EDGE_AGENT_STATS_INTERVAL_S="1", EDGE_AGENT_DRAIN_TIMEOUT_S="30", **extra)


def _every_alert(rec: Recorder, log: str) -> list[tuple[str, str]]:
    """Every alert row the log raised or cleared reached the broker, each alert's clear after its raise; returns
    (state, window_end) in order of first arrival (a resend is a duplicate with the same id). Rows of different
    alerts pending together go out in order, except one held behind its own alert's row in flight
    (agent/uplink_refusals.py: a raise of the next alert may pass an earlier alert's clear)."""
    raised_in_log = ALERT_LINE.findall(log)
    assert "raised" in [s for s, _ in raised_in_log], log
    wait_for(lambda: len({x["id"] for x in rec.on("alerts")}) >= len(raised_in_log), timeout=10,
             what=f"all {len(raised_in_log)} alerts at the broker")
    seen: set[str] = set()
    unique = [x for x in rec.on("alerts") if not (x["id"] in seen or seen.add(x["id"]))]
    arrived = [(x["state"], x["window_end"]) for x in unique]
    assert sorted(arrived) == sorted(raised_in_log), (arrived, raised_in_log)
    for alert in {x["alert_id"] for x in unique}:
        assert [x["state"] for x in unique if x["alert_id"] == alert] == ["raised", "cleared"], unique
    return arrived


def _uplink_stats(rec: Recorder, ack_timeouts: int) -> dict[str, Any]:
    stats = wait_for(lambda: next((s for s in reversed(rec.on("stats")) if s["uplink"]["ack_timeouts"] >= ack_timeouts),
                                  None), timeout=10, what=f"{ack_timeouts} ack_timeouts in the stats")
    return dict(stats["uplink"])


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_hung_broker_is_dropped_each_time_with_one_warning_and_no_alert_is_held(
    tmp_path, taught, agents, live_broker, protocol
) -> None:
    """A broker that accepts connections and answers pings but no PUBLISH, three connections in a row (swallowing
    from their start): each is dropped a few seconds in, well within the 10 s in which a connection the broker ends
    counts as taken over by a second client (short_connections); then a broker that answers gets every alert."""
    hung = 3
    proxy = SwallowingProxy(live_broker.port)
    proxy.swallow_upto = hung
    state = taught_state(taught, tmp_path / "state")
    rec = Recorder(live_broker.port, f"{BASE}/#")
    try:
        # 20x: the first alert is raised ~8 s in, while the broker still hangs; the recording ends ~19 s in, some
        # seconds after the connection that holds (stats on it)
        a = start_agent(_env(state, proxy.port, tmp_path, 20, EDGE_AGENT_MQTT__PROTOCOL=protocol), tmp_path / "logs")
        agents.append(a)
        assert a.proc.wait(120) == 0, a.log  # the recording ends; the outbox drains
        log = a.log
        _every_alert(rec, log)

        assert proxy.accepted == hung + 1, log
        assert proxy.publishes_swallowed >= hung
        # one warning for the hung broker, not one per drop: neither the outage warning (a drop is not a broker
        # outage) nor the taken-over warning, and the drops after the first at INFO
        assert log.count("WARNING agent.uplink: no PUBACK from 127.0.0.1") == 1, log
        assert log.count("no PUBACK from 127.0.0.1") == hung, log
        assert OUTAGE_WARNING not in log, log
        assert "is another client connected" not in log, log
        uplink = _uplink_stats(rec, hung)
        assert uplink["ack_timeouts"] == hung, uplink
        assert uplink["short_connections"] == 0, uplink  # the agent's drops, not the broker's
        assert uplink["connect_failures"] == hung, uplink  # connections lost, as the README's stats table says
    finally:
        rec.close()
        proxy.close()


def test_one_lost_publish_is_sent_again_while_the_rows_after_it_are_acknowledged(
    tmp_path, taught, agents, live_broker
) -> None:
    """A middlebox loses one PUBLISH (the first alert's raise) and passes everything else: the PUBACKs of the
    summaries published after it keep coming, and say (in order, MQTT 4.6) that the raise's never will. The
    connection is dropped once and the raise sent again on the next one: it arrives before the next alert is raised
    (~12 s later), not when the summaries stop at the end of the recording."""
    proxy = DroppingOneProxy(live_broker.port, "/alerts")
    state = taught_state(taught, tmp_path / "state")
    rec = Recorder(live_broker.port, f"{BASE}/#")
    try:
        # 15x: an alert raised ~11 s and ~23 s in, a summary acknowledged every second all along
        a = start_agent(_env(state, proxy.port, tmp_path, 15), tmp_path / "logs")
        agents.append(a)
        assert a.proc.wait(120) == 0, a.log
        log = a.log
        # in the log's order: the first alert's raise (and clear) before the second alert's raise, resent meanwhile
        assert _every_alert(rec, log) == ALERT_LINE.findall(log), log

        assert proxy.dropped_on == 1 and proxy.publishes_swallowed == 1
        assert proxy.accepted == 2, log
        assert log.count("no PUBACK from 127.0.0.1") == 1, log
        assert OUTAGE_WARNING not in log, log
        uplink = _uplink_stats(rec, 1)
        assert uplink["ack_timeouts"] == 1, uplink
    finally:
        rec.close()
        proxy.close()
