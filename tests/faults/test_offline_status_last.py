"""A clean stop's retained ``offline`` status is the last status: a status being built while the uplink stops (the
health thread, a reconnection, a command) goes out before it, never after it. Before, ``stop`` published the
offline status without the status lock, and a status published between it and the disconnection (one PUBACK round
trip, here made 1.5 s by a proxy that holds PUBACKs back) became the retained one: a stopped gateway shown online.
The uplink itself, paho, a real mosquitto behind a real TCP proxy, a real SQLite outbox."""

from __future__ import annotations

import json
import socket
import threading
import time

import paho.mqtt.client as mqtt

from agent.counters import Counters
from agent.outbox import Outbox
from agent.settings import MqttSettings
from agent.uplink import Uplink
from tests.conftest import wait_for
from tests.faults.proxy import Proxy, packet_length, pipe

PUBACK = 4


class SlowAckProxy(Proxy):
    """Forwards everything; PUBACKs from the broker only ``delay_s`` after they came, once ``slow`` is set."""

    def __init__(self, broker_port: int, delay_s: float):
        super().__init__(broker_port)
        self.delay_s = delay_s
        self.slow = threading.Event()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        if upstream:
            pipe(src, dst)
            return
        buf = b""

        def forward(data: bytes) -> bool:
            nonlocal buf
            buf += data
            while (n := packet_length(buf)) is not None and len(buf) >= n:
                packet, buf = buf[:n], buf[n:]
                if packet[0] >> 4 == PUBACK and self.slow.is_set():
                    time.sleep(self.delay_s)
                dst.sendall(packet)
            return True

        pipe(src, dst, forward)


def retained_status(port: int, topic: str) -> dict:
    got: list[dict] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retained-reader")
    c.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    try:
        wait_for(lambda: got, timeout=10, what="the retained status")
        return got[-1]
    finally:
        c.loop_stop()
        c.disconnect()


def test_a_status_built_while_stopping_does_not_overwrite_the_offline_status(tmp_path, live_broker):
    proxy = SlowAckProxy(live_broker.port, delay_s=1.5)
    building, go = threading.Event(), threading.Event()
    calls = {"n": 0}

    def status() -> dict:
        calls["n"] += 1
        if calls["n"] > 1:  # the first is the status on connect; the next one is held while the uplink stops
            building.set()
            go.wait(10)
        return {"state": "online", "device_id": "last-gw", "n": calls["n"]}

    outbox = Outbox(tmp_path / "outbox.db", Counters())
    up = Uplink(MqttSettings(host="127.0.0.1", port=proxy.port), "last-gw", outbox, Counters(), status=status)
    try:
        up.start()
        wait_for(lambda: up.connected.is_set() and calls["n"] == 1, timeout=20, what="connected, status published")
        time.sleep(0.5)  # its PUBACK is back
        proxy.slow.set()
        late = threading.Thread(target=up.publish_status)  # e.g. the health thread, just before the stop
        late.start()
        assert building.wait(10)
        stopping = threading.Thread(target=up.stop)
        stopping.start()
        time.sleep(0.5)  # the stop has begun (before: the offline status is out, its PUBACK held back)
        go.set()
        late.join(10)
        stopping.join(20)
        assert not late.is_alive() and not stopping.is_alive()
        st = retained_status(live_broker.port, "edge/last-gw/status")
        assert st["state"] == "offline" and st["reason"] == "shutdown", st
    finally:
        go.set()
        proxy.close()
        outbox.close()


def test_a_status_asked_for_while_the_offline_status_awaits_its_puback_is_not_published(tmp_path, live_broker):
    """The stop has published the offline status and waits for its PUBACK (held 1.5 s): the connection is still up.
    A status asked for now (a state change, a command) is not published: it would be the retained one."""
    proxy = SlowAckProxy(live_broker.port, delay_s=1.5)
    outbox = Outbox(tmp_path / "outbox.db", Counters())
    built: list[int] = []

    def status() -> dict:
        built.append(1)
        return {"state": "online", "device_id": "last-gw2"}

    up = Uplink(MqttSettings(host="127.0.0.1", port=proxy.port), "last-gw2", outbox, Counters(), status=status)
    try:
        up.start()
        wait_for(lambda: up.connected.is_set() and built, timeout=20, what="connected, status published")
        time.sleep(0.5)  # the first status's PUBACK is back
        proxy.slow.set()
        stopping = threading.Thread(target=up.stop)
        stopping.start()
        time.sleep(0.5)  # the offline status is out, its PUBACK held back
        assert up.connected.is_set() and stopping.is_alive()
        up.publish_status()
        assert not up.publish_now("stats", {"device_id": "last-gw2", "state": "online"})  # stats: not after it either
        stopping.join(20)
        assert not stopping.is_alive()
        st = retained_status(live_broker.port, "edge/last-gw2/status")
        assert st["state"] == "offline" and st["reason"] == "shutdown", st
    finally:
        proxy.close()
        outbox.close()
