"""Modbus source: polls devices on RTU lines and TCP connections with pymodbus' sync clients, one owner per bus.

Threads: ``run`` (the source thread) starts one thread per bus (``modbus-<bus>``) and waits; a bus thread owns its
client and polls its devices in turn, earliest due first, with ``gap_s`` between two requests on the wire. A
device that does not answer (after the client's retries), answers with a Modbus exception or with a bad CRC is
counted by reason (``source.error.<reason>``), shown in the status while it lasts (``modbus device 3 on rs485-1 not
answering``) and polled again with backoff (its period doubling up to ``backoff_max_s``), so it costs the others
little bus time and never stops them. A vanished adapter or connection (pymodbus raises ``ConnectionException``;
a reset socket an ``OSError``) closes the client and reopens it with backoff, as the serial source does; the
device path is opened anew each time, so a ``/dev/serial/by-id/`` link that now points at another ``ttyUSB`` node
is followed. A failed open is tried once: its own error is the status's reason (agent.sources.modbus_link).

Each poll that reads at least one request gives one Reading: the device's channels (a failed request's channels
are missing: the cleaner holds their last value or counts them), stamped on receipt by the shared clock
(``agent.receipt``: several devices polled in one pass never share a time) with the device's sensor id.

pymodbus contract relied on (3.16, sync clients): a request that gets no valid answer after ``retries`` raises
``ModbusIOException``; an exception answer is returned with ``isError()`` and ``exception_code``; an I/O error on
the port or socket closes it and raises ``ConnectionException`` (the ``OSError`` as its ``__context__``), but a
socket's reset seen by ``recv`` escapes as ``ConnectionResetError``; ``trace_packet(False, data)`` sees every
received buffer (after an adapter's echo is removed), which tells "no answer" from "an answer we could not use".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer.rtu import FramerRTU

from agent.counters import Counters
from agent.modbus_config import BusSettings, DeviceSettings, ModbusSettings
from agent.modbus_map import Request, decode, plan
from agent.receipt import receipt_time
from agent.records import Reading
from agent.settings import ModbusSourceSettings
from agent.sources import CONNECTED, CONNECTING, DISCONNECTED, FINISHED, Sink
from agent.sources.modbus_link import TcpClient, lost_cause, oserror_words

log = logging.getLogger(__name__)

EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
              5: "acknowledge", 6: "device busy", 8: "memory parity error", 10: "gateway path unavailable",
              11: "gateway target failed to respond"}
WAIT_STEP_S = 0.2  # longest sleep between checks of stop/close


class Device:
    """A device's schedule and health, owned by its bus thread."""

    def __init__(self, name: str, s: DeviceSettings, bus: str):
        self.name, self.s, self.bus = name, s, bus
        self.unit = s.unit
        self.sensor = s.sensor or name
        self.requests = plan(s)
        self.channels = list(s.channels)
        self.next_due = 0.0  # time.monotonic() of the next poll
        self.failures = 0  # consecutive polls without any answer
        self.down_since: float | None = None
        self.problem: str | None = None  # for the status while it lasts

    def label(self) -> str:
        who = f"{self.unit}" if self.name == str(self.unit) else f"{self.name} (unit {self.unit})"
        return f"modbus device {who} on {self.bus}"


