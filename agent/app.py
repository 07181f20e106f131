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

import dataclasses
import hashlib

from agent import __version__, sdnotify
from agent.advice import Advisor, parse_adjustable
from agent.bundled import default_model_path
from agent.clean import CleaningPolicy
from agent.commands import CommandGate, Commands, load_overrides
from agent.counters import Counters
from agent.decide import AlertPolicy
from agent.detectors import open_model
from agent.evidence import EvidenceStore
from agent.files import probe_state_dir
from agent.health import Heartbeats, HealthMonitor, clock_synchronised, process_usage
from agent.generic import GenericModel
from agent.infer import Model
from agent.outbox import Outbox
from agent.parse import iso
from agent.pipeline import Pipeline
from agent.records import Reading
from agent.settings import Settings, flat_env
from agent.signals import SignalCounter
from agent.sources import CONNECTING, DISCONNECTED, Source, create_source
from agent.uplink import Uplink

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
_END = object()  # queued by the source thread when the input is exhausted or closed


def load_model(settings: Settings) -> Model | GenericModel:
    """The configured model (a bundled name or a path; default: the bundled default), checked; raises ModelError."""
    path = settings.model.path or default_model_path()
    return open_model(path, runtime=settings.model.runtime, num_threads=settings.model.num_threads)


def build_pipeline(
    settings: Settings, model: Model | GenericModel, counters: Counters, evidence: EvidenceStore | None = None,
    state_dir: Path | None = None, channels: list[str] | None = None,
) -> Pipeline:
    """The pipeline as the settings describe it (also used by ``evaluate``)."""
    a = settings.alerts
    adv = settings.advice
    advisor = Advisor(settings.device_id, counters, enabled=adv.enabled, rate_limit_per_hour=adv.rate_limit_per_hour,
                      adjustable=parse_adjustable(adv.adjustable))
    problems = advisor.check(model.sidecar)
    if problems:
        raise ValueError("EDGE_AGENT_ADVICE__ADJUSTABLE: " + "; ".join(problems))
    cleaning = CleaningPolicy.from_settings(settings.cleaning)
    if settings.source.kind == "replay":  # a recording carries its own time: a jump in it is a gap, not a bad clock
        cleaning = dataclasses.replace(cleaning, max_time_jump_s=0.0)
    return Pipeline(
        model, counters, settings.device_id, state_dir or settings.state_dir,
        summary_interval_s=settings.summary_interval_s,
        calibration_samples=settings.calibration.samples, calibration_duration_s=settings.calibration.duration,
        channels=channels, threshold=settings.model.threshold,
        k=settings.decision.k, n=settings.decision.n, clear_ratio=settings.decision.clear_ratio,
        recede_ratio=settings.decision.recede_ratio,
        policy=AlertPolicy(a.cooldown_s, a.rate_limit_per_hour), critical_margin=a.critical_margin,
        evidence=evidence, evidence_windows_before=a.evidence_windows_before,
        evidence_inline_max_bytes=a.evidence_inline_max_bytes,
        cleaning=cleaning, advisor=advisor,
    )


