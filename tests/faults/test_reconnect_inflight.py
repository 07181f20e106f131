"""A publisher batch caught by a reconnect must not leak paho's in-flight slots: a large outbox drains through a
connection that a TCP proxy cuts again and again, and every alert arrives.

paho counts the QoS 1 messages it has sent and not had acknowledged (at most ``max_inflight``); past that it queues
a publish instead of sending it, and a PUBACK frees a slot. A batch that was busy when the connection died went on
after paho had reconnected, before ``_reset_inflight`` (which waits for the batch) took back what the last
connection left unacknowledged: its publish went out on the new socket and counted a slot there, and taking the
message back did not free that slot. Once ``max_inflight`` slots leaked, every publish was queued and the uplink
stalled on a healthy link until the next reconnect.

Each cut catches a batch, held (as a loaded gateway would hold it) until paho is on its new socket:
- while reading the outbox (a slow SD card): the batch must see the connection is gone and publish nothing; had it
  published, the row would also be sent again after the reconnect (caught as an alert arriving twice), and with
  the slot not freed either the uplink stalls;
- just before handing a row to paho (it saw itself connected a moment before): the row does go out on the new
  socket, and taking it back must free its slot, or the uplink stalls.
The uplink itself, paho, a real mosquitto behind a real TCP proxy, a real SQLite outbox.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.counters import Counters
from agent.outbox import Outbox, Row
from agent.records import Outgoing
from agent.settings import MqttSettings
from agent.uplink import Uplink
from tests.conftest import Recorder, wait_for
from tests.faults.proxy import Proxy

ALERTS = 1500
CUTS = 5
MAX_INFLIGHT = 1  # one leaked slot stalls the uplink: the first batch a cut catches shows it


class Gate:
    """Holds the uplink thread at one point until the test lets it go: armed, the next pass waits there."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def arm(self) -> None:
        self.entered.clear()
        self.release.clear()
        self.armed = True

    def pass_(self) -> None:
        if self.armed and threading.current_thread().name == "uplink":
            self.armed = False
            self.entered.set()
            self.release.wait(30)


class SlowOutbox(Outbox):
    """A real outbox whose read of the pending rows can be held (a slow SD card under a loaded gateway)."""

    gate: Gate

    def pending(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[Row]:
        self.gate.pass_()
        return super().pending(limit, exclude)


@pytest.fixture
def proxied(live_broker: Any) -> Iterator[Proxy]:
    proxy = Proxy(live_broker.port)
    yield proxy
    proxy.close()


def _uplink(tmp_path: Path, port: int, outbox_gate: Gate) -> tuple[Uplink, SlowOutbox]:
    outbox = SlowOutbox(tmp_path / "outbox.db", Counters())
    outbox.gate = outbox_gate
    for i in range(ALERTS):
        outbox.put(Outgoing(kind="alert", topic_suffix="alerts", payload={"id": f"a{i}", "state": "raised"}))
    settings = MqttSettings(host="127.0.0.1", port=port, max_inflight=MAX_INFLIGHT, keepalive_s=60)
    return Uplink(settings, "inflight-gw", outbox, Counters(), status=lambda: {"state": "online"}), outbox


def _hold_at_paho_call(up: Uplink, gate: Gate) -> None:
    """Hold the batch just before it hands a row to paho (after it looked whether it is connected)."""
    publish: Callable[..., Any] = up.client.publish

    def held(topic: str, *a: Any, **kw: Any) -> Any:
        if topic.endswith("/alerts"):
            gate.pass_()
        return publish(topic, *a, **kw)

    up.client.publish = held  # type: ignore[method-assign]


@pytest.mark.parametrize("hold", ["reading the outbox", "handing a row to paho"])
def test_a_batch_caught_by_a_reconnect_leaks_no_inflight_slot(tmp_path: Path, live_broker, proxied, hold: str) -> None:
    gate = Gate()
    recorder = Recorder(live_broker.port, "edge/inflight-gw/alerts")
    at_outbox = hold == "reading the outbox"
    up, outbox = _uplink(tmp_path, proxied.port, gate if at_outbox else Gate())
    if not at_outbox:
        _hold_at_paho_call(up, gate)
    try:
        up.start()
        for cut in range(CUTS):
            # rows flow on this connection (20 more arrive), then the next batch is caught by the cut, mid-way
            wait_for(up.connected.is_set, timeout=30, what=f"the uplink connected before cut {cut + 1}")
            before = len(recorder.on("alerts"))
            wait_for(lambda: len(recorder.on("alerts")) >= before + 20, timeout=30,  # noqa: B023
                     what=f"alerts flowing before cut {cut + 1} (outbox depth {outbox.depth()}, paho in flight "
                          f"{up.client._inflight_messages}/{MAX_INFLIGHT})")  # noqa: SLF001
            gate.arm()
            assert gate.entered.wait(30), "the publisher never started another batch"
            accepted = proxied.accepted
            proxied.cut()
            wait_for(lambda: not up.connected.is_set(), timeout=10, what="the uplink to see the cut")
            proxied.heal()
            # paho reconnects (after its 1 s delay): the batch, still held, is now in front of a new socket
            wait_for(lambda: proxied.accepted > accepted, timeout=15, what="paho connecting again")  # noqa: B023
            wait_for(lambda: up.client._sock is not None, timeout=5, what="paho's new socket")  # noqa: SLF001
            gate.release.set()
        wait_for(lambda: outbox.depth() == 0, timeout=60,
                 what=f"the outbox to empty after {CUTS} cuts (depth {outbox.depth()}, paho in flight "
                      f"{up.client._inflight_messages}/{MAX_INFLIGHT})")  # noqa: SLF001
        wait_for(lambda: len({x['id'] for x in recorder.on('alerts')}) == ALERTS, timeout=15,
                 what="every alert at the subscriber")
        ids = [x["id"] for x in recorder.on("alerts")]
        assert set(ids) == {f"a{i}" for i in range(ALERTS)}
        if at_outbox:  # nothing was in flight when a cut came: nothing needed sending twice
            assert len(ids) == ALERTS, f"{len(ids) - ALERTS} alerts published twice"
    finally:
        gate.release.set()
        up.stop()
        recorder.close()
        outbox.close()