class Bus:
    """One line or connection and the devices on it; ``run`` is the bus thread."""

    def __init__(self, name: str, s: BusSettings, devices: list[Device], counters: Counters):
        self.name, self.s, self.devices, self.counters = name, s, devices, counters
        self.state = CONNECTING
        self.answers = 0  # polls that delivered a reading: a connection that delivered none has not proved itself
        self.problem: str | None = None
        self._rx = b""  # what the last request received (trace_packet), to tell no answer from a garbled one
        self._last_io = 0.0
        self.client = self._client()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx = b""
        elif data:  # pymodbus passes the whole answer so far each time a piece arrives (RTU): count the new bytes
            new = len(data) - len(self._rx) if data.startswith(self._rx) else len(data)
            self._rx = data
            self.counters.inc("source.bytes", new)  # the stats' bytes_in (bandwidth ratio), as other sources
        return data

    def _client(self) -> Any:
        s = self.s
        if s.kind == "rtu":
            return ModbusSerialClient(
                s.port, framer=FramerType.RTU, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
                stopbits=s.stopbits, handle_local_echo=s.echo, name=f"modbus-{self.name}", timeout=s.timeout_s,
                retries=s.retries, trace_packet=self._trace,
            )
        return TcpClient(
            s.host, port=s.tcp_port, name=f"modbus-{self.name}", timeout=s.timeout_s, retries=s.retries,
            trace_packet=self._trace,
        )

    def where(self) -> str:
        return self.s.port if self.s.kind == "rtu" else f"{self.s.host}:{self.s.tcp_port}"

    # -- the bus thread --------------------------------------------------------------------------------------

    def run(self, sink: Sink, done: Callable[[], bool]) -> None:
        """Connect, poll until ``done()``, reconnect with backoff after the adapter or connection is lost."""
        delay = self.s.reconnect_min_s
        ever, outage_start, said = False, None, False
        flaky = False  # the last connection was lost before it delivered a reading (a peer that accepts, then resets)
        try:
            while not done():
                if not self.client.connect():
                    self._down(f"cannot open {self.where()}: {self._why_not_open()}")
                    outage_start = outage_start or time.monotonic()
                    if not said:
                        said = True
                        log.warning("modbus bus %s: cannot open %s; retrying with backoff up to %g s",
                                    self.name, self.where(), self.s.reconnect_max_s)
                    self._wait(done, delay)
                    delay = min(delay * 2, self.s.reconnect_max_s)
                    continue
                self.state, self.problem = CONNECTED, None
                if ever:
                    self.counters.inc("source.reconnects")
                if outage_start is None:
                    log.info("modbus bus %s: %s open, polling %s", self.name, self.where(),
                             ", ".join(d.name for d in self.devices))
                else:
                    log.log(logging.DEBUG if flaky else logging.INFO, "modbus bus %s: %s open again after %.1f s",
                            self.name, self.where(), time.monotonic() - outage_start)
                ever, said, answers = True, False, self.answers
                try:
                    self._poll_loop(sink, done)
                except (ConnectionException, OSError) as e:  # OSError: a reset (RST) pymodbus does not catch
                    self.counters.inc("source.error.disconnected")
                    why = lost_cause(e, str(self.client))
                    self._down(f"lost {self.where()}: {why}")
                    said = True
                    delivered = self.answers > answers
                    if delivered:  # it worked: a new outage, from the shortest wait
                        outage_start, delay = None, self.s.reconnect_min_s
                    # lost again before any reading (a peer that accepts, then resets): the same outage goes on,
                    # the wait keeps doubling, and it is said once, not at every cycle
                    log.log(logging.DEBUG if flaky and not delivered else logging.WARNING,
                            "modbus bus %s: %s lost (%s); reconnecting with backoff up to %g s",
                            self.name, self.where(), why, self.s.reconnect_max_s)
                    outage_start, flaky = outage_start or time.monotonic(), not delivered
                    self.client.close()
                    self._wait(done, delay)
                    delay = min(delay * 2, self.s.reconnect_max_s)
        finally:
            self.client.close()

    def _down(self, why: str) -> None:
        self.problem = f"modbus bus {self.name} disconnected ({why})"  # first: a disconnected bus always says why
        self.state = DISCONNECTED
        for d in self.devices:
            d.problem = None  # the bus says it: not one line per device

    def _why_not_open(self) -> str:
        """The error behind a failed open (pymodbus logs it, and its logger is muted): a TCP client's own attempt
        kept it (no second attempt: a silent host would cost its timeout twice); an RTU port is looked at (a stat,
        at once); "open failed" when that shows nothing (the open failed for another reason)."""
        if self.s.kind != "rtu":
            return oserror_words(self.client.error) if self.client.error is not None else "open failed"
        try:
            os.stat(self.s.port)
            if not os.access(self.s.port, os.R_OK | os.W_OK):
                return "permission denied"
        except OSError as e:
            return oserror_words(e)
        return "open failed"

    def _wait(self, done: Callable[[], bool], seconds: float) -> None:
        end = time.monotonic() + seconds
        while not done() and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, WAIT_STEP_S))

    def _poll_loop(self, sink: Sink, done: Callable[[], bool]) -> None:
        now = time.monotonic()
        for d in self.devices:
            d.next_due = min(d.next_due, now) if d.failures else now
        while not done():
            d = min(self.devices, key=lambda x: x.next_due)
            wait = d.next_due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, WAIT_STEP_S))
                continue
            self.poll(d, sink)

    def poll(self, d: Device, sink: Sink) -> None:
        """Read every request of ``d``, deliver one Reading, update its health and next due time."""
        values: dict[str, float | str] = {}
        errors: list[tuple[str, Request]] = []
        for req in d.requests:
            data, reason = self._read(d, req)
            if data is None:
                errors.append((reason, req))
                self.counters.inc(f"source.error.{reason}")
                if reason == "no_answer" and not values:
                    break  # silent from its first request: do not spend the others' bus time on the rest
            else:
                values.update(decode(req, data))
        period = d.s.poll_s
        now = time.monotonic()
        if values:
            self.answers += 1
            self.counters.inc("source.polls")
            self.counters.inc("source.readings")
            sink(Reading(ts=receipt_time(), values=values, sensor=d.sensor))  # stamped at the poll
            if d.failures:
                log.info("%s answers again after %.1f s", d.label(), now - (d.down_since or now))
            d.failures, d.down_since = 0, None
            d.next_due = max(d.next_due + period, now)
            d.problem = self._refusals(d, errors)
            return
        d.failures += 1
        if d.down_since is None:
            d.down_since = now
        reason = errors[0][0] if errors else "no_answer"
        d.problem = self._refusals(d, errors) if reason.startswith("exception_") else (
            f"{d.label()} {'not answering' if reason == 'no_answer' else 'answering with ' + reason.replace('_', ' ')}")
        if d.failures == 1:
            log.warning("%s; polled again with backoff up to %g s", d.problem, d.s.backoff_max_s)
        backoff = min(max(period, self.s.timeout_s) * 2 ** min(d.failures, 20), d.s.backoff_max_s)
        d.next_due = now + max(backoff, period)

    def _refusals(self, d: Device, errors: list[tuple[str, Request]]) -> str | None:
        refused = [(r, q) for r, q in errors if r.startswith("exception_")]
        if not refused:
            return None if not errors else f"{d.label()} not answering some requests"
        r, q = refused[0]
        code = int(r.split("_")[1])
        return f"{d.label()} answers exception {code} ({EXCEPTIONS.get(code, 'unknown')}) to {q.describe()}"

    def _read(self, d: Device, req: Request) -> tuple[Any, str]:
        """(registers or bits, "") or (None, reason); raises ConnectionException when the bus is gone."""
        gap = self.s.gap_s - (time.monotonic() - self._last_io)
        if gap > 0:
            time.sleep(gap)
        c = self.client
        call = {"holding": c.read_holding_registers, "input": c.read_input_registers, "coil": c.read_coils,
                "discrete": c.read_discrete_inputs}[req.table]
        try:
            rr = call(req.address, count=req.count, device_id=d.unit)
        except ModbusIOException:
            return None, self._garbled() or "no_answer"
        except ConnectionException:
            raise
        except ModbusException:
            return None, "bad_frame"
        finally:
            self._last_io = time.monotonic()
        if rr.isError():
            return None, f"exception_{getattr(rr, 'exception_code', 0)}"
        data = rr.bits if req.table in ("coil", "discrete") else rr.registers
        if len(data) < req.count:
            return None, "bad_frame"
        return data, ""

    def _garbled(self) -> str | None:
        """Why bytes that came back were no answer: ``bad_crc`` (RTU), ``bad_frame``; None when nothing came."""
        rx = self._rx
        if not rx:
            return None
        if self.s.kind == "rtu" and len(rx) >= 4 and FramerRTU.compute_CRC(rx[:-2]) != int.from_bytes(rx[-2:], "big"):
            return "bad_crc"
        return "bad_frame"


