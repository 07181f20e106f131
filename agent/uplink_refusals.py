"""MQTT 5 on the uplink: which protocol to speak, and what becomes of a message the broker refuses.

Over MQTT 3.1.1 a broker acknowledges a publish it then discards (its ACL denies the topic, the message is over its
size limit): the PUBACK cannot say otherwise, and the alert is "delivered" and lost. Over MQTT 5 the PUBACK carries a
reason code, ≥ 0x80 for a refusal (0x87 not authorized, 0x95 packet too large, ...). Such a row leaves the outbox for
the ``dead_letter`` table of the same SQLite file (so it is neither lost nor sent again and again on every wake-up),
is counted (``uplink.refused``, ``uplink.refused_by.<reason>``), logged once per reason, and makes the status
``degraded: broker refuses alerts: not authorized`` until they are accepted. The later rows of an alert whose row is a
dead letter follow it there unsent (a ``cleared`` never before its ``raised``); every connection (and, for a temporary
refusal, every RETRY_S) puts the dead letters back into the outbox in their old places (the operator may have fixed
the ACL in between). The broker's Maximum Packet Size (a CONNACK property) is respected
before sending: an alert over it goes without its inline evidence, anything else over it is a dead letter.

paho 2.2 cannot read a PUBACK with reason code 0x95 (the MQTT 5 specification lists it for CONNACK and DISCONNECT
only, mosquitto sends it for a publish over ``message_size_limit``): it takes the packet for malformed, drops the
connection and re-sends the message on the next one, for ever. :class:`RefusalAwareClient` reads such a PUBACK
itself.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.counters import Counters
from agent.mqtt_client import ExplainingClient
from agent.dead_letters import strip_evidence
from agent.outbox import Outbox, Row
from agent.parse import iso
from agent.records import message_bytes

log = logging.getLogger("agent.uplink")

PROTOCOLS = {"auto": mqtt.MQTTv5, "5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}  # EDGE_AGENT_MQTT__PROTOCOL
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK; paho turns a 3.1.1 broker's return code 1 into it as well
PACKET_TOO_LARGE = 0x95
# MQTT 5 PUBACK reason codes of a refusal (specification 3.4.2.1), and 0x95, which mosquitto sends as well
REASON_NAMES = {
    0x80: "unspecified error", 0x83: "implementation specific error", 0x87: "not authorized",
    0x90: "topic name invalid", 0x91: "packet identifier in use", 0x95: "packet too large", 0x97: "quota exceeded",
    0x99: "payload format invalid",
}
KIND_PLURAL = {"alert": "alerts", "summary": "summaries", "advice": "advice"}
# refusals that are over by themselves (a quota, a busy or confused broker): their dead letters are retried every
# RETRY_S even while the connection holds; any other waits for a reconnection (the operator restarts the broker)
TEMPORARY = frozenset({0x80, 0x89, 0x91, 0x97})  # unspecified error, server busy, packet id in use, quota exceeded
WAIT = b""  # body(): the row waits for its alert's row in flight, and the rows after it with it
RETRY_S = 600.0
SILENT_CLOSES = 3  # auto: MQTT 5 connections in a row ended without a CONNACK before 3.1.1 is tried


def reason_name(code: int) -> str:
    """``not authorized`` for 0x87; an unknown code by its number."""
    return REASON_NAMES.get(code, f"reason code 0x{code:02x}")


def counter_name(name: str) -> str:
    """A reason as a stats key: ``not_authorized``."""
    return name.replace(" ", "_")


def code_of(reason_code: Any) -> int:
    """The number of a paho ReasonCode (0 for none: a 3.1.1 PUBACK)."""
    return int(getattr(reason_code, "value", 0) or 0)


def puback_fields(packet: bytes | bytearray) -> tuple[int, int]:
    """(packet id, reason code) of an MQTT 5 PUBACK's variable header; no reason code is 0 (success)."""
    if len(packet) < 2:
        raise ValueError("PUBACK shorter than 2 bytes")
    mid = struct.unpack("!H", packet[:2])[0]
    return mid, packet[2] if len(packet) > 2 else 0


