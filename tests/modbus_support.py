"""Real pymodbus servers for the tests: TCP on loopback and RTU over a pty null modem, with devices a test can
switch off, make refuse requests, or feed new register values at each poll.

No mocks: the agent's client talks Modbus to pymodbus' own server (3.16, ``SimDevice``) over a socket or a pty.
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
import threading
import time
import tty
from pathlib import Path
from typing import Callable

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.conftest import free_port, wait_for
from tests.ptys import fresh_openpty

SIZE = 256  # registers (and bits) per table of a simulated device


def regs(fmt: str, value: float, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Registers holding ``value`` packed with struct ``fmt`` (big-endian bytes), then reordered: independent of
    pymodbus, so the agent's decoding is checked against the standard, not against itself."""
    raw = struct.pack(">" + fmt, value)
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


class Device:
    """One simulated unit: four tables, plus switches a test flips from its own thread."""

    def __init__(self, unit: int, holding: dict[int, int] | None = None, input: dict[int, int] | None = None,
                 coils: dict[int, bool] | None = None, discrete: dict[int, bool] | None = None):
        self.unit = unit
        self.offline = False  # no answer at all
        self.refuse: dict[int, ExcCodes] = {}  # function code -> exception answer
        self.on_read: Callable[[int, list[int], int], None] | None = None  # (function, registers, start): update
        self.requests = 0
        self._holding, self._input = dict(holding or {}), dict(input or {})
        self._coils, self._discrete = dict(coils or {}), dict(discrete or {})

    def sim(self) -> SimDevice:
        def table(values: dict[int, int]) -> list[SimData]:
            return [SimData(0, values=[values.get(a, 0) for a in range(SIZE)], datatype=DataType.REGISTERS)]

        def bits(values: dict[int, bool]) -> list[SimData]:
            return [SimData(0, values=[values.get(a, False) for a in range(SIZE)], datatype=DataType.BITS)]

        return SimDevice(self.unit, simdata=(bits(self._coils), bits(self._discrete), table(self._holding),
                                             table(self._input)), action=self._action)

    async def _action(self, function: int, start: int, address: int, count: int, registers: list[int],
                      values: list[int] | list[bool] | None) -> ExcCodes | None:
        if self.offline:
            raise NoSuchIdException(f"device {self.unit} switched off")  # the server then sends nothing
        self.requests += 1
        if function in self.refuse:
            return self.refuse[function]
        if self.on_read is not None and function in (3, 4):
            self.on_read(function, registers, start)
        return None


class Server:
    """A pymodbus server on its own thread and event loop; ``stop()`` shuts it down."""

    def __init__(self, devices: list[Device], *, serial_port: str | None = None, baudrate: int = 115200,
                 port: int | None = None):
        self.devices = devices
        self.port = port or free_port()  # a port of a stopped server: the same device started again
        self._sims = [d.sim() for d in devices]
        self._serial_port, self._baudrate = serial_port, baudrate
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self._thread = threading.Thread(target=self._run, name="test-modbus-server", daemon=True)
        opened_before = _opened(serial_port) if serial_port is not None else 0
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Modbus server did not start")
        if serial_port is not None:
            # serve_forever opens the port after _ready: a poll before that goes unanswered (a no_answer)
            wait_for(lambda: _opened(serial_port) > opened_before, what="the Modbus RTU server's port")
        if serial_port is None:
            import socket

            def listening() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return True
                except OSError:
                    return False

            wait_for(listening, what="the Modbus TCP server")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        # pymodbus servers must be made inside their running event loop
        if self._serial_port is None:
            self.server = ModbusTcpServer(self._sims, address=("127.0.0.1", self.port), ignore_missing_devices=True)
        else:
            self.server = ModbusSerialServer(self._sims, framer=FramerType.RTU, port=self._serial_port,
                                             baudrate=self._baudrate, ignore_missing_devices=True)
        self._ready.set()
        await self.server.serve_forever()

    def stop(self) -> None:
        if self._thread.is_alive() and self.server is not None:
            fut = asyncio.run_coroutine_threadsafe(self.server.shutdown(), self._loop)
            try:
                fut.result(5)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            self._thread.join(5)


def _opened(path: str) -> int:
    """How many of this process's file descriptors are open on ``path`` (its target, for a link)."""
    real, n = os.path.realpath(path), 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == real
        except OSError:
            continue
    return n


class NullModem:
    """Two pty pairs joined by a relay thread, like two RS-485 adapters on one pair of wires: a server opens
    ``server_path``, the agent opens ``link`` (a symlink, like /dev/serial/by-id/...). ``echo``: bytes the agent
    sends come back to it too (a 2-wire adapter without echo suppression). ``corrupt``: flip a byte of the next
    answer. ``pieces``: answers reach the agent in pieces of this many bytes, ``piece_gap_s`` apart (a slow line, a
USB adapter's latency timer). ``unplug()``/``replug()`` remove and bring back the agent's side."""

    def __init__(self, workdir: Path, echo: bool = False, pieces: int = 0, piece_gap_s: float = 0.005):
        self.echo = echo
        self.corrupt = False
        self.pieces, self.piece_gap_s = pieces, piece_gap_s
        self.link = workdir / "ttyUSB-rs485"
        self._server = fresh_openpty()
        tty.setraw(self._server[1])
        self.server_path = os.ttyname(self._server[1])
        self._client: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.replug()
        self._thread = threading.Thread(target=self._relay, name="test-null-modem", daemon=True)
        self._thread.start()

    def replug(self) -> None:
        with self._lock:
            master, slave = fresh_openpty()
            tty.setraw(slave)
            self._client = (master, slave)
            tmp = self.link.with_suffix(".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(os.ttyname(slave))
            tmp.replace(self.link)

    def unplug(self) -> None:
        with self._lock:
            if self._client is not None:
                for fd in self._client:
                    os.close(fd)
            self._client = None

    def _relay(self) -> None:
        sm = self._server[0]
        while not self._stop.is_set():
            with self._lock:
                cm = self._client[0] if self._client else None
            fds = [sm] + ([cm] if cm is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.05)
            except (OSError, ValueError):
                continue
            with self._lock:
                cm = self._client[0] if self._client else None
                for fd in ready:
                    try:
                        data = os.read(fd, 4096)
                    except OSError:
                        continue
                    if fd == sm:
                        if cm is None:
                            continue  # unplugged: the answer goes nowhere
                        if self.corrupt and len(data) > 2:
                            data = data[:-1] + bytes([data[-1] ^ 0xFF])
                            self.corrupt = False
                        self._answer(cm, data)
                    elif fd == cm:
                        os.write(sm, data)
                        if self.echo:
                            os.write(cm, data)

    def _answer(self, cm: int, data: bytes) -> None:
        if not self.pieces:
            os.write(cm, data)
            return
        for i in range(0, len(data), self.pieces):
            if i:
                time.sleep(self.piece_gap_s)
            os.write(cm, data[i:i + self.pieces])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.unplug()
        for fd in self._server:
            try:
                os.close(fd)
            except OSError:
                pass
