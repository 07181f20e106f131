"""Sources of readings, one module per kind, and the explicit kind -> factory registry.

A source runs on its own thread (``run``) and hands every parsed ``Reading`` to ``sink``. It never raises for
bad input: a line or payload it cannot parse is counted in ``counters`` as ``reject.<reason>`` and dropped.
Transient faults (unplugged port, broker down) are retried inside the source with backoff; ``state`` says
where it is, for status and stats.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol

from agent.counters import Counters
from agent.records import Reading
from agent.settings import Settings

Sink = Callable[[Reading], None]

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
    def state(self) -> str: ...

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Read until the input is exhausted (return) or ``stop`` is set; runs on the source thread."""

    def close(self) -> None:
        """Unblock ``run`` from another thread (shutdown closes from the input end)."""


def create_source(settings: Settings, counters: Counters) -> Source:
    """Build the source named by ``settings.source.kind``."""
    kind = settings.source.kind
    if kind == "replay":
        from agent.sources.replay import ReplaySource

        return ReplaySource(settings.source, counters)  # type: ignore[arg-type]
    if kind == "serial":
        from agent.sources.serial import SerialSource

        return SerialSource(settings.source, counters)  # type: ignore[arg-type]
    if kind == "mqtt":
        from agent.sources.mqtt import MqttSource

        return MqttSource(settings.source, settings.mqtt, counters, device_id=settings.device_id)  # type: ignore[arg-type]
    raise ValueError(f"unknown source kind {kind!r}")