def publish_size(topic: str, payload_len: int, qos: int, protocol: int = mqtt.MQTTv5) -> int:
    """Bytes of the PUBLISH packet paho sends for this message (no properties): what a Maximum Packet Size bounds."""
    rest = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if protocol == mqtt.MQTTv5 else 0) + payload_len
    length_bytes = 1 if rest < 128 else 2 if rest < 16384 else 3 if rest < 2097152 else 4
    return 1 + length_bytes + rest


def connack_limits(properties: Any) -> tuple[int | None, int | None]:
    """(Maximum Packet Size, Receive Maximum) of a CONNACK's properties; None for what it does not say."""
    size = getattr(properties, "MaximumPacketSize", None)
    receive = getattr(properties, "ReceiveMaximum", None)
    return (int(size) if size else None), (int(receive) if receive else None)


class _Refusal(ReasonCode):
    """A PUBACK reason code paho's table lacks for PUBACK (0x95): a value and a name, no lookup."""

    def __init__(self, code: int):  # ReasonCode.__init__ would reject the code
        self.packetType = PacketTypes.PUBACK
        self.names = dict(ReasonCode.names)
        self.value = code

    def getName(self) -> str:
        return reason_name(self.value).capitalize()


class RefusalAwareClient(ExplainingClient):
    """paho's client, reading the MQTT 5 PUBACKs whose reason code paho 2.2 takes for a malformed packet, and never
    sending a message over the broker's Maximum Packet Size (paho 2.2 sends it, and the broker drops the connection:
    on every reconnect again). Outbox rows are fitted before (:meth:`Refusals.body`); this keeps a status or stats
    message that is too big from cutting the connection."""

    max_packet: int | None = None  # the broker's Maximum Packet Size on this connection (MQTT 5 CONNACK)
    _too_big_logged: frozenset[str] = frozenset()

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Any = None) -> mqtt.MQTTMessageInfo:
        limit = self.max_packet
        if limit and isinstance(payload, (bytes, bytearray)) and publish_size(topic, len(payload), qos) > limit:
            if topic not in self._too_big_logged:
                self._too_big_logged |= {topic}
                log.warning("a message on %s is %d bytes, over the broker's Maximum Packet Size (%d): not sent (said "
                            "once per topic)", topic, publish_size(topic, len(payload), qos), limit)
            info = mqtt.MQTTMessageInfo(0)
            info.rc = mqtt.MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE
            return info
        return super().publish(topic, payload, qos, retain, properties)

    def _handle_pubackcomp(self, cmd: Any) -> mqtt.MQTTErrorCode:  # paho-mqtt 2.x internal, pinned <3
        if cmd == "PUBACK" and self._protocol == mqtt.MQTTv5:
            packet = self._in_packet["packet"]
            try:
                mid, code = puback_fields(packet)
            except ValueError:
                return super()._handle_pubackcomp(cmd)
            if code >= 0x80 and code not in _PAHO_PUBACK_CODES:
                self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received PUBACK (Mid: %d, reason 0x%02x)", mid, code)
                with self._out_message_mutex:
                    if mid in self._out_messages:
                        return self._do_on_publish(mid, _Refusal(code), Properties(PacketTypes.PUBACK))
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)


_PAHO_PUBACK_CODES = {code for code, names in ReasonCode.names.items()
                      if any(PacketTypes.PUBACK in types for types in names.values())}


