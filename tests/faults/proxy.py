"""A TCP proxy between the agent and a real mosquitto, for the fault tests that break the connection (a
partition the agent cannot see, a connection that dies, reconnecting refused for a while)."""

from __future__ import annotations

import socket
import threading
from typing import Callable


class Proxy:
    """A TCP proxy in front of the broker. ``blackhole()``: bytes from the agent are kept here, never forwarded (a
    partition the agent cannot see); ``cut()``: the connections are closed and new ones refused; ``heal()``."""

    def __init__(self, broker_port: int):
        self.broker_port = broker_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"
        self.swallowed = b""
        self.accepted = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                agent, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "cut":
                agent.close()
                continue
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            with self._lock:
                self.accepted += 1
                self._socks += [agent, broker]
            threading.Thread(target=self._pipe, args=(agent, broker, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(broker, agent, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        pipe(src, dst, self._swallow if upstream else None)

    def _swallow(self, data: bytes) -> bool:
        if self.mode != "blackhole":
            return False
        with self._lock:
            self.swallowed += data
        return True

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def cut(self) -> None:
        self.mode = "cut"
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def heal(self) -> None:
        self.mode = "pass"

    def close(self) -> None:
        self.cut()
        self.listener.close()


def pipe(src: socket.socket, dst: socket.socket, swallow: Callable[[bytes], bool] | None = None) -> None:
    """Forward ``src`` to ``dst`` until either ends (a chunk ``swallow`` takes is not forwarded), then close both."""
    try:
        while data := src.recv(65536):
            if swallow is None or not swallow(data):
                dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.close()
        except OSError:
            pass


def packet_length(buf: bytes) -> int | None:
    """Bytes of the MQTT packet at the start of ``buf`` (fixed header byte, remaining-length varint, the rest);
    None while its header is incomplete."""
    mult, rest = 1, 0
    for i in range(1, min(len(buf), 5)):
        rest += (buf[i] & 0x7F) * mult
        if not buf[i] & 0x80:
            return 1 + i + rest
        mult *= 128
    return None


PUBLISH, PINGREQ = 3, 12  # MQTT packet types (the fixed header's high nibble)


class SwallowingProxy(Proxy):
    """A proxy that, once ``swallow()`` is called, drops the PUBLISH packets the agent sends on the connections open
    then (the broker never sees them, so no PUBACK comes) and forwards every other packet: PINGREQ and PINGRESP keep
    the connection alive. Connections made later pass everything; ``swallow_upto = n`` before the agent connects:
    its first n connections swallow from their start (a hung broker that still accepts connections)."""

    def __init__(self, broker_port: int):
        super().__init__(broker_port)
        self.swallow_upto = 0  # connections 1..swallow_upto swallow
        self.publishes_swallowed = 0
        self.pings_while_swallowing = 0  # PINGREQs forwarded on a connection that swallows

    def swallow(self) -> None:
        self.swallow_upto = self.accepted

    def drops(self, conn: int, packet: bytes) -> bool:
        """Whether to drop this packet the agent sent on connection number ``conn``."""
        if conn > self.swallow_upto:
            return False
        if packet[0] >> 4 == PINGREQ:
            self.pings_while_swallowing += 1
        return packet[0] >> 4 == PUBLISH

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        if not upstream:
            pipe(src, dst)
            return
        conn = self.accepted  # this connection's number: the next is accepted only after it started
        buf = b""

        def forward(data: bytes) -> bool:
            nonlocal buf
            buf += data
            out = b""
            while (n := packet_length(buf)) is not None and len(buf) >= n:
                packet, buf = buf[:n], buf[n:]
                if self.drops(conn, packet):
                    self.publishes_swallowed += 1
                    continue
                out += packet
            if out:
                dst.sendall(out)
            return True  # forwarded here, packet by packet

        pipe(src, dst, forward)


def publish_topic(packet: bytes) -> str | None:
    """The topic of an MQTT PUBLISH packet (None for other packets)."""
    if packet[0] >> 4 != PUBLISH:
        return None
    i = 1
    while packet[i] & 0x80:  # the remaining length's varint
        i += 1
    size = int.from_bytes(packet[i + 1:i + 3], "big")
    return packet[i + 3:i + 3 + size].decode()


class DroppingOneProxy(SwallowingProxy):
    """A proxy that drops one PUBLISH only: the first whose topic ends with ``suffix`` (a middlebox losing one
    packet); everything before and after it, PUBLISHes included, passes. ``dropped_on``: that connection's number."""

    def __init__(self, broker_port: int, suffix: str):
        super().__init__(broker_port)
        self.suffix = suffix
        self.dropped_on = 0

    def drops(self, conn: int, packet: bytes) -> bool:
        topic = publish_topic(packet)
        if self.dropped_on or topic is None or not topic.endswith(self.suffix):
            return False
        self.dropped_on = conn
        return True
