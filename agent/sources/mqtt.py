"""MQTT source: subscribes to sensor topics with its own paho client and hands every parsed payload to the sink.

The sensor broker defaults to the upstream broker (``MqttSettings``) but may be another one with its own host,
port and credentials. Threads: ``run`` (the source thread) only starts paho and waits; paho's network thread runs
the callbacks, which parse and call ``sink`` directly (the sink of a live source never blocks). No exception ever
escapes a callback (one would kill paho's thread and the data would silently stop): each body is wrapped and
counted as ``source.callback_errors``.

paho reconnects by itself with backoff (``RECONNECT_MIN_S`` .. ``RECONNECT_MAX_S``); the session is clean, so the
subscriptions are sent again in every ``on_connect`` and data flows again after a broker restart without the
agent restarting. An outage is logged once, not once per retry.

Topic → sensor id: ``sensor_pattern`` (``plant/{sensor}/telemetry``; ``+`` and a final ``#`` are allowed as in
filters) must match the whole topic, else the message is counted ``reject.topic_mismatch``; an empty pattern
makes the whole topic the sensor id. Payloads are parsed by ``agent.payload.PayloadParser``: a payload that carries
a block of samples becomes one ``Block`` (counted as ``len(block)`` readings).

The message path is the hot path (every reading passes it on paho's thread): counts go to a lock-free ``Tally``
(only this thread writes it), a topic's route is looked up once and cached, the parser builds the record with its
sensor and asset, and nothing is logged per message.

Retained messages are skipped (``source.retained``): the broker re-sends them on every subscribe, that is on every
reconnect, and they are old readings, not new ones. Messages published while the broker holds no subscription
for us (agent down, outage) are not received: the session is clean.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from agent.counters import Counters
from agent.mqtt_client import describe_connect_error, explain_receive_failure, make_client, refused_hint, source_connection
from agent.payload import Coalescer
from agent.records import Block, Reading
from agent.receipt import receipt_time
from agent.settings import MqttSettings, MqttSourceSettings
from agent.sources import CONNECTED, CONNECTING, DISCONNECTED, Pacer, Sink
from agent.sources.mqtt_close import shutdown
from agent.sources.mqtt_read import BufferedReadClient
from agent.sources.mqtt_topics import (  # noqa: F401 - SENSOR, client_id_for, check_filter, ...: re-exported
    SENSOR, Route, check_filter, client_id_for, compile_routes, compile_sensor_pattern,
)

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1  # first retry after the sensor broker goes away; doubles per failure ...
RECONNECT_MAX_S = 8  # ... up to this: a sensor broker is usually on the LAN, data should flow again quickly
MAX_PAYLOAD_BYTES = 65536  # default EDGE_AGENT_SOURCE__MAX_PAYLOAD_BYTES: bigger is reject.payload_too_large, not parsed
MAX_PENDING = 512  # blocks: records held before a hand-over even in the middle of a burst
ROUTE_CACHE_MAX = 4096  # topics whose route is remembered (a flood of distinct topics only empties the cache)


class MqttSource:
    """Subscribes to ``topics`` on the sensor broker; every message becomes a Reading or a counted rejection."""

    live = True

    def __init__(
        self, settings: MqttSourceSettings, upstream: MqttSettings, counters: Counters, device_id: str | None = None,
        routes: list[tuple[str, MqttSourceSettings]] | None = None, blocks: bool = True, client_suffix: str = "",
    ) -> None:
        """``routes``: one client for several assets on one broker, as (asset id, its source settings); a message
        goes to the first asset whose topic filter matches, with that asset's sensor pattern, payload format and
        ``max_payload_bytes``; each filter is subscribed at its asset's ``qos``. What belongs to the connection
        (broker, TLS, ``gather_ms``) comes from ``settings``: the assets on one broker agree on it (agent.asset_settings).
        ``blocks`` (default on; the pipeline takes a Block whole): hand over Blocks — a block payload whole, and the messages
        received in one pass of the network loop with consecutive readings of one sensor coalesced into a Block
        (agent.payload.Coalescer, as they arrive) — instead of one Reading at a time."""
        self.settings = settings
        self.counters = counters
        routes = routes or [("", settings)]
        self._routes, self.qos = compile_routes(routes)  # self.qos: per topic filter, the QoS it is subscribed at
        self.topics = list(self.qos)
        self._pattern = self._routes[0][2]
        self.parser = self._routes[0][3]
        self._routed = len(routes) > 1 or bool(routes[0][0])
        self.max_payload_bytes = settings.max_payload_bytes
        self._pacer = Pacer(settings.gather_ms / 1000)
        self._route_cache: dict[str | bytes, Route | None] = {}  # by str or fast-path bytes
        self._tally = counters.tally()  # written by paho's thread only
        self.blocks = blocks
        self._pending = Coalescer()  # blocks: received in this pass of the network loop
        self.conn = source_connection(settings, upstream)  # ValueError/FileNotFoundError: exit 78 at start
        self.host = self.conn.host
        self.port = self.conn.port
        self.keepalive_s = self.conn.keepalive_s
        self.client_id = client_id_for(upstream, device_id) + client_suffix  # a second connection: its own id
        self.name = f"mqtt{'s' if self.conn.tls else ''}:{','.join(self.topics)}@{self.host}:{self.port}"

        self._state = CONNECTING
        self._closed = threading.Event()  # close() was called
        self._closing = False  # we are disconnecting on purpose: not an outage
        self._delivering = True  # False once paho's thread has stopped: a late message is counted, not handed over
        self._handed = 0  # records handed to the sink (progress while close() waits for the UNSUBACK)
        self._connected = False
        self._outage_logged = False
        self._ever_connected = False
        self._ever_subscribed = False
        self._outage_start = 0.0  # time.monotonic() when the outage being logged began
        self.granted_qos: dict[str, int | None] = {}  # per filter, from the last SUBACK (None = refused)
        self._refused_filters: set[str] = set()
        self._sink: Sink | None = None
        self._started = False
        self.subscribed = threading.Event()  # SUBACK for the current connection received (tests, diagnostics)
        self._unsubscribed = threading.Event()
        self.last_error: str | None = None

        c = make_client(
            self.conn, self.client_id, log_name="paho.source", reconnect_min_s=RECONNECT_MIN_S,
            reconnect_max_s=RECONNECT_MAX_S, on_receive_failure=self._receive_failed, client_class=BufferedReadClient,
        )
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_message = self._on_message
        c.fast_publish = self._on_publish  # type: ignore[attr-defined]
        if self.blocks:
            c.after_loop = self._hand_over  # type: ignore[attr-defined]
        self.client = c

    channels = None  # known only from the payloads
    problems: list[str] = []  # its state says it all

    @property
    def state(self) -> str:
        """connecting | connected | disconnected | finished."""
        return self._state

    # -- lifecycle (source thread) ---------------------------------------------------------------------------

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Receive until ``stop`` is set or ``close`` is called; paho delivers on its own thread meanwhile."""
        if self._started:
            raise RuntimeError("MqttSource.run() can only be called once")
        self._started = True
        self._sink = sink
        try:
            if stop.is_set() or self._closed.is_set():
                return
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
            self.client.loop_start()
            while not stop.is_set() and not self._closed.is_set():
                self._closed.wait(0.5)  # close() wakes it at once; a stop is followed by close() too
        finally:
            self._shutdown()

    def close(self) -> None:
        """Make ``run`` return promptly (within ``UNSUBSCRIBE_MAX_S + DRAIN_QUIET_S + LOOP_STOP_WAIT_S`` of
        agent.sources.mqtt_close); any thread, any time."""
        self._closed.set()

    def _shutdown(self) -> None:
        shutdown(self)  # agent.sources.mqtt_close

    # -- paho callbacks (network thread; must never raise) ---------------------------------------------------

    def _callback_error(self, where: str) -> None:
        self.counters.inc("source.callback_errors")
        n = self.counters.get("source.callback_errors")
        if n <= 3 or n % 1000 == 0:
            log.exception("error in MQTT source %s (%d so far; counted as source.callback_errors)", where, n)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if self._closing:  # a connect that completed after close(): do not subscribe, do not leave it open
                client.disconnect()
                return
            if reason_code.is_failure:
                hint = refused_hint(reason_code, self.conn.prefix)
                self._outage(f"sensor broker {self.host}:{self.port} refused the connection: {reason_code}{hint}")
                return
            self._connected = True
            self.counters.inc("source.connects")
            if self._ever_connected:
                self.counters.inc("source.reconnects")  # the stats' source.reconnects, as for the serial source
            self._ever_connected = True
            self.subscribed.clear()
            # A clean session forgets subscriptions: renew them on every connect, or data stops after a restart.
            rc, _ = client.subscribe(list(self.qos.items()))
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._outage(f"could not subscribe on {self.host}:{self.port} ({mqtt.error_string(rc)})")
                return
            self._state = CONNECTED
            if self._outage_logged:
                log.info("sensor broker %s:%d answers again after %.1f s; subscribing to %s again",
                         self.host, self.port, time.monotonic() - self._outage_start, ", ".join(self.topics))
            self._outage_logged = False
            self.last_error = None
        except Exception:  # noqa: BLE001 - an exception must not escape into paho's thread
            self._callback_error("on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            why = describe_connect_error(getattr(client, "last_connect_error", None), self.conn.prefix)
            self._outage(f"sensor broker {self.host}:{self.port} {why}")
        except Exception:  # noqa: BLE001
            self._callback_error("on_connect_fail")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            was = self._connected
            self._connected = False
            self.subscribed.clear()
            if self._closing:
                return
            if was:
                self._outage(f"lost the sensor broker {self.host}:{self.port} ({reason_code})", "source.disconnects")
            else:
                self._state = DISCONNECTED
        except Exception:  # noqa: BLE001
            self._callback_error("on_disconnect")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        try:
            for topic, rc in zip(self.topics, reason_codes, strict=False):
                self.granted_qos[topic] = None if rc.is_failure else rc.value
                if rc.is_failure:
                    self.counters.inc("source.subscribe_refused")
                    if topic not in self._refused_filters:  # said once, not on every reconnect
                        self._refused_filters.add(topic)
                        log.warning("sensor broker %s:%d refused the subscription to %r (%s): check its ACL",
                                    self.host, self.port, topic, rc)
                else:
                    self._refused_filters.discard(topic)
            if not self._ever_subscribed:  # the first SUBACK: from now on data flows (said once)
                self._ever_subscribed = True
                qos = set(self.qos.values())
                log.info("subscribed to %s on sensor broker %s:%d (QoS %s)", ", ".join(self.topics), self.host, self.port,
                         qos.pop() if len(qos) == 1 else ", ".join(f"{q} for {t}" for t, q in self.qos.items()))
            self.subscribed.set()
        except Exception:  # noqa: BLE001
            self._callback_error("on_subscribe")

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        try:
            self._unsubscribed.set()
        except Exception:  # noqa: BLE001
            self._callback_error("on_unsubscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic: str | bytes = msg.topic
        except UnicodeDecodeError:  # paho gives no str for it: no filter of ours can match it
            topic = b""
        self._on_publish(topic, msg.payload, msg.retain)

    def _on_publish(self, topic: str | bytes, payload: bytes | bytearray, retain: bool) -> None:
        """One message (paho's thread): a record for the sink or a counted rejection. ``topic`` is the str paho
        decoded, or the raw bytes from BufferedReadClient's fast path for QoS 0 PUBLISH packets."""
        try:
            inc = self._tally.inc
            inc("source.messages")
            inc("source.bytes", len(payload))
            if not self._delivering:  # paho's thread left behind by close(): too late for the pipeline
                inc("source.dropped_at_close")
                return
            if retain:
                inc("source.retained")
                return
            cache = self._route_cache
            if topic in cache:
                route = cache[topic]
            else:
                try:
                    name = topic.decode() if isinstance(topic, bytes) else topic
                except UnicodeDecodeError:
                    name = None
                route = None if not name else self.route_of(name)
                if len(cache) >= ROUTE_CACHE_MAX:
                    cache.clear()
                cache[topic] = route
            if route is None:
                inc("reject.topic_mismatch")
                return
            sensor, asset, parser, max_bytes = route
            if len(payload) > max_bytes:
                inc("reject.payload_too_large")
                return
            record = parser.parse(payload, receipt_time(), sensor, asset)  # agent/receipt.py
            if isinstance(record, str):
                inc("reject." + record)
                return
            if type(record) is Block:
                inc("source.readings", len(record))
                inc("source.blocks")
            else:
                inc("source.readings")
            if self.blocks:  # handed over after this pass of the network loop, a burst together
                self._pending.add(record)
                if self._pending.held >= MAX_PENDING:
                    self._hand_over()
                return
            sink = self._sink
            if sink is not None:
                for r in record.rows() if type(record) is Block else (record,):
                    self._deliver(sink, r, "on_publish")
        except Exception:  # noqa: BLE001
            self._callback_error("on_publish")

    def _deliver(self, sink: Sink, record: Reading | Block, where: str) -> None:
        """One record to the sink; a sink that raises loses that record only (counted), not the rest."""
        try:
            sink(record)
            self._handed += 1
        except Exception:  # noqa: BLE001
            self._callback_error(where)

    def _hand_over(self) -> None:
        """The records received since the last hand-over, a run of one sensor's readings as one Block (paho's thread,
        after each pass of its loop; never raises)."""
        try:
            n = self._pending.rows  # readings: a block payload of 1,000 samples is a flood, not one reading
            if not self._pending.held:
                return
            records = self._pending.take()
            sink = self._sink
            if sink is not None and self._delivering:
                for record in records:
                    self._deliver(sink, record, "hand-over")  # counted; the other records of the pass still go
            elif not self._delivering:  # paho's thread left behind by close(): too late for the pipeline
                self._tally.inc("source.dropped_at_close", n)
            wait = self._pacer.after(n)
            if wait and not self._closing:
                time.sleep(wait)  # a busy stream: let the next messages gather in the socket (agent.sources.Pacer)
        except Exception:  # noqa: BLE001
            self._callback_error("hand-over")

    def _receive_failed(self, text: str) -> None:
        """The connection broke before CONNACK (called from paho's log line, on its thread: never raises)."""
        try:
            self._outage(f"sensor broker {self.host}:{self.port} {explain_receive_failure(text, self.conn.prefix)}")
        except Exception:  # noqa: BLE001
            pass

    # -- helpers ---------------------------------------------------------------------------------------------

    def route_of(self, topic: str) -> Route | None:
        """(sensor id, asset, parser, max payload bytes) for a message on ``topic``; None when no route's filter and
        pattern match."""
        if not self._routed:
            sensor = self.sensor_of(topic)
            return None if sensor is None else (sensor, "", self.parser, self.max_payload_bytes)
        for flt, asset, pattern, parser, max_bytes in self._routes:
            if mqtt.topic_matches_sub(flt, topic):
                if pattern is None:
                    return topic, asset, parser, max_bytes
                m = pattern.fullmatch(topic)
                if m is not None:
                    return m.group("sensor"), asset, parser, max_bytes
        return None

    def sensor_of(self, topic: str) -> str | None:
        """The sensor id that ``sensor_pattern`` takes from ``topic``; None when the topic does not match."""
        if self._pattern is None:
            return topic
        m = self._pattern.fullmatch(topic)
        return m.group("sensor") if m else None

    def _outage(self, what: str, counter: str = "source.connect_failures") -> None:
        if self._closing:  # paho's thread left behind by close() may still report: FINISHED stays FINISHED
            return
        self._state = DISCONNECTED
        self.last_error = what
        self.counters.inc(counter)
        if not self._outage_logged:
            self._outage_logged = True
            self._outage_start = time.monotonic()
            log.warning("%s: no readings until it answers (retrying every %d-%d s)",
                        what, RECONNECT_MIN_S, RECONNECT_MAX_S)
