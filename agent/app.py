"""Composition root: build the stages from the settings, run them on named threads, stop them in order.

Threads: ``source`` (reads, parses, queues), ``pipeline`` (clean → window → infer → decide → outbox), ``uplink``
(outbox → MQTT) plus paho's own network thread; the main thread waits for the end and runs the shutdown.
Shutdown closes from the input end so nothing in flight is lost: source closed → pipeline drains the queue and
writes its final summary → uplink drains the outbox (up to a deadline), publishes ``offline`` → outbox closed.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent import __version__
from agent.bundled import default_model_path
from agent.counters import Counters
from agent.infer import Model
from agent.outbox import Outbox
from agent.pipeline import Pipeline, iso
from agent.records import Reading
from agent.settings import Settings
from agent.sources import Source, create_source
from agent.uplink import Uplink

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
_END = object()  # queued by the source thread when the input is exhausted or closed


def load_model(settings: Settings) -> Model:
    """The configured model (or the bundled one), checked against its sidecar; raises ModelError."""
    path = settings.model.path or default_model_path()
    return Model(Path(path), runtime=settings.model.runtime, num_threads=settings.model.num_threads)


def build_pipeline(settings: Settings, model: Model, counters: Counters) -> Pipeline:
    """The pipeline as the settings describe it (also used by ``evaluate``)."""
    return Pipeline(
        model, counters, settings.device_id, settings.state_dir,
        summary_interval_s=settings.summary_interval_s,
        calibration_samples=settings.calibration.samples,
        threshold=settings.model.threshold,
        k=settings.decision.k, n=settings.decision.n, clear_ratio=settings.decision.clear_ratio,
    )


class Agent:
    """The running daemon."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.counters = Counters()
        self.stop = threading.Event()
        self.started_ts = time.time()
        self.model = load_model(settings)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline = build_pipeline(settings, self.model, self.counters)
        self.outbox = Outbox(settings.state_dir / "outbox.db", self.counters)
        self.source: Source = create_source(settings, self.counters)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self.uplink = Uplink(settings.mqtt, settings.device_id, self.outbox, self.counters, self.status)
        self._pipeline_done = threading.Event()
        self._failed: list[str] = []
        self._last_state: str | None = None

    # -- status ----------------------------------------------------------------------------------------------

    def state(self) -> str:
        return "calibrating" if self.pipeline.calibrating else "online"

    def status(self) -> dict[str, Any]:
        """The retained status payload (also the birth message: identity, model, runtime)."""
        st: dict[str, Any] = {
            "state": self.state(),
            "ts": iso(time.time()),
            "device_id": self.settings.device_id,
            "agent_version": __version__,
            "started_at": iso(self.started_ts),
            "model": {**self.model.describe(), "runtime": self.model.runtime, "runtime_version": self.model.runtime_version},
            "source": {"kind": self.settings.source.kind, "state": self.source.state},
            "threshold": self.pipeline.params.threshold,
        }
        if self.pipeline.calibrating:
            cal = self.pipeline.calibrator
            st["calibration"] = {"collected": cal.collected, "samples": cal.samples, "progress": round(cal.progress, 3)}
        return st

    # -- threads ---------------------------------------------------------------------------------------------

    def _guard(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception:  # noqa: BLE001 - a dead stage must stop the process, loudly
                log.exception("thread %s died", name)
                self._failed.append(name)
                self.stop.set()

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t

    def _sink(self, r: Reading) -> None:
        if not self.source.live:  # a recording waits for the pipeline: back-pressure, not loss
            while not self.stop.is_set():
                try:
                    self.queue.put(r, timeout=0.2)
                    return
                except queue.Full:
                    continue
            return
        try:
            self.queue.put_nowait(r)
        except queue.Full:  # a live sensor must not block: drop the oldest reading, count it
            try:
                self.queue.get_nowait()
                self.counters.inc("queue.dropped")
            except queue.Empty:
                pass
            self.queue.put_nowait(r)

    def _source_loop(self) -> None:
        try:
            self.source.run(self._sink, self.stop)
        finally:
            self.queue.put(_END)

    def _pipeline_loop(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                if self.source.live:
                    self._emit(self.pipeline.tick(time.time()))
                continue
            if item is _END:
                break
            self._emit(self.pipeline.process(item))
        self._emit(self.pipeline.finish())
        self._pipeline_done.set()

    def _emit(self, messages: list[Any]) -> None:
        for m in messages:
            self.outbox.put(m)
        if messages:
            self.uplink.wake()
        state = self.state()
        if state != self._last_state:
            self._last_state = state
            self.uplink.publish_status()

    # -- run -------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until the replay ends or a signal arrives; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        depth = self.outbox.depth()
        log.info(
            "edge-agent %s: device %s, model %s %s (%s), source %s, broker %s:%d%s",
            __version__, self.settings.device_id, self.model.name, self.model.version, self.model.runtime,
            self.source.name, self.settings.mqtt.host, self.settings.mqtt.port,
            f", {depth} messages from an earlier run in the outbox" if depth else "",
        )
        if self.pipeline.calibrating:
            log.info("teach-in: the first %d readings are taken as normal (no alerts until then)", self.pipeline.calibrator.samples)
        self.uplink.start()
        self._guard("pipeline", self._pipeline_loop)
        source_thread = self._guard("source", self._source_loop)
        while not self.stop.is_set() and not self._pipeline_done.is_set():
            self.stop.wait(0.2)
        # Ordered shutdown, from the input end.
        self.source.close()
        source_thread.join(timeout=5)
        if not self._pipeline_done.wait(timeout=30):
            log.error("pipeline did not finish draining in time")
        drain = self.settings.drain_timeout_s
        if not self.uplink.drain(drain):
            log.warning(
                "%d messages still in the outbox after %.0f s without progress: they are sent on the next start",
                self.outbox.depth(), drain,
            )
        self.uplink.stop()
        self.outbox.close()
        if self._failed:
            log.error("stopped because thread(s) %s died", ", ".join(self._failed))
            return EXIT_FAILURE
        log.info("stopped")
        return EXIT_OK
