"""The uplink: a paho-mqtt 2 client that publishes from the outbox at QoS 1 and keeps a retained status.

Threads: paho's network thread runs the callbacks (which never raise: an exception there wedges paho), and the
``uplink`` thread moves rows from the outbox into paho, at most ``max_inflight`` unacknowledged at once. A row is
deleted only in ``on_publish`` (the PUBACK; a refusal, MQTT 5, makes it a dead letter: uplink_refusals.py); ``mid →
row`` is tracked so that a row waiting for its PUBACK is not published twice. On every (re)connection what the last
connection left unacknowledged is taken back from paho and published again from the outbox, in outbox order (paho
would re-send it after newer rows: a ``cleared`` before its ``raised``); a connection whose oldest PUBACK does not
come is dropped so that this happens (uplink_acks.py). A row of an alert with a row in flight waits, and the rows
after it with it (a refusal of the earlier row takes it to the dead letters too): rows go in outbox order."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt

from agent.counters import Counters
from agent.mqtt_client import describe_connect_error, explain_receive_failure, make_client, refused_hint, upstream_connection
from agent.outbox import Outbox
from agent.parse import iso
from agent.records import message_bytes
from agent.settings import MqttSettings
from agent.uplink_acks import AckWatch
from agent.uplink_refusals import PROTOCOLS, WAIT, RefusalAwareClient, Refusals, code_of

log = logging.getLogger(__name__)
_NOT_YET = object()  # no status published yet

IDLE_POLL_S = 5.0  # without a wake-up, the publisher thread looks into the outbox this often
# A connection the broker ends within SHORT_S, SHORT_IN_A_ROW times in a row, is being taken over: most often a second
# client with the same client id (a cloned SD card keeps the host name, the default device id), which the broker
# lets in by throwing the other out, over and over. Said once (again every SHORT_WARN_EVERY_S while it lasts).
SHORT_S = 10.0
SHORT_IN_A_ROW = 3
SHORT_WARN_EVERY_S = 600.0


class Uplink:
    """Publishes outbox rows and status to the upstream broker; reconnects by itself with backoff."""

    def __init__(
        self, settings: MqttSettings, device_id: str, outbox: Outbox, counters: Counters,
        status: Callable[[], dict[str, Any]], on_command: Callable[[str, bytes], None] | None = None,
        status_key: Callable[[], Any] = lambda: None, offline: Callable[[str, bool], dict[str, Any]] | None = None,
    ):
        self.s = settings
        self.device_id = device_id
        self.outbox = outbox
        self.counters = counters
        self._status = status
        self._status_key = status_key
        self._offline = offline or (lambda reason, stopping: {"state": "offline", "device_id": device_id,
                                                              "ts": iso(time.time()), "reason": reason})
        self._status_lock = threading.Lock()  # build and publish one status at a time: the newest is the retained one
        self.published_key: Any = _NOT_YET  # status_key() of the last status handed to paho
        self._on_command = on_command
        self.base = f"{settings.topic_prefix}/{device_id}"
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._batch = threading.Lock()  # a publisher batch; a (re)connection resets what is in flight between two
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (row id, time published)
        self._early_acks: dict[int, tuple[float, int]] = {}  # mid -> (when, reason code) of a PUBACK that came
        # before we recorded the mid: a success too, so that an old refusal's code never outlives its mid
        self._status_mids: set[int] = set()  # statuses handed to paho and not acknowledged yet
        self._outage_logged = False
        self._thread: threading.Thread | None = None
        self.bytes_out = 0
        self.last_error: str | None = None
        self.heartbeat: Callable[[], None] = lambda: None
        self.client_id = settings.client_id or f"edge-agent-{device_id}"
        self._connected_at = 0.0  # monotonic time of the last successful connect
        self._short = 0  # connections in a row that the broker ended within SHORT_S
        self._short_warned_at: float | None = None
        self.refusals = Refusals(outbox, counters, settings.protocol, f"{settings.host}:{settings.port}", f"{self.base}/#")
        self.acks = AckWatch(settings.ack_timeout_s, counters, f"{settings.host}:{settings.port}")  # PUBACKs overdue
        c = make_client(
            upstream_connection(settings), self.client_id, log_name=f"paho.uplink.{device_id}",
            max_inflight=settings.max_inflight, on_receive_failure=self._receive_failed,
            client_class=RefusalAwareClient, protocol=PROTOCOLS[settings.protocol],
        )
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, spawn: Callable[[str, Callable[[], None]], threading.Thread] | None = None) -> None:
        """Connect in the background and start publishing; never blocks on the broker. ``spawn(name, target)``
        starts the publishing thread (the agent's guard: a thread that dies stops the process); default: a plain
        daemon thread."""
        will = self._offline("connection lost", False)  # the broker's, when the connection breaks: set now, once
        self.client.will_set(self.topic("status"), message_bytes(will), qos=1, retain=True)
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive_s, clean_start=True)
        self.client.loop_start()
        if spawn is None:
            self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
            self._thread.start()
        else:
            self._thread = spawn("uplink", self._run)

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
        """Publish the retained ``offline`` status (when connected; ``offline(reason, True)``: after the outbox's
        last row, before it closes), disconnect, stop the threads."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.connected.is_set():
            try:
                with self._status_lock:  # a status being published goes first, none after (publish_status)
                    body = message_bytes(self._offline(reason, True))  # built after it: its ts is the later one
                    info = self.client.publish(self.topic("status"), body, qos=1, retain=True)
                info.wait_for_publish(timeout=3)
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish offline status: %s", e)
            self.client.disconnect()
        self.client.loop_stop()

    def publish_status(self) -> None:
        """Publish the retained status now (on connect and whenever the state changes)."""
        if not self.connected.is_set():
            return
        with self._status_lock:
            if self._stop.is_set():  # stopping: the offline status is the last one (stop), not overwritten
                return
            key = self._status_key()  # before the payload is built: a change while building is published again
            body = message_bytes(self._status())
            t0 = time.monotonic()
            info = self.client.publish(self.topic("status"), body, qos=1, retain=True)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.published_key = key
            with self._lock:  # acknowledged already (parked in _early_acks): nothing to forget on a reconnect
                if self._early_acks.pop(info.mid, (-1.0, 0))[0] < t0:  # else a mid kept for ever could, once mids wrap,
                    self._status_mids.add(info.mid)  # name an alert that paho must resend
            self.bytes_out += len(body) + len(self.base) + 7

    def publish_now(self, suffix: str, payload: dict[str, Any], qos: int = 0, retain: bool = False) -> bool:
        """Publish straight away, not through the outbox (stats, command replies: worthless once stale)."""
        body = message_bytes(payload)
        with self._status_lock:  # none after a clean stop's offline status (stop): it would show the gateway alive
            if not self.connected.is_set() or self._stop.is_set():
                return False
            info = self.client.publish(self.topic(suffix), body, qos=qos, retain=retain)
        self.bytes_out += len(body) + len(self.base) + len(suffix) + 1
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # -- the publisher thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        # Woken for every new row, PUBACK and (re)connection; between wake-ups it only beats (stall detection) and
        # looks into the outbox every IDLE_POLL_S (a publish that failed is retried then), not twice a second.
        next_poll = 0.0
        while not self._stop.is_set():
            self.heartbeat()
            woken = self._wake.wait(timeout=0.5)
            self._wake.clear()
            now = time.monotonic()
            if self._short >= SHORT_IN_A_ROW and self.connected.is_set() and now - self._connected_at >= SHORT_S:
                self._short = 0
                log.info("the connection to %s:%d holds again", self.s.host, self.s.port)
            if self.connected.is_set():
                with self._batch, self._lock:  # never between _reset_inflight and acks.connected (rows of the last
                    sent = [t for _, t in self._inflight.values()]  # connection, timed out on the new one)
                    if self.connected.is_set() and self.acks.check(self.client, now, sent):  # not lost meanwhile
                        continue  # dropped: paho reconnects, _reset_inflight takes the rows back
            if self.connected.is_set() and self.refusals.retry():  # temporary refusals, every RETRY_S
                woken = True
            if self.connected.is_set() and (woken or now >= next_poll):
                next_poll = now + IDLE_POLL_S
                self._publish_pending()

    def _publish_pending(self) -> None:
        with self._batch:  # never interleaved with _reset_inflight: a batch is all on one connection or on none
            self._publish_batch()

    def _publish_batch(self) -> None:
        with self._lock:
            room = self.refusals.room(self.s.max_inflight) - len(self._inflight)
            if room <= 0:
                return
            busy = {row for row, _ in self._inflight.values()} | self.refusals.held_rows()  # refused, not moved
        for row in self.outbox.pending(room, exclude=busy):
            body = self.refusals.body(row, self.topic(row.topic))  # with sent_at; within the broker's packet size
            if body is None:
                continue  # a dead letter now (too large, behind a refused alert)
            if body == WAIT:  # behind its alert's row in flight: the batch stops there (rows go in outbox order)
                return
            # Never hold self._lock while calling into paho: paho calls on_publish holding its own message mutex and
            # on_publish takes self._lock (deadlock). A PUBACK that beats us to the mid is parked in _early_acks.
            if not self.connected.is_set():  # lost during the batch: paho may already be on a new socket before its
                return  # CONNACK, where _reset_inflight (waiting for this batch) would take the message back
            t0 = time.monotonic()
            info = self.client.publish(self.topic(row.topic), body, qos=row.qos, retain=row.retain)
            if info.rc == mqtt.MQTT_ERR_NO_CONN and row.qos:  # paho keeps it for the next connection: track it,
                with self._lock:  # so that _reset_inflight takes it back rather than paho re-sending it out of order
                    self._inflight[info.mid] = (row.id, time.monotonic())
                return
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # not connected after all; try again on the next wake-up
            self.bytes_out += len(body) + len(row.topic) + len(self.base) + 1
            if row.qos == 0:
                self.outbox.ack(row.id)
                continue
            with self._lock:
                # only an ack that arrived after this publish began is ours (mids wrap around at 65535)
                at, code = self._early_acks.pop(info.mid, (-1.0, 0))
                early = at >= t0
                if not early:
                    self._inflight[info.mid] = (row.id, time.monotonic())
            if early:
                self.refusals.settle(row.id, code)

    # -- paho callbacks (network thread; must never raise) ---------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                if self.refusals.fall_back(client, reason_code):
                    return  # paho tries again, with MQTT 3.1.1
                hint = refused_hint(reason_code)
                self._failed(f"broker {self.s.host}:{self.s.port} refused the connection: {reason_code}{hint}")
                return
            self._reset_inflight(client)
            self.acks.connected()
            self.refusals.connected(client, properties)
            self.refusals.requeue()  # dead letters: the operator may have fixed what the broker refused
            self._connected_at = time.monotonic()
            with self._batch:  # the status before any row: the monitor tells a run's alerts by it (docs/monitor.md)
                self.connected.set()
                self.publish_status()
            self.counters.inc("uplink.connects")
            if self._short >= SHORT_IN_A_ROW:
                pass  # taken over again and again: said once in _taken_over, not a line per connection
            elif self._outage_logged:
                log.info("connected to %s:%d again; publishing %d queued messages", self.s.host, self.s.port, self.outbox.depth())
            else:
                log.info("connected to %s:%d", self.s.host, self.s.port)
            self._outage_logged = False
            self.last_error = None
            if self._on_command is not None:  # subscriptions do not survive a reconnect: renew them every time
                client.subscribe(self.topic("cmd/+"), qos=1)
            self._wake.set()
        except Exception:  # noqa: BLE001 - an exception must not escape into paho's thread
            log.exception("error in on_connect")

    def _reset_inflight(self, client: mqtt.Client) -> None:
        """Take back from paho what the last connection left unacknowledged (before ``connected`` is set, between
        two publisher batches). Rows: paho would re-send them only after ``on_connect`` returns, when the publisher
        may have sent newer rows on the new connection already (an alert ``cleared`` before its ``raised``);
        forgotten here, they are published again from the outbox, in outbox order. Statuses: the broker would keep
        a stale one as the retained status, sent after the fresh one this connect publishes (a connection that died
        silently: a hung broker, a partition). Relies on paho 2.x internals, as agent/sources/mqtt_read.py."""
        with self._batch, self._status_lock:
            with self._lock:
                mids = set(self._inflight) | self._status_mids
                self._inflight.clear()
                self._status_mids = set()
                self._early_acks.clear()  # acks of the last connection: none can name a mid of the new one
            with client._out_message_mutex:
                for mid in mids:
                    msg = client._out_messages.pop(mid, None)
                    if msg is not None and msg.state == mqtt.mqtt_ms_wait_for_puback and client._inflight_messages > 0:
                        client._inflight_messages -= 1  # counted in flight on the new socket: its slot is free again

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            why = describe_connect_error(getattr(client, "last_connect_error", None))
            self._failed(f"broker {self.s.host}:{self.s.port} {why}")
        except Exception:  # noqa: BLE001
            log.exception("error in on_connect_fail")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            was = self.connected.is_set()
            self.connected.clear()
            self.refusals.closed(client, was)  # auto: MQTT 5 connections ended before their CONNACK, in a row
            if was and not self._stop.is_set():
                if not self.acks.dropped:  # not the broker's doing
                    self._taken_over(reason_code)
                self._outage(f"disconnected from {self.s.host}:{self.s.port} ({reason_code})", quiet=self.acks.dropped)
        except Exception:  # noqa: BLE001
            log.exception("error in on_disconnect")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        try:
            code = code_of(reason_code)
            with self._lock:
                self._status_mids.discard(mid)
                entry = self._inflight.get(mid)
                oldest = entry is not None and entry[1] <= min(t for _, t in self._inflight.values())
                if entry is None:  # not ours yet (or status/replies, which are not tracked)
                    self._early_acks[mid] = (time.monotonic(), code)  # its code with it: no stale one outlives it
                    if len(self._early_acks) > 1000:
                        self._early_acks.clear()
            if entry is not None:
                # delete the row first, then forget it is in flight: the other way round, the publisher thread
                # could pick the row up again in between and publish it a second time
                self.refusals.settle(entry[0], code)
                with self._lock:
                    self._inflight.pop(mid, None)
                if oldest:  # only that is progress: PUBACKs come in publish order (MQTT 4.6), so one for a newer row
                    self.acks.acked(time.monotonic())  # says an older one's never comes on this connection
                self._wake.set()
        except Exception:  # noqa: BLE001
            log.exception("error in on_publish")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        try:
            self.refusals.subscribed(reason_codes, self.topic("cmd/+"), self.topic("cmd/#"))
        except Exception:  # noqa: BLE001
            log.exception("error in on_subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: Any) -> None:
        try:
            prefix = self.topic("cmd/")
            if self._on_command is not None and msg.topic.startswith(prefix):
                self.counters.inc("commands.received")
                self._on_command(msg.topic[len(prefix):], bytes(msg.payload))
        except Exception:  # noqa: BLE001
            log.exception("error in on_message")

    def _receive_failed(self, text: str) -> None:
        """The connection broke before CONNACK (called from paho's log line, on its thread: never raises)."""
        try:
            why = explain_receive_failure(text)
            self._failed(f"broker {self.s.host}:{self.s.port} {why}")
        except Exception:  # noqa: BLE001
            pass

    def _taken_over(self, reason_code: Any) -> None:
        """Count a connection the broker ended soon after accepting it; warn when that keeps happening."""
        now = time.monotonic()
        if now - self._connected_at >= SHORT_S:
            self._short = 0
            return
        self._short += 1
        self.counters.inc("uplink.short_connections")
        if self._short < SHORT_IN_A_ROW:
            return
        if self._short_warned_at is not None and now - self._short_warned_at < SHORT_WARN_EVERY_S:
            return
        self._short_warned_at = now
        log.warning(
            "the broker %s:%d ended the connection %d times in a row within %.0f s of accepting it (%s): is another "
            "client connected with the client id '%s'? Each takes the other's place. Give every gateway its own "
            "EDGE_AGENT_DEVICE_ID (default: the host name, which a cloned SD card keeps) or "
            "EDGE_AGENT_MQTT__CLIENT_ID; until then messages go out only in between (reconnecting)",
            self.s.host, self.s.port, self._short, SHORT_S, reason_code, self.client_id)

    def _failed(self, what: str) -> None:
        """A connection attempt failed: that ends a run of taken-over connections (those were accepted), and the
        outage is said as any other — not hidden behind the duplicate-client-id warning."""
        self._short = 0
        self._outage(what)

    def _outage(self, what: str, quiet: bool = False) -> None:
        """``quiet``: a connection the agent dropped (agent/uplink_acks.py warned): a broker that answers nothing
        but pings would otherwise get this warning on every drop."""
        self.last_error = what
        self.counters.inc("uplink.connect_failures")
        if self._short >= SHORT_IN_A_ROW:
            return  # flapping: _taken_over said it
        if not self._outage_logged and not quiet:
            self._outage_logged = True
            log.warning("%s: alerts and summaries stay in the outbox and are sent when it answers (retrying)", what)
