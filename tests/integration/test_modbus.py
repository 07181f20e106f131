"""ModbusSource against real pymodbus servers: TCP on loopback and RTU over a pty null modem.

Every data type and byte/word order against values packed by struct; several units on one line; a unit that stops
answering and comes back; exception answers counted by code; a bad CRC; an echoing adapter; the adapter unplugged
and replugged. No mocks of pymodbus or of the serial port.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from agent.counters import Counters
from agent.modbus_config import ModbusSettings
from agent.records import Reading
from agent.settings import ModbusSourceSettings
from agent.sources import CONNECTED, DISCONNECTED, FINISHED
from agent.sources.modbus import ModbusSource
from tests.conftest import wait_for
from tests.modbus_support import Device, NullModem, Server, regs

# (type, struct format, value): one of each, chosen so that a wrong byte or word order gives another number
VALUES = [
    ("int16", "h", -12345), ("uint16", "H", 54321), ("int32", "i", -123456789), ("uint32", "I", 3_000_000_001),
    ("int64", "q", -1_234_567_890_123), ("uint64", "Q", 12_345_678_901_234_567), ("float32", "f", 123.456),
    ("float64", "d", -98765.4321),
]
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


class Runner:
    """A ModbusSource on its own thread, keeping its readings."""

    def __init__(self, modbus: dict[str, Any], devices: list[str] | None = None) -> None:
        self.counters = Counters()
        self.source = ModbusSource(ModbusSourceSettings(devices=devices or []), ModbusSettings.model_validate(modbus),
                                   self.counters)
        self.readings: list[Reading] = []
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="test-modbus-source")
        self.thread.start()

    def _sink(self, r: Reading) -> None:
        with self._lock:
            self.readings.append(r)

    def _main(self) -> None:
        try:
            self.source.run(self._sink, self.stop)
        except BaseException as e:  # noqa: BLE001 - checked by finish()
            self.error = e

    def of(self, sensor: str) -> list[Reading]:
        with self._lock:
            return [r for r in self.readings if r.sensor == sensor]

    def finish(self) -> None:
        self.source.close()
        self.thread.join(10)
        assert not self.thread.is_alive() and self.error is None, self.error
        assert self.source.state == FINISHED


def tcp_bus(server: Server, **kw: Any) -> dict[str, Any]:
    return {"kind": "tcp", "host": "127.0.0.1", "tcp_port": server.port, "timeout_s": 0.3, **kw}


def rtu_bus(modem: NullModem, **kw: Any) -> dict[str, Any]:
    return {"kind": "rtu", "port": str(modem.link), "baudrate": 115200, "timeout_s": 0.3, **kw}


def test_every_type_and_order_against_known_values(cleanup: list[Any]) -> None:
    holding: dict[int, int] = {}
    channels: dict[str, Any] = {}
    expected: dict[str, float] = {}
    addr = 0
    for type_, fmt, v in VALUES:
        for byte, word in ORDERS:
            for i, r in enumerate(regs(fmt, v, byte, word)):
                holding[addr + i] = r
            name = f"{type_}-{byte}-{word}"
            channels[name] = {"address": addr, "type": type_, "byte_order": byte, "word_order": word}
            expected[name] = float(struct.unpack(">" + fmt, struct.pack(">" + fmt, v))[0])  # float32 rounding
            addr += struct.calcsize(fmt) // 2
    holding[200] = 0b1010_0000_0000_0101  # bits 0, 2, 13, 15
    channels.update({f"bit{b}": {"address": 200, "type": "bit", "bit": b} for b in (0, 1, 2, 13, 14, 15)})
    channels["scaled"] = {"table": "input", "address": 10, "type": "int16", "scale": 0.1, "offset": -40}
    channels["coil5"] = {"table": "coil", "address": 5}
    channels["coil6"] = {"table": "coil", "address": 6}
    channels["di250"] = {"table": "discrete", "address": 250}
    dev = Device(1, holding=holding, input={10: regs("h", 655)[0]}, coils={5: True}, discrete={250: True})
    server = Server([dev])
    cleanup.append(server)
    r = Runner({"buses": {"plc": tcp_bus(server)},
                "devices": {"d": {"bus": "plc", "unit": 1, "poll_s": 0.2, "channels": channels}}})
    cleanup.append(r)
    got = wait_for(lambda: r.of("d"), what="a reading")[0].values
    for name, want in expected.items():
        assert got[name] == pytest.approx(want, rel=1e-12), name
    assert [got[f"bit{b}"] for b in (0, 1, 2, 13, 14, 15)] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert got["scaled"] == pytest.approx(25.5)
    assert (got["coil5"], got["coil6"], got["di250"]) == (1.0, 0.0, 1.0)
    assert list(got) == list(channels)  # every channel, none invented
    assert r.source.channels == list(channels)


def test_neighbours_are_read_in_as_few_requests_as_the_device_allows(cleanup: list[Any]) -> None:
    dev = Device(1, holding={a: a for a in range(100)})
    server = Server([dev])
    cleanup.append(server)
    channels = {f"r{a}": {"address": a} for a in range(0, 40)}  # 40 adjacent registers
    channels["far"] = {"address": 90}  # far away: a request of its own
    r = Runner({"buses": {"plc": tcp_bus(server)},
                "devices": {"d": {"bus": "plc", "unit": 1, "poll_s": 0.5, "max_registers": 16, "channels": channels}}})
    cleanup.append(r)
    wait_for(lambda: len(r.of("d")) >= 2, what="two polls")
    r.finish()
    cleanup.remove(r)
    polls = len(r.of("d"))
    assert dev.requests == polls * 4  # 40 registers in 16 + 16 + 8, plus the far one
    assert r.of("d")[0].values["r39"] == 39.0 and r.of("d")[0].values["far"] == 90.0
    # the answers' bytes are the stats' bytes_in, as a serial or MQTT source's (it stayed 0: no bandwidth ratio)
    assert r.counters.get("source.bytes") >= polls * 41 * 2


def test_an_rtu_answer_arriving_in_pieces_is_counted_once_in_bytes_in(tmp_path: Path, cleanup: list[Any]) -> None:
    """pymodbus passes the answer so far each time a piece arrives: a 125-byte answer in 16-byte pieces was
    counted 573 bytes (a bandwidth ratio four times too high)."""
    modem = NullModem(tmp_path, pieces=16)
    cleanup.append(modem)
    dev = Device(1, holding={a: a for a in range(60)})
    server = Server([dev], serial_port=modem.server_path)
    cleanup.append(server)
    channels = {f"r{a}": {"address": a} for a in range(60)}  # one request; the answer: 5 + 120 bytes
    r = Runner({"buses": {"rs485-1": rtu_bus(modem, timeout_s=1.0, retries=0)},
                "devices": {"d": {"bus": "rs485-1", "unit": 1, "poll_s": 0.2, "channels": channels}}})
    cleanup.append(r)
    wait_for(lambda: len(r.of("d")) >= 3, timeout=20, what="three polls")
    r.finish()
    cleanup.remove(r)
    assert r.of("d")[-1].values["r59"] == 59.0
    assert dev.requests == len(r.of("d")), "a request was not answered: the count below would not be exact"
    assert r.counters.get("source.bytes") == 125 * len(r.of("d"))


def test_several_units_on_one_rtu_line_and_one_that_stops_answering(tmp_path: Path, cleanup: list[Any]) -> None:
    modem = NullModem(tmp_path)
    cleanup.append(modem)
    devs = [Device(u, holding={0: u * 100}) for u in (1, 2, 3)]
    server = Server(devs, serial_port=modem.server_path)
    cleanup.append(server)
    r = Runner({"buses": {"rs485-1": rtu_bus(modem, gap_s=0.005)},
                "devices": {str(u): {"bus": "rs485-1", "unit": u, "poll_s": 0.1, "backoff_max_s": 0.6,
                                     "channels": {"v": {"address": 0}}} for u in (1, 2, 3)}})
    cleanup.append(r)
    wait_for(lambda: all(len(r.of(str(u))) >= 3 for u in (1, 2, 3)), timeout=20, what="readings of every unit")
    assert {u: r.of(str(u))[0].values["v"] for u in (1, 2, 3)} == {1: 100.0, 2: 200.0, 3: 300.0}

    devs[2].offline = True
    wait_for(lambda: "modbus device 3 on rs485-1 not answering" in r.source.problems, timeout=10,
             what="unit 3 reported not answering")
    assert r.source.state == CONNECTED  # the bus is fine
    n1, n2 = len(r.of("1")), len(r.of("2"))
    time.sleep(1.5)
    assert len(r.of("1")) >= n1 + 5 and len(r.of("2")) >= n2 + 5  # the others keep being polled
    assert r.counters.get("source.error.no_answer") >= 2  # retried with backoff

    n3 = len(r.of("3"))
    devs[2].offline = False
    wait_for(lambda: len(r.of("3")) > n3, timeout=10, what="unit 3 answering again")
    wait_for(lambda: r.source.problems == [], what="the problem cleared")


def test_exception_answers_are_counted_by_code(cleanup: list[Any]) -> None:
    dev = Device(7, holding={0: 1}, input={0: 2})
    dev.refuse[4] = ExcCodes.ILLEGAL_ADDRESS  # read input registers: exception 2
    server = Server([dev])
    cleanup.append(server)
    r = Runner({"buses": {"plc": tcp_bus(server)},
                "devices": {"meter": {"bus": "plc", "unit": 7, "poll_s": 0.1,
                                      "channels": {"h": {"address": 0}, "i": {"table": "input", "address": 0}}}}})
    cleanup.append(r)
    wait_for(lambda: r.counters.get("source.error.exception_2") >= 2, what="exception 2 counted")
    assert r.of("meter")[0].values == {"h": 1.0}  # the holding register still arrives
    assert r.source.problems == [
        "modbus device meter (unit 7) on plc answers exception 2 (illegal data address) to input 0..0"]
    dev.refuse = {3: ExcCodes.DEVICE_BUSY, 4: ExcCodes.DEVICE_BUSY}
    wait_for(lambda: r.counters.get("source.error.exception_6") >= 2, what="exception 6 counted")
    dev.refuse = {}
    wait_for(lambda: r.source.problems == [] and r.of("meter")[-1].values == {"h": 1.0, "i": 2.0},
             what="answers again")


def test_bad_crc_and_an_echoing_adapter(tmp_path: Path, cleanup: list[Any]) -> None:
    modem = NullModem(tmp_path, echo=True)
    cleanup.append(modem)
    server = Server([Device(1, holding={0: 42})], serial_port=modem.server_path)
    cleanup.append(server)
    r = Runner({"buses": {"rs485-1": rtu_bus(modem, echo=True, retries=0)},
                "devices": {"d": {"bus": "rs485-1", "unit": 1, "poll_s": 0.1, "channels": {"v": {"address": 0}}}}})
    cleanup.append(r)
    wait_for(lambda: len(r.of("d")) >= 3, what="readings through an echoing adapter")
    assert r.of("d")[0].values == {"v": 42.0}
    assert r.counters.snapshot("source.error.") == {}
    modem.corrupt = True
    wait_for(lambda: r.counters.get("source.error.bad_crc") == 1, what="the bad CRC counted")
    n = len(r.of("d"))
    wait_for(lambda: len(r.of("d")) > n, what="readings after the bad CRC")


def test_adapter_unplugged_and_replugged(tmp_path: Path, cleanup: list[Any]) -> None:
    modem = NullModem(tmp_path)
    cleanup.append(modem)
    server = Server([Device(1, holding={0: 5})], serial_port=modem.server_path)
    cleanup.append(server)
    r = Runner({"buses": {"rs485-1": rtu_bus(modem, reconnect_min_s=0.2, reconnect_max_s=0.5)},
                "devices": {"d": {"bus": "rs485-1", "unit": 1, "poll_s": 0.05, "channels": {"v": {"address": 0}}}}})
    cleanup.append(r)
    wait_for(lambda: len(r.of("d")) >= 3, what="readings")
    modem.unplug()
    wait_for(lambda: r.source.state == DISCONNECTED, timeout=10, what="DISCONNECTED")
    assert any(p.startswith("modbus bus rs485-1 ") for p in r.source.problems), r.source.problems
    time.sleep(1.0)  # several reconnect attempts while it is away
    n = len(r.of("d"))
    modem.replug()  # a new pty node behind the same link, as a USB adapter coming back as another ttyUSB
    wait_for(lambda: len(r.of("d")) > n + 2, timeout=15, what="readings after the replug")
    assert r.source.state == CONNECTED and r.source.problems == []
    assert r.counters.get("source.reconnects") == 1
    assert r.counters.get("source.error.disconnected") == 1


def test_close_returns_promptly_and_polls_are_stamped_apart(cleanup: list[Any]) -> None:
    server = Server([Device(1), Device(2)])
    cleanup.append(server)
    r = Runner({"buses": {"plc": tcp_bus(server, gap_s=0)},
                "devices": {f"d{u}": {"bus": "plc", "unit": u, "poll_s": 0, "channels": {"v": {"address": 0}}}
                            for u in (1, 2)}})
    wait_for(lambda: len(r.readings) >= 200, what="fast polls")
    t0 = time.monotonic()
    r.finish()
    assert time.monotonic() - t0 < 2
    ts = [x.ts for x in r.readings]
    assert len(set(ts)) == len(ts) and ts == sorted(ts)  # one shared receipt clock: never the same time