class Refusals:
    """What the uplink does with the broker's refusals: dead letters, counts, one log line per reason, the status
    reasons; the protocol fallback; the CONNACK's limits."""

    def __init__(self, outbox: Outbox, counters: Counters, protocol: str, where: str, topic_filter: str):
        self.outbox, self.counters, self.setting = outbox, counters, protocol
        self.where, self.topic_filter = where, topic_filter  # "host:port", "{prefix}/{device_id}/#"
        self.max_packet: int | None = None  # the broker's Maximum Packet Size (CONNACK; MQTT 5 only)
        self.receive_max: int | None = None  # the broker's Receive Maximum (CONNACK; MQTT 5 only)
        self.held: set[int] = set()  # refused rows that could not be moved to the dead letters: not sent again this run
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._by_kind: dict[str, str] = {}  # kind -> the last reason it was refused for
        self._stripped_logged = False
        self._unsettled: set[int] = set()  # dead letters (and re-queued ones) not accepted yet: the status says so
        self._flying: dict[int, str] = {}  # row id -> alert id of an alert sent and not acknowledged yet
        self._next_retry = time.monotonic() + RETRY_S
        self._answered = False  # a CONNACK came on this connection attempt
        self._closes = 0  # MQTT 5 connections in a row the broker ended before any CONNACK
        self._requeue_warned = -math.inf  # monotonic time of the last 'back in the outbox' warning
        self._commands_refused = False  # the SUBACK of cmd/+ refused: said once, not on every reconnect

    def subscribed(self, reason_codes: Any, topic: str, readable: str) -> None:
        """The SUBACK of ``topic`` (``cmd/+``). A broker whose ACL refuses it answers with a failure code and sends
        no command ever: without this line the control room's commands would vanish with no trace on the gateway."""
        refused = next((rc for rc in reason_codes if rc.is_failure), None)
        if refused is None:
            if self._commands_refused:
                log.info("broker %s accepts the subscription to %s now", self.where, topic)
            self._commands_refused = False
            return
        self.counters.inc("uplink.subscribe_refused")
        if not self._commands_refused:
            self._commands_refused = True
            log.warning("broker %s refused the subscription to %s (%s): no command will arrive; its ACL must let this "
                        "client read %s (README: Security), or set EDGE_AGENT_COMMANDS__ENABLED=false",
                        self.where, topic, refused, readable)

    def requeue(self) -> None:
        """On every connection: the dead letters go back into the outbox (under their old row ids: in order), the
        operator may have fixed what the broker refused; the degraded reason goes once they are accepted."""
        ids = self.outbox.requeue_dead_letters()
        with self._lock:
            unsettled = self._unsettled | set(ids)
        queued = self.outbox.queued(unsettled)  # not those the outbox's bounds dropped meanwhile
        with self._lock:
            self._unsettled = {i for i in self._unsettled if i in queued} | set(ids)
            if not self._unsettled:
                self._by_kind.clear()
        if ids:  # a warning when it starts and every RETRY_S while it goes on (each reconnection), INFO between
            now = time.monotonic()
            level = logging.WARNING if now - self._requeue_warned >= RETRY_S else logging.INFO
            if level == logging.WARNING:
                self._requeue_warned = now
            log.log(level, "%d message(s) the broker refused are back in the outbox: sending them again", len(ids))

    def retry(self) -> bool:
        """Every RETRY_S: a dead letter refused for a temporary reason (TEMPORARY) that long ago re-queues them all
        (in order). True when it did (called by the publisher thread while connected)."""
        if time.monotonic() < self._next_retry:
            return False
        self._next_retry = time.monotonic() + RETRY_S
        if not self.outbox.dead_letter_due(TEMPORARY, time.time() - RETRY_S):
            return False
        self.requeue()
        return True

    def held_rows(self) -> frozenset[int]:
        """A copy of ``held``, taken under the lock paho's thread adds to it with."""
        with self._lock:
            return frozenset(self.held)

    # -- connection ------------------------------------------------------------------------------------------

    def fall_back(self, client: mqtt.Client, reason_code: Any) -> bool:
        """``auto`` and the broker refused MQTT 5 as an unsupported protocol version: speak 3.1.1 from the next
        attempt on (paho reconnects by itself). True when so."""
        self._answered = True
        if getattr(reason_code, "value", 0) != UNSUPPORTED_PROTOCOL or not self._auto_on_5(client):
            return False
        self._speak_311(client, "does not speak MQTT 5")
        return True

    def closed(self, client: mqtt.Client, was_connected: bool) -> None:
        """A connection ended. ``auto``: a broker that ends MQTT 5 connections before any CONNACK, SILENT_CLOSES
        times in a row (some do so instead of refusing the protocol version), gets 3.1.1 from the next attempt on."""
        answered, self._answered = self._answered or was_connected, False
        self._closes = 0 if answered or not self._auto_on_5(client) else self._closes + 1
        if self._closes >= SILENT_CLOSES:
            self._speak_311(client, f"closed the connection {self._closes} times in a row before answering an MQTT 5 "
                                    "CONNECT: it may not speak MQTT 5")

    def _auto_on_5(self, client: mqtt.Client) -> bool:
        return self.setting == "auto" and client._protocol == mqtt.MQTTv5

    def _speak_311(self, client: mqtt.Client, why: str) -> None:
        client._protocol = mqtt.MQTTv311  # paho 2.x internal: paho itself downgrades 3.1.1 to 3.1 this way
        client._clean_session = True
        self._closes = 0
        log.warning("broker %s %s: using MQTT 3.1.1, over which it cannot say that it refuses a message (ACL, size): "
                    "such an alert is acknowledged and lost; set EDGE_AGENT_MQTT__PROTOCOL=3.1.1 to say so once and "
                    "for all", self.where, why)

    def connected(self, client: mqtt.Client, properties: Any) -> None:
        """A CONNACK arrived: its limits hold for this connection."""
        self._answered = True
        self.max_packet, self.receive_max = connack_limits(properties)
        with self._lock:  # what the last connection left in flight is sent again, in order; a held row still holds
            self._flying = {r: a for r, a in self._flying.items() if r in self.held}  # its alert's later rows back
        if isinstance(client, RefusalAwareClient):
            client.max_packet = self.max_packet

    def room(self, max_inflight: int) -> int:
        """Messages in flight at most: ours, and no more than the broker's Receive Maximum."""
        return min(max_inflight, self.receive_max or max_inflight)

    # -- publishing ------------------------------------------------------------------------------------------

    def body(self, row: Row, topic: str) -> bytes | None:
        """The row's message as sent now (``sent_at``), fitted into the broker's Maximum Packet Size: an alert
        without its inline evidence when that fits; None when it cannot fit (then it is a dead letter)."""
        payload = json.loads(row.payload)
        alert = str(payload.get("alert_id") or "") if row.kind == "alert" and row.qos else ""
        waits = self._waits(row.id, alert) if alert else ""
        if waits:
            return WAIT if waits == "flying" else None
        payload["sent_at"] = iso(time.time())
        body = message_bytes(payload)
        limit = self.max_packet
        if limit is None or publish_size(topic, len(body), row.qos) <= limit:
            return body
        if strip_evidence(payload):
            body = message_bytes(payload)
            if publish_size(topic, len(body), row.qos) <= limit:
                self._stripped(row.kind, f"Maximum Packet Size ({limit} bytes)")
                return body
        size = publish_size(topic, len(body), row.qos)
        self.refuse(row.id, PACKET_TOO_LARGE, f"{size} bytes, over the broker's Maximum Packet Size {limit}")
        return None

    def _waits(self, row_id: int, alert: str) -> str:
        """Why not now for this row of ``alert``: "flying", an earlier row of it is in flight (the broker may yet
        refuse it: the row waits, and the rows after it with it); "refused", an earlier row is a dead letter (this
        one follows it there, unsent: they go out again together, in order; or it is held, refused: the rows after
        it go on); "" when it may go."""
        with self._lock:
            earlier = [r for r, a in self._flying.items() if a == alert and r != row_id]
            if earlier:  # one refused and held (its dead letter could not be written): the others may pass
                return "refused" if any(r in self.held for r in earlier) else "flying"
        if self.outbox.dead_letter_behind(row_id, alert):
            self.counters.inc("uplink.held_behind_refused")
            with self._lock:
                self._unsettled.add(row_id)
            return "refused"
        with self._lock:
            self._flying[row_id] = alert
        return ""

    def settle(self, row_id: int, code: int) -> None:
        """A PUBACK for this row: delete it, or (a reason code >= 0x80, MQTT 5) move it to the dead letters."""
        if code >= 0x80:
            self.refuse(row_id, code)
        else:
            self.outbox.ack(row_id)
            self.counters.inc("uplink.acked")
        with self._lock:
            if row_id not in self.held:
                self._flying.pop(row_id, None)
            if code < 0x80 and row_id in self._unsettled:
                self._unsettled.discard(row_id)
                if not self._unsettled and self._by_kind:
                    self._by_kind.clear()
                    self._requeue_warned = -math.inf  # a later refusal is news again
                    log.info("broker %s accepts the messages it refused before", self.where)

    def _stripped(self, kind: str, limit: str) -> None:
        self.counters.inc("uplink.evidence_stripped")
        if not self._stripped_logged:
            self._stripped_logged = True
            log.warning("broker %s: an %s with its inline evidence is over the broker's %s: sent without it (fetch it "
                        "by evidence_id); lower EDGE_AGENT_ALERTS__EVIDENCE_INLINE_MAX_BYTES", self.where, kind, limit)

    def refuse(self, row_id: int, code: int, detail: str = "") -> None:
        """The broker refused this row (or would: over its Maximum Packet Size): a dead letter, counted, said once
        per reason; an alert refused as too large with its inline evidence is first sent again without it (once:
        the evidence is gone from the row). Never raises (called from paho's thread)."""
        name = reason_name(code)
        try:
            if code == PACKET_TOO_LARGE and not detail and self.outbox.strip_row_evidence(row_id):
                self._stripped("alert", "message size limit")
                return
            kind = self.outbox.dead_letter(row_id, code, f"{name}: {detail}" if detail else name)
        except Exception:  # noqa: BLE001 - e.g. a full disk: the row stays in the outbox, held back until the next start
            with self._lock:
                self.held.add(row_id)
                self._by_kind.setdefault("messages", name)
            self.counters.inc("uplink.refused")
            self.counters.inc(f"uplink.refused_by.{counter_name(name)}")
            log.exception("could not move a message the broker refused (%s) to the dead letters: it stays in the "
                          "outbox, not sent again before the next start", name)
            return
        if kind is None:
            return
        self.counters.inc("uplink.refused")
        self.counters.inc(f"uplink.refused_by.{counter_name(name)}")
        with self._lock:
            self._by_kind[kind] = name
            self._unsettled.add(row_id)
            self._flying.pop(row_id, None)  # refused before it was sent (too large): its alert's later rows follow it
            first = name not in self._logged
            self._logged.add(name)
        if first:
            hint = (f": its ACL must let this client publish to {self.topic_filter}" if code == 0x87 else
                    ": keep the broker's size limit above the largest message" if code == PACKET_TOO_LARGE else "")
            log.error("broker %s refuses %s (%s%s)%s; kept in the dead_letter table of outbox.db and sent again on the "
                      "next connection%s; further refusals for this reason are counted (stats uplink.refused_by), not logged",
                      self.where, KIND_PLURAL.get(kind, kind), name, f": {detail}" if detail else "", hint,
                      f" and every {RETRY_S / 60:.0f} min" if code in TEMPORARY else "")

    def reasons(self) -> list[str]:
        """Status reasons: ``broker refuses alerts: not authorized``, one per kind of message refused this run."""
        with self._lock:
            return [f"broker refuses {KIND_PLURAL.get(k, k)}: {n}" for k, n in sorted(self._by_kind.items())]
