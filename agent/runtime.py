"""The threads of the daemon: every one started by one ``Guard``, the readings queue, and the pipeline loop.

Threads: one per source (reads, parses, queues), ``pipeline`` (each reading to its asset's pipeline, events to the
outbox, commands between readings), ``uplink`` (outbox → MQTT, in agent.uplink), ``health`` (watchdog, stats,
status) and paho's own network threads. A thread the guard started that dies stops the process with exit 1, so
that systemd restarts it.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from agent.assets import Asset
from agent.command_gate import CommandGate
from agent.control import Control
from agent.counters import Counters
from agent.health import Heartbeats
from agent.logsafe import working_on
from agent.outbox import Outbox
from agent.records import Reading
from agent.sources import Sink

log = logging.getLogger(__name__)

END = object()  # queued by a source thread when its input is exhausted or closed


class Guard:
    """Starts named daemon threads; one that dies is logged and stops everything (``failed`` names it)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.failed: list[str] = []

    def start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception:  # noqa: BLE001 - a dead stage must stop the process, loudly
                log.exception("thread %s died", name)
                self.failed.append(name)
                self.stop.set()

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t


class Readings:
    """The bounded queue between the sources and the pipeline thread."""

    def __init__(self, size: int, counters: Counters, stop: threading.Event):
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.counters = counters
        self.stop = stop

    def sink(self, live: bool) -> Sink:
        """A live source never blocks (the oldest reading is dropped and counted); a recording waits (back-pressure,
        not loss)."""
        q, stop, counters = self.queue, self.stop, self.counters

        def waiting(r: Reading) -> None:
            while not stop.is_set():
                try:
                    q.put(r, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def dropping(r: Reading) -> None:
            try:
                q.put_nowait(r)
            except queue.Full:
                try:
                    q.get_nowait()
                    counters.inc("queue.dropped")
                except queue.Empty:
                    pass
                q.put_nowait(r)

        return dropping if live else waiting

    def end(self) -> None:
        self.queue.put(END)


class PipelineLoop:
    """The pipeline thread's work. Between two readings it carries out queued commands and a requested reload."""

    def __init__(self, assets: list[Asset], readings: Readings, sources: int, live: bool, outbox: Outbox,
                 wake_uplink: Callable[[], None], publish_status: Callable[[], None], control: Control,
                 gate: CommandGate, heartbeats: Heartbeats, counters: Counters,
                 publish_reply: Callable[[str, dict[str, Any]], None]):
        self.assets = {a.id: a for a in assets}
        self.readings, self.sources, self.live = readings, sources, live
        self.outbox, self.wake_uplink, self.publish_status = outbox, wake_uplink, publish_status
        self.control, self.gate, self.heartbeats, self.counters = control, gate, heartbeats, counters
        self.publish_reply = publish_reply
        self.reload = threading.Event()
        self.done = threading.Event()
        self._calibrating = {a.id: self._calibrating_now(a) for a in assets}  # a change is published at once

    @staticmethod
    def _calibrating_now(a: Asset) -> bool:
        return a.pipeline is not None and a.pipeline.snapshot.calibrating

    def _status_if_changed(self, a: Asset) -> None:
        now = self._calibrating_now(a)
        if now != self._calibrating[a.id]:
            self._calibrating[a.id] = now
            self.publish_status()

    def run(self) -> None:
        ended = 0
        get = self.readings.queue.get
        while ended < self.sources:
            self.heartbeats.beat("pipeline")
            if not self.gate.queue.empty():
                self._commands()
            if self.reload.is_set():
                self.reload.clear()
                self.control.reload_configured()
            try:
                item = get(timeout=0.2)
            except queue.Empty:
                if self.live:
                    for a in self.assets.values():
                        if a.pipeline is not None:
                            working_on(a.id)
                            events = a.pipeline.tick()
                            working_on("")
                            self._emit(a, events)
                continue
            if item is END:
                ended += 1
                continue
            asset = self.assets.get(item.asset)
            if asset is None:
                self.counters.inc("reject.unknown_asset")
                continue
            if asset.pipeline is None:
                asset.counters.inc("reject.asset_down")
                continue
            working_on(asset.id)
            events = asset.pipeline.process(item)
            working_on("")
            self._emit(asset, events)
        for a in self.assets.values():
            if a.pipeline is not None:
                working_on(a.id)
                events = a.pipeline.finish()
                working_on("")
                self._emit(a, events)
        self.done.set()

    def _commands(self) -> None:
        while True:
            try:
                name, raw = self.gate.queue.get_nowait()
            except queue.Empty:
                return
            reply = self.control.handle(name, raw)
            working_on("")
            self.publish_reply(name, reply)
            for a in self.assets.values():
                self._status_if_changed(a)

    def _emit(self, asset: Asset, events: list[Any]) -> None:
        if events:
            for m in asset.messages.outgoing(events):
                self.outbox.put(m)
            self.wake_uplink()
        self._status_if_changed(asset)