class ModbusSource:
    """Polls the configured Modbus devices, one thread per bus, and hands one Reading per device poll to the sink."""

    live = True

    def __init__(self, settings: ModbusSourceSettings, modbus: ModbusSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        names = list(settings.devices) or list(modbus.devices)
        if not names:
            raise ValueError("EDGE_AGENT_SOURCE__KIND=modbus: no [modbus.devices.NAME] in the configuration file")
        by_bus: dict[str, list[Device]] = {}
        for name in names:
            if name not in modbus.devices:
                raise ValueError(f"EDGE_AGENT_SOURCE__DEVICES: {name} is not declared as [modbus.devices.{name}]")
            s = modbus.devices[name]
            by_bus.setdefault(s.bus, []).append(Device(name, s, s.bus))
        self.buses = [Bus(b, modbus.buses[b], devs, counters) for b, devs in by_bus.items()]
        self.name = "modbus:" + ",".join(f"{b.name}({','.join(d.name for d in b.devices)})" for b in self.buses)
        self._channels = [c for b in self.buses for d in b.devices for c in d.channels if c]
        self._closed = threading.Event()
        self._finished = False
        if not log.isEnabledFor(logging.DEBUG):
            # pymodbus logs every timeout at ERROR; this source counts them and says each outage once
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    @property
    def expected_interval_s(self) -> float:
        """The longest poll period of its devices: readings are due at least that often (agent/arrivals.py)."""
        return max((d.s.poll_s for b in self.buses for d in b.devices), default=0.0)

    def expected_interval_of(self, sensors: set[str]) -> float:
        """The longest poll period of the devices with these sensor ids (an asset's): a fast asset is not judged
        at the pace of a slow one on the same source. The whole source's when none of them is its."""
        return max((d.s.poll_s for b in self.buses for d in b.devices if d.sensor in sensors),
                   default=self.expected_interval_s)

    @property
    def channels(self) -> list[str] | None:
        """Channel names of the register maps, device by device, in map order (duplicates kept once)."""
        return list(dict.fromkeys(self._channels))

    @property
    def state(self) -> str:
        """connected while any bus is, disconnected when every bus is down; connecting before the first try."""
        if self._finished:
            return FINISHED
        states = {b.state for b in self.buses}
        if CONNECTED in states:
            return CONNECTED
        return DISCONNECTED if DISCONNECTED in states else CONNECTING

    def state_of(self, sensors: set[str]) -> str:
        """The link state of the buses that carry the devices with these sensor ids (an asset's): disconnected while
        any of them is down (its readings from there stop), connected when every one is up."""
        if self._finished:
            return FINISHED
        states = {b.state for b in self.buses if any(d.sensor in sensors for d in b.devices)}
        if DISCONNECTED in states:
            return DISCONNECTED
        return CONNECTED if states == {CONNECTED} else CONNECTING

    @property
    def problems(self) -> list[str]:
        """What the status shows as degraded reasons: buses down, devices not answering or refusing."""
        out = [b.problem for b in self.buses if b.problem]
        out += [d.problem for b in self.buses for d in b.devices if d.problem]
        return out

    def problems_of(self, sensors: set[str]) -> list[str]:
        """The problems that concern the devices with these sensor ids (an asset's), their buses' included."""
        out = [b.problem for b in self.buses if b.problem and any(d.sensor in sensors for d in b.devices)]
        out += [d.problem for b in self.buses for d in b.devices if d.problem and d.sensor in sensors]
        return out

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Poll until ``stop`` is set or ``close`` is called; a bus thread that dies ends the source (raises)."""
        errors: list[BaseException] = []

        def done() -> bool:
            return stop.is_set() or self._closed.is_set() or bool(errors)

        def bus_main(bus: Bus) -> None:
            try:
                bus.run(sink, done)
            except BaseException as e:  # noqa: BLE001 - re-raised on the source thread, which stops the process
                log.exception("modbus bus %s: thread died", bus.name)
                errors.append(e)

        threads = [threading.Thread(target=bus_main, args=(b,), name=f"modbus-{b.name}", daemon=True)
                   for b in self.buses]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(WAIT_STEP_S)
            if errors:
                raise errors[0]
        finally:
            self._finished = True

    def close(self) -> None:
        """Make ``run`` return (within one request timeout); any thread, any time."""
        self._closed.set()
