"""When a missing PUBACK makes the uplink drop its connection (agent/uplink_acks.py): the pure timing decision, and
the watch's once-per-connection drop on a real socket. The whole story with mosquitto: tests/faults/test_puback_stall.py."""

from __future__ import annotations

import logging
import math
import socket
from pathlib import Path
from typing import Any

import pytest

from agent.counters import Counters
from agent.outbox import Outbox
from agent.records import Outgoing
from agent.settings import ConfigError, MqttSettings, load_settings
from agent.uplink import Uplink
from agent.uplink_acks import AckWatch, overdue

T = 60.0


def test_nothing_in_flight_is_never_overdue() -> None:
    assert not overdue(1e9, None, -1e9, T)


def test_a_publish_without_puback_is_overdue_after_the_timeout() -> None:
    assert not overdue(100.0 + T - 0.1, 100.0, -1e9, T)
    assert overdue(100.0 + T, 100.0, -1e9, T)


def test_a_slow_link_whose_pubacks_keep_coming_is_never_overdue() -> None:
    # a full window drains one PUBACK every 50 s: the oldest row waits 500 s, yet acks are progress
    oldest = 0.0
    for k in range(1, 11):
        now = k * 50.0
        assert not overdue(now, oldest, now - 50.0 + 1.0, T), k  # last PUBACK 49 s ago
        oldest = now - 50.0 + 1.0  # the row acked then was the oldest; the next oldest is younger still


def test_the_clock_starts_at_the_publish_when_the_last_puback_is_older() -> None:
    # idle for an hour (last PUBACK long ago), then a publish: it has its full timeout, not none
    assert not overdue(3600.0 + T - 1, 3600.0, 0.0, T)
    assert overdue(3600.0 + T, 3600.0, 0.0, T)


def test_no_puback_since_the_last_one_is_overdue() -> None:
    assert overdue(200.0 + T, 10.0, 200.0, T)
    assert not overdue(200.0 + T - 1, 10.0, 200.0, T)


class _Client:
    """What AckWatch uses of paho's client: ``socket()``; here one end of a real socket pair."""

    def __init__(self, sock: socket.socket | None):
        self._sock = sock

    def socket(self) -> Any:
        return self._sock


def test_the_watch_drops_a_stalled_connection_once_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    ours, broker = socket.socketpair()
    counters = Counters()
    w = AckWatch(T, counters, "broker:1883")
    try:
        with caplog.at_level(logging.WARNING, logger="agent.uplink"):
            assert not w.check(_Client(ours), 100.0 + T - 1, [100.0, 101.0])
            assert w.check(_Client(ours), 100.0 + T, [100.0, 101.0])
            assert broker.recv(16) == b""  # shut down: the peer (paho's reader, the broker) sees the end
            assert w.dropped
            assert not w.check(_Client(ours), 100.0 + 2 * T, [100.0, 101.0])  # once per connection
        assert counters.get("uplink.ack_timeouts") == 1
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "no PUBACK from broker:1883 for 60 s while 2 messages await one" in warnings[0]
        w.connected()  # a new connection
        assert not w.dropped
    finally:
        ours.close()
        broker.close()


def test_the_watch_does_nothing_without_a_socket() -> None:
    counters = Counters()
    w = AckWatch(T, counters, "broker:1883")
    assert not w.check(_Client(None), 1e6, [0.0])
    assert counters.get("uplink.ack_timeouts") == 0 and not w.dropped


def test_timeouts_in_a_row_without_a_puback_warn_once_per_10_minutes(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    w = AckWatch(T, counters, "b:1")
    with caplog.at_level(logging.WARNING, logger="agent.uplink"):
        for k in range(5):  # a hung broker: every connection stalls, one a minute
            a, b = socket.socketpair()
            w.connected()
            assert w.check(_Client(a), k * 70.0 + T, [k * 70.0])
            a.close()
            b.close()
        w.acked(400.0)  # PUBACKs come again: the next stall is a new occurrence
        a, b = socket.socketpair()
        w.connected()
        assert w.check(_Client(a), 500.0 + T, [500.0])
        a.close()
        b.close()
    assert counters.get("uplink.ack_timeouts") == 6
    assert len(caplog.records) == 2, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("value, why", [("0", "greater than 0"), ("-1", "greater than 0"), ("nan", "finite number")])
def test_the_timeout_must_be_a_positive_number(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, {"EDGE_AGENT_MQTT__ACK_TIMEOUT_S": value})
    assert f"EDGE_AGENT_MQTT__ACK_TIMEOUT_S='{value}': Input should be" in str(e.value) and why in str(e.value)


def test_the_default_is_60_s() -> None:
    assert load_settings(None, {}).mqtt.ack_timeout_s == 60.0


def test_only_the_oldest_rows_puback_restarts_the_clock(tmp_path: Path) -> None:
    """PUBACKs come in publish order (MQTT 4.6): one for a newer row says the oldest row's never comes on this
    connection, so it must not keep that row waiting (a middlebox that lost one PUBLISH; the rows after it acked)."""
    outbox = Outbox(tmp_path / "outbox.db", Counters())
    rows = [outbox.put(Outgoing(kind="summary", topic_suffix="summaries", payload={"id": f"s{k}"})) for k in range(3)]
    up = Uplink(MqttSettings(ack_timeout_s=T), "gw", outbox, Counters(), status=dict)
    try:
        up._inflight = {1: (rows[0], 100.0), 2: (rows[1], 101.0), 3: (rows[2], 102.0)}
        up._on_publish(up.client, None, 2, None, None)  # the second row's PUBACK: the first one's is lost
        assert up.acks._last_ack == -math.inf
        assert overdue(100.0 + T, min(t for _, t in up._inflight.values()), up.acks._last_ack, T)
        up._on_publish(up.client, None, 1, None, None)  # the oldest row's: progress
        assert up.acks._last_ack > 0 and list(up._inflight) == [3]
    finally:
        up.client.loop_stop()
        outbox.close()
