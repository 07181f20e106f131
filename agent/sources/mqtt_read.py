"""A paho client that reads the sensor broker's socket in large chunks.

paho 2 reads each packet with several ``recv`` calls (the command byte, each byte of the remaining length, then the
body) and handles one QoS 0 packet per ``select``: five system calls per sensor message, most of the cost of a
small message. ``BufferedReadClient`` serves those reads from one ``recv(RECV_BYTES)`` and handles every packet
already buffered before paho selects again (``select`` cannot know about bytes in our buffer). What paho sees is
the same byte stream, cut into the same reads; the buffer belongs to one socket and is dropped with it (reconnect).

QoS 0 PUBLISH packets whole in the buffer (the bulk of sensor traffic) are decoded here, straight from the buffer
(an empty buffer is filled first, so the first packet of a read is too), and handed to ``fast_publish(topic bytes,
payload, retain)``: no MQTTMessage, no paho dispatch. Any other packet, one that is not whole yet, and anything
malformed go through paho as before (from the same buffer, in order).
Every other message goes to ``on_message``: the sensor client registers no per-topic callbacks, so paho's topic matching
for them (a trie walk per message) is skipped. ``after_loop`` runs after each pass of paho's network loop: the messages of one read are delivered by then, so the
source can hand them over together (agent.sources.mqtt: a burst becomes a Block).

Relies on paho-mqtt 2.x internals (``_sock_recv``, ``loop_read``, ``_loop``; pinned <3 in pyproject, as
agent.mqtt_client.ExplainingClient already does).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import paho.mqtt.client as mqtt

from agent.mqtt_client import ExplainingClient

RECV_BYTES = 65536


class BufferedReadClient(ExplainingClient):
    """ExplainingClient whose socket reads come from a per-socket buffer (see the module's docstring)."""

    _rbuf: bytes = b""
    _rpos: int = 0
    _rsock: Any = None  # the socket the buffer was read from
    _rerr: OSError | None = None  # an error ``_fill`` met, raised by the next read
    after_loop: Callable[[], None] | None = None  # called after each pass of the network loop (never raises)
    fast_publish: Callable[[bytes, bytes, bool], None] | None = None  # (topic, payload, retain); never raises

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rerr is not None:  # met by ``_fill``: paho's read meets it now
            err, self._rerr = self._rerr, None
            raise err
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf) or self._rsock is not self._sock:
            data = super()._sock_recv(RECV_BYTES)  # BlockingIOError / OSError / b"" (closed) as paho expects
            self._rsock = self._sock
            if not data:
                self._rbuf, self._rpos = b"", 0
                return data
            buf, pos = data, 0
            self._rbuf = buf
        out = buf[pos:pos + bufsize]
        self._rpos = pos + len(out)
        return out

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._rbuf) - self._rpos if self._rsock is self._sock else 0

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTT_ERR_SUCCESS and self._sock is not None and self.buffered():
            rc = super().loop_read(max_packets)  # packets already in the buffer: select() would not report them
        return rc

    def _loop(self, timeout: float = 1.0) -> mqtt.MQTTErrorCode:
        try:
            return super()._loop(timeout)
        finally:
            if self.after_loop is not None:
                self.after_loop()

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("BufferedReadClient hands every message to on_message")

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self.on_message  # paho's, without the match against per-topic callbacks (there are none)
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _fill(self) -> None:
        """Read the socket into the empty buffer, so that the first packet of a read is decoded from it too (a
        sensor at a few messages per read would otherwise have each read's first message go through paho's path).
        Nothing to read yet: the buffer stays empty and paho's own read finds nothing either. An error (a reset, a
        TLS failure) is kept and raised by paho's own read below, as it would have met it: a second recv would not
        see it again (after a reset it returns b"", which paho logs as a plain close)."""
        try:
            data = super()._sock_recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            self._rerr = err
            return
        if data:  # b"" (closed): paho's read sees it again
            self._rbuf, self._rpos, self._rsock = data, 0, self._sock

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        fast = self.fast_publish
        if fast is None or self._in_packet["command"] != 0:
            return super()._packet_read()  # no fast path, or paho is in the middle of a packet
        if self._rsock is not self._sock or self._rpos >= len(self._rbuf):
            self._fill()  # the first packet of a read is decoded from the buffer too
            if self._rsock is not self._sock:
                return super()._packet_read()  # nothing read on this socket (or an error: paho's read raises it)
        buf, pos = self._rbuf, self._rpos
        end, start = len(buf), pos
        while pos + 4 <= end and buf[pos] & 0xF6 == 0x30:  # PUBLISH, QoS 0, no dup; bit 0: retain
            length, mult, i = 0, 1, pos + 1
            while i < end and i - pos <= 4:  # the remaining length: 1 to 4 bytes of 7 bits
                b = buf[i]
                length += (b & 127) * mult
                mult <<= 7
                i += 1
                if not b & 128:
                    break
            else:
                break  # not all here yet, or malformed: paho's turn
            stop = i + length
            if stop > end or length < 2:
                break
            topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            if topic_end > stop:
                break  # malformed: paho says so
            fast(buf[i + 2:topic_end], buf[topic_end:stop], bool(buf[pos] & 1))
            pos = stop
        if pos != start:
            self._rpos = pos
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()  # paho's clock (keepalive)
            if pos >= end:
                return mqtt.MQTT_ERR_SUCCESS
        return super()._packet_read()
