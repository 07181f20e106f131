"""Composition root: build the stages from the settings, start their threads, stop them in order. Wiring only.

Shutdown closes from the input end so nothing in flight is lost: sources closed → the pipeline drains the queue
and writes every asset's final summary → the uplink drains the outbox (until ``DRAIN_TIMEOUT_S`` passes without
progress), publishes ``offline`` → outbox closed. How the pieces fit: README.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from typing import Any

from agent import __version__, heap, sdnotify
from agent.arrivals import watch_arrivals
from agent.assets import (  # noqa: F401 - build_pipeline and load_model: also what evaluate and cli use
    ModelCache, build_assets, build_feeds, build_pipeline, load_model, source_channels,
)
from agent.command_gate import CommandGate
from agent.control import Control, Gateway, load_overrides
from agent.counters import Counters
from agent.evidence import EvidenceStore
from agent.files import hold_state_dir, probe_state_dir, release_state_dir
from agent.health import Heartbeats, HealthMonitor
from agent.outbox import Outbox
from agent.parse import duration_text
from agent.receipt import follow_steps_beyond
from agent.runtime import Guard, PipelineLoop, Readings
from agent.settings import Settings, flat_env
from agent.signals import SignalCounter
from agent.sources import CONNECTING
from agent.status import Board
from agent.uplink import Uplink

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1


def config_digest(settings: Settings) -> str:
    """A short digest of the effective configuration (secrets masked), for the birth message."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(flat_env(settings).items()) if k != "EDGE_AGENT_DEVICE_ID")
    from agent.reference_toml import render_file_only

    text += "\n" + render_file_only(settings)  # the register maps and assets have no env variables
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Agent:
    """The running daemon."""

    def __init__(self, settings: Settings):
        self.settings = s = settings
        self.counters = Counters()
        self.stop = threading.Event()
        self.lock = hold_state_dir(s.state_dir)  # one agent per state directory (StateDirError: who holds it)
        probe_state_dir(s.state_dir)  # StateDirError (exit 78) naming the path and the reason
        self.evidence = EvidenceStore(s.state_dir / "evidence.db", s.alerts.evidence_max_bytes)
        self.outbox = Outbox(s.state_dir / "outbox.db", self.counters, s.outbox.max_rows, s.outbox.max_bytes)
        self.feeds = build_feeds(s, self.counters)
        self.assets = build_assets(s, self.counters, self.evidence, ModelCache(), source_channels(self.feeds, s))
        live = watch_arrivals(self.assets, self.feeds)  # fed by live sources: "no readings arriving" when quiet
        follow_steps_beyond([a.settings.cleaning.max_time_jump_s for a in self.assets])  # agent/receipt.py
        for a in self.assets:
            threshold = load_overrides(a.overrides_path).get("threshold")
            if threshold is not None and a.pipeline is not None:
                a.pipeline.set_threshold(threshold)
                log.info("threshold%s %.6g set by command (in %s)", f" of {a.id}" if a.id else "", threshold,
                         a.overrides_path)
        self.readings = Readings(s.queue_size, self.counters, self.stop)
        self.gate = CommandGate(self.counters, s.commands.rate_per_minute, s.commands.burst)
        self.uplink = Uplink(s.mqtt, s.device_id, self.outbox, self.counters, lambda: self.board.status(),
                             on_command=self.gate.offer if s.commands.enabled else None,
                             status_key=lambda: self.board.key(), offline=lambda *a: self.board.offline(*a))
        self.heartbeats = Heartbeats()
        self.uplink.heartbeat = lambda: self.heartbeats.beat("uplink")
        self.board = Board(s, self.assets, self.feeds, self.counters, self.outbox, self.evidence, self.heartbeats,
                           self.readings.queue, lambda: self.uplink.bytes_out, self.uplink.connected.is_set,
                           config_digest(s), self.uplink.refusals.reasons)
        self.commands = Control(self.assets, self.evidence, self.counters, s.commands,
                                Gateway(s.device_id, self.board.state, self.board.asset_state, self.publish_status_and_stats,
                                        self.uplink.publish_status))
        self.loop = PipelineLoop(
            self.assets, self.readings, len(self.feeds), live, self.outbox,
            self.uplink.wake, self.uplink.publish_status, self.commands, self.gate, self.heartbeats, self.counters,
            lambda name, reply: self.uplink.publish_now(f"reply/{name}", reply, qos=1),
        )
        self.board.carried_alerts = self.loop.carried  # before the uplink's first status (run)
        self.guard = Guard(self.stop)

    # -- for one machine (no [[assets]]): its pipeline, as before -------------------------------------------------

    @property
    def pipeline(self) -> Any:
        return self.assets[0].pipeline

    @property
    def overrides_path(self) -> Any:
        return self.assets[0].overrides_path

    def status(self) -> dict[str, Any]:
        return self.board.status()

    def stats(self) -> dict[str, Any]:
        return self.board.stats()

    def state(self) -> str:
        return self.board.state()

    def publish_status_and_stats(self) -> None:
        self.uplink.publish_status()
        self.uplink.publish_now("stats", self.board.stats())

    # -- run -------------------------------------------------------------------------------------------------

    def _source_loop(self, feed: Any) -> Any:
        def run() -> None:
            try:
                feed.source.run(feed.sink(self.readings.sink(feed.source.live)), self.stop)
            finally:
                self.readings.end()

        return run

    def _announce(self) -> None:
        depth = self.outbox.depth()
        models = ", ".join(f"{a.id + ': ' if a.id else ''}{a.pipeline.model.name} {a.pipeline.model.version} "
                           f"({a.pipeline.model.runtime})" for a in self.assets if a.pipeline is not None)
        log.info("edge-agent %s: device %s, model %s, source %s, broker %s:%d%s", __version__, self.settings.device_id,
                 models, ", ".join(f.source.name for f in self.feeds), self.settings.mqtt.host, self.settings.mqtt.port,
                 f", {depth} messages from an earlier run in the outbox" if depth else "")
        for a in self.assets:
            if a.pipeline is not None and a.pipeline.snapshot.calibrating:
                cal = a.pipeline.calibrator
                span = f"{duration_text(cal.duration_s)} of data" if cal.duration_s else f"{cal.samples} readings"
                log.info("teach-in%s: the first %s are taken as normal (no alerts until then)%s",
                         f" of {a.id}" if a.id else "", span,
                         f"; {cal.resumed} readings of it from before the restart" if cal.resumed else "")

    def run(self) -> int:
        """Run until the replays end or a signal arrives; the process exit code."""
        # the handlers only count; this thread sets the events (agent/signals.py: Event.set() in a handler can hang)
        term = SignalCounter(signal.SIGTERM, signal.SIGINT).install()
        hup = SignalCounter(signal.SIGHUP).install()
        self._announce()
        heap.limit_arenas()  # before the threads start (agent/heap.py); the health thread trims the heap
        self.uplink.start(self.guard.start)
        self.guard.start("pipeline", self.loop.run)
        sources = [self.guard.start(f"source-{i}" if i else "source", self._source_loop(f))
                   for i, f in enumerate(self.feeds)]
        s = self.settings
        monitor = HealthMonitor(self.heartbeats, s.stall_s, s.stats_interval_s, self.board.stats,
                                lambda payload: self.uplink.publish_now("stats", payload), self.board.key,
                                self.uplink.publish_status, self.stop, lambda: self.uplink.published_key)
        self.guard.start("health", monitor.run)
        ready_by = time.monotonic() + 5
        while (any(f.source.state == CONNECTING for f in self.feeds) and time.monotonic() < ready_by
               and not (term.arrived or self.stop.is_set())):
            time.sleep(0.05)  # READY=1 once every source made its first attempt (open, or retrying with backoff)
        sdnotify.ready(self.board.sd_status())
        next_status = time.monotonic() + 10
        while not self.stop.is_set() and not self.loop.done.is_set():
            term.sleep(1.0)  # a signal, the pipeline's end or a dead thread wakes it at once (wake_main)
            if term.arrived:
                self.stop.set()
            if hup.seen():
                self.loop.reload.set()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + 10
                sdnotify.status(self.board.sd_status())
        return self._shutdown(sources)

    def _shutdown(self, sources: list[threading.Thread]) -> int:
        """Ordered, from the input end."""
        sdnotify.stopping("stopping: draining the pipeline and the outbox")
        for f in self.feeds:
            f.source.close()
        for t in sources:
            t.join(timeout=5)
        if "pipeline" not in self.guard.failed and not self.loop.done.wait(timeout=30):
            log.error("pipeline did not finish draining in time")
        drain = self.settings.drain_timeout_s
        if not self.uplink.drain(drain):
            log.warning("%d message(s) still in the outbox after %.0f s without progress: they are sent on the next start",
                        self.outbox.depth(), drain)
        self.stop.set()
        self.uplink.stop()
        self.outbox.close()
        self.evidence.close()
        release_state_dir(self.lock)
        if self.guard.failed:
            log.error("stopped because thread(s) %s died", ", ".join(self.guard.failed))
            return EXIT_FAILURE
        log.info("stopped")
        return EXIT_OK

