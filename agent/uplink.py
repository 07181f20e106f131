"""The uplink: a paho-mqtt 2 client that publishes from the outbox at QoS 1 and keeps a retained status.

Threads: paho's network thread runs the callbacks (which never raise: an exception there wedges paho), and the
``uplink`` thread moves rows from the outbox into paho, at most ``max_inflight`` unacknowledged at once. A row
is deleted only in ``on_publish`` (the PUBACK). ``mid → row`` is tracked so that a message paho is still
re-sending after a reconnect is not published a second time by us.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.counters import Counters
from agent.outbox import Outbox
from agent.pipeline import iso
from agent.settings import MqttSettings

log = logging.getLogger(__name__)

INFLIGHT_STALE_S = 30.0  # a message still unacknowledged this long after a reconnect is published again


def read_password(s: MqttSettings) -> str | None:
    """The broker password: ``password_file``, else the systemd credential ``mqtt-password``, else ``password``."""
    candidates = []
    if s.password_file is not None:
        candidates.append(Path(s.password_file))
    elif os.environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mqtt-password")
    for p in candidates:
        if p.is_file():
            return p.read_text().rstrip("\r\n")
    return s.password.get_secret_value() if s.password is not None else None


class Uplink:
    """Publishes outbox rows and status to the upstream broker; reconnects by itself with backoff."""

    def __init__(
        self, settings: MqttSettings, device_id: str, outbox: Outbox, counters: Counters,
        status: Callable[[], dict[str, Any]],
    ):
        self.s = settings
        self.device_id = device_id
        self.outbox = outbox
        self.counters = counters
        self._status = status
        self.base = f"{settings.topic_prefix}/{device_id}"
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (row id, time published)
        self._outage_logged = False
        self._thread: threading.Thread | None = None
        self.bytes_out = 0
        self.last_error: str | None = None

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=settings.client_id or f"edge-agent-{device_id}",
            protocol=mqtt.MQTTv311, clean_session=True,
        )
        c.enable_logger(logging.getLogger("paho"))
        c.max_inflight_messages_set(settings.max_inflight)  # must precede connect()
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        if settings.username:
            c.username_pw_set(settings.username, read_password(settings))
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        self.client = c

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start publishing; never blocks on the broker."""
        will = {"state": "offline", "device_id": self.device_id, "ts": iso(time.time()), "reason": "connection lost"}
        self.client.will_set(self.topic("status"), json.dumps(will), qos=1, retain=True)
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive_s)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something new is in the outbox."""
        self._wake.set()

    def drain(self, idle_timeout_s: float) -> bool:
        """Wait until the outbox is empty; give up after ``idle_timeout_s`` without progress. True when drained."""
        last_depth, last_progress = None, time.monotonic()
        while True:
            depth = self.outbox.depth()
            if depth == 0:
                return True
            if depth != last_depth:
                last_depth, last_progress = depth, time.monotonic()
            if time.monotonic() - last_progress > idle_timeout_s:
                return False
            self._wake.set()
            time.sleep(0.05)

    def stop(self, reason: str = "shutdown") -> None:
        """Publish the retained ``offline`` status (when connected), disconnect, stop the threads."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.connected.is_set():
            body = json.dumps({"state": "offline", "device_id": self.device_id, "ts": iso(time.time()), "reason": reason})
            try:
                info = self.client.publish(self.topic("status"), body, qos=1, retain=True)
                info.wait_for_publish(timeout=3)
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish offline status: %s", e)
            self.client.disconnect()
        self.client.disable_logger()  # paho 2.2 logs a spurious "Client is not connected" after a disconnect
        self.client.loop_stop()

    def publish_status(self) -> None:
        """Publish the retained status now (on connect and whenever the state changes)."""
        if not self.connected.is_set():
            return
        body = json.dumps(self._status(), separators=(",", ":"))
        self.client.publish(self.topic("status"), body, qos=1, retain=True)
        self.bytes_out += len(body)

    # -- the publisher thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if self.connected.is_set():
                self._publish_pending()

    def _publish_pending(self) -> None:
        with self._lock:
            room = self.s.max_inflight - len(self._inflight)
            if room <= 0:
                return
            busy = {row for row, _ in self._inflight.values()}
        for row in self.outbox.pending(room, exclude=busy):
            payload = json.loads(row.payload)
            payload["sent_at"] = iso(time.time())
            body = json.dumps(payload, separators=(",", ":")).encode()
            with self._lock:  # held across publish so on_publish cannot look up the mid before it is recorded
                info = self.client.publish(self.topic(row.topic), body, qos=row.qos, retain=row.retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return  # not connected after all; try again on the next wake-up
                if row.qos == 0:
                    self.outbox.ack(row.id)
                else:
                    self._inflight[info.mid] = (row.id, time.monotonic())
            self.bytes_out += len(body)

    # -- paho callbacks (network thread; must never raise) ---------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not TCP (unix socket, websockets)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                self._outage(f"broker refused the connection: {reason_code}")
                return
            self.connected.set()
            self.counters.inc("uplink.connects")
            if self._outage_logged:
                log.info("connected to %s:%d again; publishing %d queued messages", self.s.host, self.s.port, self.outbox.depth())
            else:
                log.info("connected to %s:%d", self.s.host, self.s.port)
            self._outage_logged = False
            self.last_error = None
            with self._lock:  # messages paho did not get acknowledged in time are published again
                now = time.monotonic()
                for mid in [m for m, (_, t) in self._inflight.items() if now - t > INFLIGHT_STALE_S]:
                    del self._inflight[mid]
            self.publish_status()
            self._wake.set()
        except Exception:  # noqa: BLE001 - an exception must not escape into paho's thread
            log.exception("error in on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            self._outage(f"broker {self.s.host}:{self.s.port} unreachable")
        except Exception:  # noqa: BLE001
            log.exception("error in on_connect_fail")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            was = self.connected.is_set()
            self.connected.clear()
            if was and not self._stop.is_set():
                self._outage(f"disconnected from {self.s.host}:{self.s.port} ({reason_code})")
        except Exception:  # noqa: BLE001
            log.exception("error in on_disconnect")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        try:
            with self._lock:
                entry = self._inflight.pop(mid, None)
            if entry is not None:
                self.outbox.ack(entry[0])
                self.counters.inc("uplink.acked")
                self._wake.set()
        except Exception:  # noqa: BLE001
            log.exception("error in on_publish")

    def _outage(self, what: str) -> None:
        self.last_error = what
        self.counters.inc("uplink.connect_failures")
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("%s: alerts and summaries stay in the outbox and are sent when it answers (retrying)", what)
