"""Sources of readings, one module per kind, and the explicit kind -> factory registry.

A source runs on its own thread (``run``) and hands every parsed ``Reading`` to ``sink``. It never raises for
bad input: a line or payload it cannot parse is counted in ``counters`` as ``reject.<reason>`` and dropped.
Transient faults (unplugged port, broker down) are retried inside the source with backoff; ``state`` says
where it is, for status and stats.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from agent.counters import Counters
from agent.records import Block, Reading
from agent.settings import Settings

Sink = Callable[[Reading | Block], None]  # a Block counts as len(block) readings

BUSY_S = 0.05  # hand-overs closer than this ...
BUSY_BELOW = 64  # ... of fewer readings than this each: a busy stream of single readings, read at most every gather_s
FLOOD_BYTES = 2048  # a read this big is a flood whatever its line count: half of a serial port's 4 KiB kernel buffer,
# which a wait could let overflow (long lines at 1 Mbaud fill it in 40 ms)


class Pacer:
    """Paces the reads of a busy stream (serial lines, MQTT messages), so that its readings reach the pipeline a few
    at a time: one wake-up of the source thread and of the pipeline thread for several readings instead of one per
    reading, which is most of the CPU of a stream of 100 readings/s. A reading waits at most ``gather_s`` (in the
    operating system's buffer); a sensor at a slow rate (hand-overs at least ``BUSY_S`` apart) is never delayed,
    nor is a flood (a read of ``BUSY_BELOW`` readings or ``FLOOD_BYTES`` bytes or more: nothing to gain, and a port
    buffer to keep from overflowing)."""

    def __init__(self, gather_s: float):
        self.gather_s = gather_s
        self._last = -1e9

    def after(self, n: int, nbytes: int = 0) -> float:
        """``n`` readings (read as ``nbytes`` bytes, where the source knows) were just handed over: how long to wait
        before reading again (0: at once)."""
        if n <= 0:
            return 0.0  # nothing was handed over: not a visit of the stream, the clock stays
        now = time.monotonic()
        last, self._last = self._last, now
        if self.gather_s <= 0 or n >= BUSY_BELOW or nbytes >= FLOOD_BYTES or now - last >= BUSY_S:
            return 0.0
        return self.gather_s


# Source states shown in status and stats.
CONNECTING = "connecting"
CONNECTED = "connected"
DISCONNECTED = "disconnected"
FINISHED = "finished"


class Source(Protocol):
    """A producer of readings."""

    name: str
    live: bool  # False for a recording: the pipeline applies back-pressure instead of dropping the oldest

    @property
    def channels(self) -> list[str] | None:
        """The channel names this source delivers, in order, when known (configured, a header, a register map);
        None when only the data will tell (MQTT payloads, a serial stream whose header has not come yet)."""

    @property
    def state(self) -> str: ...

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Read until the input is exhausted (return) or ``stop`` is set; runs on the source thread."""

    def close(self) -> None:
        """Unblock ``run`` from another thread (shutdown closes from the input end)."""

    @property
    def problems(self) -> list[str]:
        """Degraded reasons beyond ``state`` (a Modbus device not answering), for the status; [] when none."""


def link_state(source: Source, sensors: set[str]) -> str:
    """The state of ``source`` as far as the devices with these sensor ids go (an asset's: a Modbus source's buses
    each have their own link, ``state_of``); the source's own ``state`` otherwise."""
    state_of = getattr(source, "state_of", None)
    return state_of(sensors) if sensors and state_of is not None else source.state


def expected_interval(source: Source, sensors: set[str]) -> float:
    """The pace at which ``source`` says readings are due for the devices with these sensor ids (an asset's: a
    Modbus source's devices each have their own poll period), 0 when it knows none (agent/arrivals.py)."""
    of = getattr(source, "expected_interval_of", None)
    if sensors and of is not None:
        return float(of(sensors))
    return float(getattr(source, "expected_interval_s", 0.0))


def _replay(settings: Settings, counters: Counters) -> Source:
    from agent.sources.replay import ReplaySource

    return ReplaySource(settings.source, counters)  # type: ignore[arg-type]


def _serial(settings: Settings, counters: Counters) -> Source:
    from agent.sources.serial import SerialSource

    return SerialSource(settings.source, counters)  # type: ignore[arg-type]


def _mqtt(settings: Settings, counters: Counters) -> Source:
    from agent.sources.mqtt import MqttSource

    return MqttSource(settings.source, settings.mqtt, counters, device_id=settings.device_id)  # type: ignore[arg-type]


def _modbus(settings: Settings, counters: Counters) -> Source:
    from agent.sources.modbus import ModbusSource

    return ModbusSource(settings.source, settings.modbus, counters)  # type: ignore[arg-type]


# kind -> factory. Each factory imports its module when called, so that a gateway reading a serial port never
# imports paho's sensor client or pymodbus. A new kind is one entry here plus its settings class in
# agent/settings.py (SOURCE_KINDS); a test checks that both list the same kinds.
FACTORIES: dict[str, Callable[[Settings, Counters], Source]] = {
    "replay": _replay,
    "serial": _serial,
    "mqtt": _mqtt,
    "modbus": _modbus,
}


def create_source(settings: Settings, counters: Counters) -> Source:
    """Build the source named by ``settings.source.kind``."""
    try:
        factory = FACTORIES[settings.source.kind]
    except KeyError:
        raise ValueError(f"unknown source kind {settings.source.kind!r}") from None
    return factory(settings, counters)
