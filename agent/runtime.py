"""The threads of the daemon: every one started by one ``Guard``, the readings queue, and the pipeline loop.

Threads: one per source (reads, parses, queues), ``pipeline`` (blocks of readings to their asset's pipeline, events
to the outbox, commands between blocks), ``uplink`` (outbox → MQTT, in agent.uplink), ``health`` (watchdog, stats,
status) and paho's own network threads. A thread the guard started that dies stops the process with exit 1, so
that systemd restarts it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Callable

from agent.assets import Asset
from agent.command_gate import CommandGate
from agent.control import Control
from agent.counters import Counters
from agent.health import Heartbeats
from agent.logsafe import working_on
from agent.open_alerts import expire, resume
from agent.outbox import Outbox
from agent.records import AlertEvent, Block, Reading
from agent.signals import wake_main
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
            finally:
                wake_main()  # the main thread looks at once (the pipeline done, a thread dead)

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t


BLOCK = 512  # readings the pipeline thread takes from the queue at once (fewer when fewer are waiting)
GATHER_BELOW = 64  # a take of fewer readings than this, moments after the last one ...
GATHER_S = 0.002  # ... waits this long for more (a busy stream); a slow one is taken at once
TICK_S = 0.5  # periodic work runs when the queue is quiet, and at least this often while it is busy


def _weight(item: Any) -> int:
    """Readings an item counts for: a Block its rows, a Reading one, END none."""
    return len(item) if type(item) is Block else (0 if item is END else 1)


class ReadingQueue:
    """A bounded queue of readings between the sources and the pipeline thread, bounded and counted in *readings*
    (a Block is one item of ``len(block)`` readings). ``qsize`` is the readings waiting (``stats.queue.depth``).

    One lock and a deque: a put is an append under the lock (a ``queue.Queue`` put is several times dearer per
    reading), the pipeline thread takes everything waiting, up to ``BLOCK`` readings, in one ``get_many``.
    """

    def __init__(self, size: int):
        self.size = size
        self._items: deque[Any] = deque()
        self._n = 0  # readings queued
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the consumer waits on it
        self._room = threading.Condition(self._lock)  # a waiting producer waits on it
        self._consumer_waiting = False

    def qsize(self) -> int:
        return self._n

    def put_wait(self, item: Any, stop: threading.Event) -> None:
        """Queue ``item``, waiting for room (a recording: back-pressure, not loss); gives up when ``stop`` is set.
        An item larger than the whole queue goes in when the queue is empty."""
        n = _weight(item)
        with self._lock:
            while self._n and self._n + n > self.size:
                if stop.is_set():
                    return
                self._room.wait(0.2)
            self._items.append(item)
            self._n += n
            if self._consumer_waiting:
                self._ready.notify()

    def put_drop(self, item: Any) -> int:
        """Queue ``item`` at once, dropping the oldest readings past the size (a live source); returns how many
        readings were dropped (the oldest rows of a Block are cut off, the rest of it stays)."""
        n = _weight(item)
        dropped = 0
        with self._lock:
            items = self._items
            items.append(item)
            self._n += n
            ends = 0
            while self._n > self.size:
                old = items.popleft()
                if old is END:
                    ends += 1
                    continue
                w = _weight(old)
                over = self._n - self.size
                if type(old) is Block and over < w:
                    items.appendleft(Block(old.ts[over:], old.channels, old.values[over:], old.sensor, old.asset))
                    w = over
                self._n -= w
                dropped += w
            for _ in range(ends):
                items.appendleft(END)
            if self._consumer_waiting:
                self._ready.notify()
        return dropped

    def get_many(self, limit: int, timeout: float) -> list[Any]:
        """Everything waiting, up to ``limit`` readings (at least one item), waiting up to ``timeout`` for the
        first; [] when nothing came."""
        with self._lock:
            items = self._items
            if not items:
                self._consumer_waiting = True
                self._ready.wait(timeout)
                self._consumer_waiting = False
                if not items:
                    return []
            if self._n <= limit:  # everything waiting fits: take it whole
                out = list(items)
                items.clear()
                self._n = 0
                self._room.notify_all()
                return out
            out = [items.popleft()]
            taken = _weight(out[0])
            while items and taken < limit:
                w = _weight(items[0])
                if taken + w > limit:
                    break
                out.append(items.popleft())
                taken += w
            self._n -= taken
            self._room.notify_all()
        return out


class Readings:
    """The readings queue and the sinks the sources hand their readings (and blocks) to."""

    def __init__(self, size: int, counters: Counters, stop: threading.Event):
        self.queue = ReadingQueue(size)
        self.counters = counters
        self.stop = stop

    def sink(self, live: bool) -> Sink:
        """A live source never blocks (the oldest readings are dropped and counted in ``queue.dropped``); a
        recording waits (back-pressure, not loss)."""
        q, stop, counters = self.queue, self.stop, self.counters

        def waiting(r: Reading | Block) -> None:
            q.put_wait(r, stop)

        def dropping(r: Reading | Block) -> None:
            dropped = q.put_drop(r)
            if dropped:
                counters.inc("queue.dropped", dropped)

        return dropping if live else waiting

    def end(self) -> None:
        self.queue.put_drop(END)  # weighs nothing: never waits, never drops


class PipelineLoop:
    """The pipeline thread's work: takes what the queue holds (up to ``BLOCK`` readings) and hands each asset's run
    of it to its pipeline's ``process_block``; between two blocks it carries out queued commands and a requested
    reload, and beats its heartbeat. At one reading a second a block is one reading: no added latency."""

    def __init__(self, assets: list[Asset], readings: Readings, sources: int, live: set[str], outbox: Outbox,
                 wake_uplink: Callable[[], None], publish_status: Callable[[], None], control: Control,
                 gate: CommandGate, heartbeats: Heartbeats, counters: Counters,
                 publish_reply: Callable[[str, dict[str, Any]], object]):
        self.assets = {a.id: a for a in assets}
        self.readings, self.sources = readings, sources
        # the assets fed by a live source: only they get the periodic work (silence, summary periods by the clock);
        # a replay's time is its own, and one whose file has finished is done, not silent
        self.live = frozenset(live)
        self.outbox, self.wake_uplink, self.publish_status = outbox, wake_uplink, publish_status
        self.control, self.gate, self.heartbeats, self.counters = control, gate, heartbeats, counters
        self.publish_reply = publish_reply
        self.reload = threading.Event()
        self.done = threading.Event()
        self._calibrating = {a.id: self._calibrating_now(a) for a in assets}  # a change is published at once
        self._heard: set[str] = set()  # the assets readings came for in this take (agent.arrivals)
        # the alerts open before a restart (agent.open_alerts), before this loop runs; the status says which it carries
        self.carried = resume(assets, outbox)

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
        get_many = self.readings.queue.get_many
        last_items = -1.0  # monotonic time of the last non-empty take
        last_tick = time.monotonic()  # of the last periodic work (silence, summary periods) of every asset
        while ended < self.sources:
            self.heartbeats.beat("pipeline")
            if not self.gate.queue.empty():
                self._commands()
            if self.reload.is_set():
                self.reload.clear()
                self.control.reload_configured()
            items = get_many(BLOCK, 0.2)
            if items:
                now = time.monotonic()
                if now - last_items < GATHER_S and sum(map(_weight, items)) < GATHER_BELOW:
                    # readings keep coming (the last block was taken moments ago): let a block gather instead of
                    # waking for every reading; at most GATHER_S more latency, none for a sensor at a slow rate
                    time.sleep(GATHER_S)
                    items += get_many(BLOCK - sum(map(_weight, items)), 0.0)
                last_items = now
            run: list[Any] = []  # consecutive items of one asset: one process_block
            for item in items:
                if item is END:
                    ended += 1
                    continue
                if run and item.asset != run[0].asset:
                    self._block(run)
                    run = []
                run.append(item)
            if run:
                self._block(run)
            for aid in self._heard:  # once per asset and take: the gaps between arrivals are the asset's pace
                arrivals = self.assets[aid].arrivals
                if arrivals is not None:
                    arrivals.heard()
            self._heard.clear()
            if self.live and (not items or time.monotonic() - last_tick >= TICK_S):
                # periodic work (silence, summary periods) when the queue is quiet, and also while others keep it
                # busy: a silent sensor or asset is noticed in any case
                last_tick = time.monotonic()
                for a in self.assets.values():
                    if a.id not in self.live:
                        continue
                    if a.arrivals is not None:
                        a.arrivals.check()
                    if a.pipeline is not None:
                        working_on(a.id)
                        events = a.pipeline.tick(connected=a.arrivals is None or a.arrivals.connected())
                        working_on("")
                        self._emit(a, events + expire(a.pipeline))
        for a in self.assets.values():
            if a.pipeline is not None:
                working_on(a.id)
                events = a.pipeline.finish()
                working_on("")
                self._emit(a, events)
        self.heartbeats.forget("pipeline")  # done, not stalled: the outbox may take a while to drain
        self.done.set()

    def _block(self, items: list[Any]) -> None:
        """Readings and blocks of one asset, in arrival order, through its pipeline."""
        asset = self.assets.get(items[0].asset)
        if asset is None:
            self.counters.inc("reject.unknown_asset", sum(map(_weight, items)))
            return
        self._heard.add(asset.id)
        if asset.pipeline is None:
            asset.counters.inc("reject.asset_down", sum(map(_weight, items)))
            return
        working_on(asset.id)
        events = asset.pipeline.process_block(items)
        working_on("")
        self._emit(asset, events)

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
            for e in events:  # a carried alert's clear is stored: the status no longer lists it (Board.key changes)
                if isinstance(e, AlertEvent) and e.state == "cleared" and e.alert_id in self.carried:
                    self.carried.remove(e.alert_id)
            self.wake_uplink()
        self._status_if_changed(asset)
