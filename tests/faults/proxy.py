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