def config_digest(settings: Settings) -> str:
    """A short digest of the effective configuration (secrets masked), for the birth message."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(flat_env(settings).items()) if k != "EDGE_AGENT_DEVICE_ID")
    from agent.reference_toml import render_file_only

    text += "\n" + render_file_only(settings)  # the register maps have no env variables but are configuration
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Agent:
    """The running daemon."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.counters = Counters()
        self.stop = threading.Event()
        self.started_ts = time.time()
        self.model = load_model(settings)
        probe_state_dir(settings.state_dir)  # StateDirError (exit 78) naming the path and the reason
        self.evidence = EvidenceStore(settings.state_dir / "evidence.db", settings.alerts.evidence_max_bytes)
        self.overrides_path = settings.state_dir / "overrides.json"
        self.outbox = Outbox(
            settings.state_dir / "outbox.db", self.counters, settings.outbox.max_rows, settings.outbox.max_bytes
        )
        self.source: Source = create_source(settings, self.counters)
        # a detector that learns its channels takes them from the source when it knows them (else: first reading)
        self.pipeline = build_pipeline(settings, self.model, self.counters, self.evidence,
                                       channels=getattr(self.source, "channels", None))
        threshold = load_overrides(self.overrides_path).get("threshold")
        if threshold is not None:
            self.pipeline.set_threshold(threshold)
            log.info("threshold %.6g set by command (in %s)", threshold, self.overrides_path)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self.commands = Commands(self)
        c = settings.commands
        self.gate = CommandGate(self.counters, c.rate_per_minute, c.burst)
        self.uplink = Uplink(
            settings.mqtt, settings.device_id, self.outbox, self.counters, self.status,
            on_command=self.gate.offer if c.enabled else None,
        )
        self.heartbeats = Heartbeats()
        self.uplink.heartbeat = lambda: self.heartbeats.beat("uplink")
        self._pipeline_done = threading.Event()
        self._reload_requested = threading.Event()
        self._failed: list[str] = []
        self._last_state: str | None = None
        self._digest = config_digest(settings)
        self._drops_seen = 0
        self._last_drop = -float("inf")  # monotonic time the outbox was last seen dropping

    # -- status (any thread: built from the pipeline's published snapshot, never from its live state) ------------

    def degraded_reasons(self) -> list[str]:
        """Why the agent is not fully well, in words a control room can act on."""
        reasons = []
        if self.source.state == DISCONNECTED:
            reasons.append("source disconnected")
        # e.g. a Modbus device not answering, a serial device without the configured line terminator
        reasons.extend(getattr(self.source, "problems", ()))
        stale = self.pipeline.snapshot.stale_channels
        if stale:
            reasons.append("channel stale: " + ", ".join(sorted(stale)))
        if self._outbox_dropping():
            reasons.append("outbox dropping")
        stalled = self.heartbeats.stalled(self.settings.stall_s)
        if stalled:
            reasons.append("stage stalled: " + ", ".join(sorted(stalled)))
        if self.settings.clock_sync_required and self.source.live and clock_synchronised() is False:
            reasons.append("clock not synchronised")
        return reasons

    def _outbox_dropping(self) -> bool:
        """True from the first drop (the health thread looks twice a second) until a whole stats interval passed
        without one: drops come one per full write (a summary period apart), so the reason does not flap."""
        total = sum(self.counters.snapshot("outbox.dropped.").values())
        now = time.monotonic()
        if total > self._drops_seen:
            self._drops_seen, self._last_drop = total, now
        return now - self._last_drop < self.settings.stats_interval_s

    def state(self) -> str:
        if self.degraded_reasons():
            return "degraded"
        return "calibrating" if self.pipeline.snapshot.calibrating else "online"

    def _status_key(self) -> tuple[Any, ...]:
        snap = self.pipeline.snapshot
        return (self.state(), tuple(self.degraded_reasons()), snap.model.get("sha256"), snap.threshold, snap.overrides)

    def status(self) -> dict[str, Any]:
        """The retained status payload, also the birth message: identity, model, runtime, config digest, and
        every override a command put in force."""
        snap = self.pipeline.snapshot
        reasons = self.degraded_reasons()
        st: dict[str, Any] = {
            "state": "degraded" if reasons else "calibrating" if snap.calibrating else "online",
            "ts": iso(time.time()),
            "device_id": self.settings.device_id,
            "agent_version": __version__,
            "started_at": iso(self.started_ts),
            "model": dict(snap.model),
            "source": {"kind": self.settings.source.kind, "state": self.source.state},
            "threshold": snap.threshold,
            "overrides": dict(snap.overrides),
            "config_digest": self._digest,
        }
        if reasons:
            st["reasons"] = reasons
        if snap.calibrating:
            st["calibration"] = {"collected": snap.calibration_collected, "samples": snap.calibration_samples,
                                 "progress": round(snap.calibration_progress, 3)}
            if snap.calibration_duration_s:
                st["calibration"].update(duration_s=snap.calibration_duration_s,
                                         elapsed_s=round(snap.calibration_elapsed_s, 1))
        elif snap.calibration_warning or snap.calibration_folded:
            st["calibration"] = {"fitted_at": iso(snap.calibration_fitted_at or 0.0)}
            if snap.calibration_warning:
                st["calibration"]["warning"] = snap.calibration_warning  # the teach-in was not one normal
            if snap.calibration_folded:
                st["calibration"]["folded_alerts"] = snap.calibration_folded  # feedback taught it these are normal
        return st

    def status_changed(self) -> None:
        """Publish the retained status now (a command changed what it shows)."""
        self.uplink.publish_status()

    def stats(self) -> dict[str, Any]:
        """The stats payload (QoS 0, every EDGE_AGENT_STATS_INTERVAL_S)."""
        c = self.counters
        snap = self.pipeline.snapshot
        dropped = c.snapshot("outbox.dropped.")
        bytes_in, bytes_out = c.get("source.bytes"), self.uplink.bytes_out
        return {
            "ts": iso(time.time()),
            "device_id": self.settings.device_id,
            "state": self.state(),
            "uptime_s": round(time.time() - self.started_ts, 1),
            "readings_in": c.get("source.readings"),
            "windows": c.get("pipeline.windows"),
            "inference_ms": self.pipeline.latencies.percentiles_ms(),
            "queue": {"depth": self.queue.qsize(), "dropped": c.get("queue.dropped")},
            "outbox": {"depth": self.outbox.depth(), "dropped": dropped, "corrupt_recovered": c.get("outbox.corrupt_recovered")},
            "rejected": c.snapshot("reject."),
            "repaired": c.snapshot("repaired."), "gaps": c.snapshot("gap."),
            "alerts": {"raised": c.get("alerts.raised"), "cleared": c.get("alerts.cleared"), "suppressed": c.get("alerts.suppressed")},
            "advice": {"advised": c.get("advice.advised"), "none": c.get("advice.none"), "suppressed": c.get("advice.suppressed")},
            "source": {"kind": self.settings.source.kind, "state": self.source.state, "reconnects": c.get("source.reconnects"),
                       "errors": c.snapshot("source.error.")},  # Modbus: no_answer, exception_<code>, bad_crc, ...
            "clock_synced": clock_synchronised(),
            **process_usage(),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "bandwidth_ratio": round(bytes_out / bytes_in, 6) if bytes_in else None,
            "feedback": self.evidence.counts(),
            "commands": {"ok": c.get("commands.ok"), "failed": c.get("commands.failed"),
                         "dropped": c.snapshot("commands.dropped.")},
            "threshold": snap.threshold,
            "overrides": dict(snap.overrides),
            "sensors": {"tracked": snap.sensors, "forgotten": c.get("sensors.forgotten")},
        }

    def publish_status_and_stats(self) -> None:
        self.uplink.publish_status()
        self.uplink.publish_now("stats", self.stats())

    # -- commands (pipeline thread) -----------------------------------------------------------------------------

    def _run_commands(self) -> None:
        while True:
            try:
                name, raw = self.gate.queue.get_nowait()
            except queue.Empty:
                return
            reply = self.commands.handle(name, raw)
            self.uplink.publish_now(f"reply/{name}", reply, qos=1)
            self._emit([])

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
            self.heartbeats.beat("pipeline")
            if not self.gate.queue.empty():
                self._run_commands()
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.commands.reload_configured()
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.source.live:
                    self._emit(self.pipeline.tick())
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
        calibrating = self.pipeline.snapshot.calibrating
        if calibrating != self._last_state:
            self._last_state = calibrating
            self.uplink.publish_status()

    def _sd_status(self) -> str:
        st = self.state()
        c = self.counters
        snap = self.pipeline.snapshot
        if snap.calibrating:
            done = (f"{snap.calibration_collected}/{snap.calibration_samples} readings"
                    if not snap.calibration_duration_s else f"{snap.calibration_progress:.0%}")
            return f"teach-in {done}; outbox {self.outbox.depth()}"
        extra = f" ({'; '.join(self.degraded_reasons())})" if st == "degraded" else ""
        return (f"{st}{extra}: {c.get('source.readings')} readings, {c.get('pipeline.windows')} windows, "
                f"{c.get('alerts.raised')} alerts; outbox {self.outbox.depth()}; "
                f"broker {'connected' if self.uplink.connected.is_set() else 'unreachable'}")

    # -- run -------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until the replay ends or a signal arrives; the process exit code."""
        # the handlers only count; this thread sets the events (agent/signals.py: Event.set() in a handler can hang)
        term = SignalCounter(signal.SIGTERM, signal.SIGINT).install()
        hup = SignalCounter(signal.SIGHUP).install()
        depth = self.outbox.depth()
        log.info(
            "edge-agent %s: device %s, model %s %s (%s), source %s, broker %s:%d%s",
            __version__, self.settings.device_id, self.model.name, self.model.version, self.model.runtime,
            self.source.name, self.settings.mqtt.host, self.settings.mqtt.port,
            f", {depth} messages from an earlier run in the outbox" if depth else "",
        )
        if self.pipeline.snapshot.calibrating:
            cal = self.pipeline.calibrator
            span = f"{cal.duration_s:g} s of data" if cal.duration_s else f"{cal.samples} readings"
            log.info("teach-in: the first %s are taken as normal (no alerts until then)", span)
        self.uplink.start()
        self._guard("pipeline", self._pipeline_loop)
        source_thread = self._guard("source", self._source_loop)
        monitor = HealthMonitor(
            self.heartbeats, self.settings.stall_s, self.settings.stats_interval_s, self.stats,
            lambda payload: self.uplink.publish_now("stats", payload), self._status_key, self.uplink.publish_status,
            self.stop,
        )
        monitor.start()
        ready_by = time.monotonic() + 5
        while self.source.state == CONNECTING and time.monotonic() < ready_by and not (term.arrived or self.stop.is_set()):
            time.sleep(0.05)  # READY=1 once the source made its first attempt (open, or retrying with backoff)
        sdnotify.ready(self._sd_status())
        next_status = time.monotonic() + 10
        while not self.stop.is_set() and not self._pipeline_done.is_set():
            term.sleep(0.2)
            if term.arrived:
                self.stop.set()
            if hup.seen():
                self._reload_requested.set()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + 10
                sdnotify.status(self._sd_status())
        # Ordered shutdown, from the input end.
        sdnotify.stopping("stopping: draining the pipeline and the outbox")
        self.source.close()
        source_thread.join(timeout=5)
        if "pipeline" not in self._failed and not self._pipeline_done.wait(timeout=30):
            log.error("pipeline did not finish draining in time")
        drain = self.settings.drain_timeout_s
        if not self.uplink.drain(drain):
            log.warning(
                "%d messages still in the outbox after %.0f s without progress: they are sent on the next start",
                self.outbox.depth(), drain,
            )
        self.stop.set()
        self.uplink.stop()
        self.outbox.close()
        self.evidence.close()
        if self._failed:
            log.error("stopped because thread(s) %s died", ", ".join(self._failed))
            return EXIT_FAILURE
        log.info("stopped")
        return EXIT_OK
