"""The monitor's MQTT client (paho-mqtt 2, built like the uplink's: user name, password file, TLS) feeding a
:class:`~agent.monitoring.fleet.Fleet`."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from agent.monitoring.fleet import Fleet


class MonitorClient:
    """The paho-mqtt 2 client feeding a :class:`Fleet`; subscriptions are (re)made in on_connect."""

    def __init__(self, fleet: Fleet, host: str, port: int, mqtt_settings: Any | None = None):
        from agent.mqtt_client import BrokerConnection, make_client, upstream_connection

        self.fleet = fleet
        self.host, self.port = host, port
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connack = threading.Event()
        self.refused: str | None = None
        self._pending_mids: set[int] = set()
        self._lock = threading.Lock()
        s = mqtt_settings
        conn = upstream_connection(s) if s is not None else BrokerConnection(host, port)
        conn = BrokerConnection(**{**conn.__dict__, "host": host, "port": port})  # --host/--port win
        c = make_client(conn, f"edge-agent-monitor-{socket.gethostname()}-{os.getpid()}", log_name="paho.monitor")
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    def connect(self, keepalive: int = 30) -> None:
        """Connect now (raises OSError when the broker cannot be reached) and start the network thread."""
        self.client.connect(self.host, self.port, keepalive=keepalive)
        self.client.loop_start()

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.client.loop_stop()

    # -- paho callbacks (network thread; must never raise) ---------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                hint = ""
                if str(reason_code) in ("Not authorized", "Bad user name or password"):
                    hint = " (check EDGE_AGENT_MQTT__USERNAME and the password file)"
                self.refused = f"broker {self.host}:{self.port} refused the connection: {reason_code}{hint}"
                self.connack.set()
                return
            self.refused = None
            p = self.fleet.prefix
            result, mid = client.subscribe([(f"{p}/+/status", 1), (f"{p}/+/stats", 0), (f"{p}/+/alerts", 1),
                                            (f"{p}/+/advice", 1), (f"{p}/+/asset/+/alerts", 1),
                                            (f"{p}/+/asset/+/advice", 1)])
            with self._lock:
                self._pending_mids.add(mid)
            self.connected.set()
            self.connack.set()
        except Exception:  # noqa: BLE001 - an exception must not escape into paho's thread
            self.refused = "internal error in on_connect"
            self.connack.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            self.connected.clear()
        except Exception:  # noqa: BLE001
            pass

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        try:
            with self._lock:
                self._pending_mids.discard(mid)
            if all(not getattr(rc, "is_failure", False) for rc in reason_codes):
                self.subscribed.set()
            else:
                self.refused = f"broker {self.host}:{self.port} refused the subscription to {self.fleet.prefix}/+/…"
        except Exception:  # noqa: BLE001
            pass

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.fleet.handle(msg.topic, bytes(msg.payload), bool(msg.retain), time.time())
        except Exception:  # noqa: BLE001 - a bad message must not stop the monitor
            self.fleet.bad_messages += 1
