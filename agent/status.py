"""The retained status, the stats, the degraded reasons and systemd's STATUS= line — built from the pipelines'
published snapshots, the counters and the other stages' own thread-safe views only (any thread may ask: the
health thread, paho's thread for the birth message, the pipeline thread after a command).

Without ``[[assets]]`` the payloads are those of before. With assets the status and the stats gain ``assets``:
each asset's state, reasons, model, threshold, overrides and teach-in; one degraded asset makes the gateway
``degraded`` with a reason naming it, and the others keep scoring.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from agent import __version__
from agent.assets import Asset, Feed
from agent.counters import Counters
from agent.evidence import EvidenceStore
from agent.health import Heartbeats, clock_synchronised, percentiles_ms, process_usage
from agent.open_alerts import open_alerts
from agent.outbox import Outbox
from agent.parse import iso
from agent.records import PipelineSnapshot
from agent.settings import Settings
from agent.sources import DISCONNECTED, link_state

if TYPE_CHECKING:
    from agent.runtime import ReadingQueue

log = logging.getLogger(__name__)

FALLING_BEHIND_QUIET_S = 10.0  # "falling behind" clears once the live queue dropped nothing for this long
FALLING_BEHIND_REFRESH_S = 5.0  # the number of readings dropped in the reason is updated at most this often


class DropWatch:
    """Drops seen as episodes, for a degraded reason that neither flaps nor churns: ``update(total)`` (the counter's
    running total) returns how many were dropped since the episode began — from the first new drop until ``quiet_s``
    passed without one — else None. The number shown is refreshed at most every ``refresh_s``, so a status naming it
    is not re-published on every drop. Any thread may call it (status and stats are built on several)."""

    def __init__(self, quiet_s: float, refresh_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.quiet_s, self.refresh_s, self._clock = quiet_s, refresh_s, clock
        self._lock = threading.Lock()
        self._seen = 0  # the total at the last drop seen
        self._start = 0  # the total when the episode began
        self._last_drop = -float("inf")
        self._shown = 0
        self._shown_at = -float("inf")

    def update(self, total: int) -> int | None:
        now = self._clock()
        with self._lock:
            if total > self._seen:
                if now - self._last_drop >= self.quiet_s:  # a new episode
                    self._start, self._shown_at = self._seen, -float("inf")
                self._seen, self._last_drop = total, now
            if now - self._last_drop >= self.quiet_s:
                return None
            if now - self._shown_at >= self.refresh_s:
                self._shown, self._shown_at = self._seen - self._start, now
            return self._shown


class Board:
    """Everything the control room is told about this gateway."""

    def __init__(self, settings: Settings, assets: list[Asset], feeds: list[Feed], counters: Counters,
                 outbox: Outbox, evidence: EvidenceStore, heartbeats: Heartbeats, readings: ReadingQueue,
                 bytes_out: Callable[[], int], broker_connected: Callable[[], bool], digest: str,
                 uplink_reasons: Callable[[], list[str]] = list):
        self.settings, self.assets, self.feeds = settings, assets, feeds
        self.counters, self.outbox, self.evidence, self.heartbeats = counters, outbox, evidence, heartbeats
        self.readings = readings
        self.bytes_out, self.broker_connected = bytes_out, broker_connected
        self.digest = digest
        self.started_ts = time.time()
        self.carried_alerts: list[str] = []  # the alerts open before the start this run carries and not cleared yet
        # drops come one per full write (a summary period apart): a whole stats interval without one clears it
        self._outbox_drops = DropWatch(settings.stats_interval_s)
        self._queue_drops = DropWatch(FALLING_BEHIND_QUIET_S, FALLING_BEHIND_REFRESH_S)
        self.with_assets = bool(settings.assets)
        self.uplink_reasons = uplink_reasons  # what the broker refuses (agent/uplink_refusals.py)

    # -- reasons ---------------------------------------------------------------------------------------------

    def _feeds_of(self, asset: Asset) -> list[Feed]:
        return [f for f in self.feeds if asset.id in f.assets]

    def asset_reasons(self, asset: Asset) -> list[str]:
        """Why one asset is not fully well."""
        if asset.failure is not None:
            return [asset.failure]
        reasons = []
        for f in self._feeds_of(asset):
            src = f.source
            problems_of = getattr(src, "problems_of", None)
            if asset.sensors and problems_of is not None:
                # its devices' buses and devices only: a bus down names itself ("modbus bus … disconnected (…)")
                reasons.extend(problems_of(asset.sensors))  # a Modbus device of this asset not answering
                continue
            if src.state == DISCONNECTED:
                reasons.append("source disconnected")
            # why, when the source knows: a Modbus bus down ("modbus bus … (cannot open …)"), a serial device
            # without the line terminator
            reasons.extend(getattr(src, "problems", ()))
        if not reasons and asset.arrivals is not None and asset.arrivals.silent:  # the source said nothing of why
            reasons.append("no readings arriving")
        stale = asset.pipeline.snapshot.stale_channels if asset.pipeline is not None else frozenset()
        if stale:
            reasons.append("channel stale: " + ", ".join(sorted(stale)))
        return reasons

    def degraded_reasons(self) -> list[str]:
        """Why the gateway is not fully well, in words a control room can act on."""
        if self.with_assets:
            reasons = _per_asset([(a.id, self.asset_reasons(a)) for a in self.assets])
        else:
            reasons = self.asset_reasons(self.assets[0])
        behind = self._queue_drops.update(self.counters.get("queue.dropped"))
        if behind is not None:
            reasons.append(f"falling behind, {behind} readings dropped")
        if self._outbox_drops.update(sum(self.counters.snapshot("outbox.dropped.").values())) is not None:
            reasons.append("outbox dropping")
        reasons.extend(self.uplink_reasons())
        stalled = self.heartbeats.stalled(self.settings.stall_s)
        if stalled:
            reasons.append("stage stalled: " + ", ".join(sorted(stalled)))
        live = any(f.source.live for f in self.feeds)
        if self.settings.clock_sync_required and live and clock_synchronised() is False:
            reasons.append("clock not synchronised")
        return reasons

    def _calibrating(self) -> bool:
        return any(a.pipeline is not None and a.pipeline.snapshot.calibrating for a in self.assets)

    def state(self) -> str:
        return self._state(self.degraded_reasons())

    def asset_state(self, asset: Asset) -> str:
        """One asset's state, as its row in the status shows it."""
        return _asset_state(self.asset_reasons(asset), asset)

    def _state(self, reasons: Sequence[str]) -> str:
        return "degraded" if reasons else "calibrating" if self._calibrating() else "online"

    def key(self) -> tuple[Any, ...]:
        """What the retained status shows (a source's state too: connected is news); a change of it is published at
        once. Asked every half second: the reasons are worked out once."""
        reasons = tuple(self.degraded_reasons())
        snaps = tuple((a.id, a.failure, self.link(a), *_snapshot_key(a.pipeline.snapshot if a.pipeline else None)) for a in self.assets)
        return (self._state(reasons), reasons, snaps, tuple(f.source.state for f in self.feeds),
                tuple(self.carried_alerts))  # a carried alert cleared: published at once

    # -- payloads --------------------------------------------------------------------------------------------

    def _source(self) -> dict[str, Any]:
        f = self.feeds[0]
        return {"kind": self.settings.source.kind, "state": f.source.state}

    def status(self) -> dict[str, Any]:
        """The retained status payload, also the birth message: identity, model, runtime, config digest, and
        every override a command put in force."""
        reasons = self.degraded_reasons()
        st: dict[str, Any] = {
            "state": self._state(reasons),
            "ts": iso(time.time()),
            "device_id": self.settings.device_id,
            "agent_version": __version__,
            "started_at": iso(self.started_ts),
            "open_alerts": list(self.carried_alerts),  # the monitor closes the earlier run's others (docs/monitor.md)
        }
        if self.with_assets:
            st["sources"] = [{"name": f.source.name, "state": f.source.state, "assets": list(f.assets)} for f in self.feeds]
            st["config_digest"] = self.digest
            if reasons:
                st["reasons"] = reasons
            st["assets"] = {a.id: self._asset_status(a) for a in self.assets}
            return st
        snap = self.assets[0].pipeline.snapshot  # type: ignore[union-attr]
        st.update(model=dict(snap.model), source=self._source())
        return _machine(st, snap, reasons, config_digest=self.digest)

    def offline(self, reason: str, stopping: bool) -> dict[str, Any]:
        """The retained ``offline`` status, with the run's ``started_at``. ``stopping`` (a clean stop, after the
        pipeline stopped and before the outbox closes): also ``open_alerts``, every alert open in the outbox
        (agent/open_alerts.py), which the next start resumes or clears, so that a monitor closes the run's others
        (docs/monitor.md). Not in the last will (``stopping`` False): set at start, it cannot know them."""
        st: dict[str, Any] = {"state": "offline", "device_id": self.settings.device_id, "ts": iso(time.time()),
                              "reason": reason, "started_at": iso(self.started_ts)}
        if stopping:
            try:
                st["open_alerts"] = [kept["alert_id"] for kept in open_alerts(self.outbox, tidy=False)]
            except sqlite3.Error as e:  # not said: a monitor keeps the alerts it has open (as for an older agent)
                log.warning("the offline status names no open alerts: the outbox cannot be read (%s)", e)
        return st

    def link(self, a: Asset) -> str:
        """The state of an asset's source as far as its own devices go (a Modbus asset: its devices' buses)."""
        states = [link_state(f.source, a.sensors) for f in self._feeds_of(a)]
        return DISCONNECTED if DISCONNECTED in states else states[0] if states else DISCONNECTED

    def _asset_status(self, a: Asset) -> dict[str, Any]:
        reasons = self.asset_reasons(a)
        if a.pipeline is None:
            return {"state": "degraded", "reasons": reasons, "source": {"state": self.link(a)}}
        snap = a.pipeline.snapshot
        out: dict[str, Any] = {"state": "degraded" if reasons else "calibrating" if snap.calibrating else "online",
                               "model": dict(snap.model), "source": {"state": self.link(a)}}
        return _machine(out, snap, reasons)

    def stats(self) -> dict[str, Any]:
        """The stats payload (QoS 0, every EDGE_AGENT_STATS_INTERVAL_S)."""
        c = self.counters
        bytes_in, bytes_out = c.get("source.bytes"), self.bytes_out()
        latencies = [a.pipeline.latencies for a in self.assets if a.pipeline is not None]
        out: dict[str, Any] = {
            "ts": iso(time.time()),
            "device_id": self.settings.device_id,
            "state": self.state(),
            "uptime_s": round(time.time() - self.started_ts, 1),
            "readings_in": c.get("source.readings"),
            "windows": c.get("pipeline.windows"),
            "inference_ms": latencies[0].percentiles_ms() if len(latencies) == 1 else _merged_ms(latencies),
            "queue": {"depth": self.readings.qsize(), "dropped": c.get("queue.dropped")},
            "outbox": {"depth": self.outbox.depth(), "dropped": c.snapshot("outbox.dropped."),
                       "corrupt_recovered": c.get("outbox.corrupt_recovered")},
            "rejected": c.snapshot("reject."),
            "repaired": c.snapshot("repaired."), "gaps": c.snapshot("gap."),
            "alerts": _alerts(c),
            "advice": {"advised": c.get("advice.advised"), "none": c.get("advice.none"), "suppressed": c.get("advice.suppressed")},
            "source": {"kind": self.settings.source.kind, "state": self.feeds[0].source.state,
                       "reconnects": c.get("source.reconnects"), "dropped_at_close": c.get("source.dropped_at_close"),
                       "errors": c.snapshot("source.error.")},  # Modbus: no_answer, exception_<code>, bad_crc, ...
            "clock_synced": clock_synchronised(),
            **process_usage(),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "bandwidth_ratio": round(bytes_out / bytes_in, 6) if bytes_in else None,
            "feedback": self.evidence.counts(),
            "commands": {"ok": c.get("commands.ok"), "failed": c.get("commands.failed"),
                         "dropped": c.snapshot("commands.dropped.")},
            "uplink": {"connects": c.get("uplink.connects"), "connect_failures": c.get("uplink.connect_failures"),
                       "short_connections": c.get("uplink.short_connections"), "ack_timeouts": c.get("uplink.ack_timeouts"),
                       "subscribe_refused": c.get("uplink.subscribe_refused"), "refused": c.get("uplink.refused"),
                       "refused_by": c.snapshot("uplink.refused_by."),
                       "held_behind_refused": c.get("uplink.held_behind_refused"),
                       "evidence_stripped": c.get("uplink.evidence_stripped")},
        }
        if self.with_assets:
            del out["source"]
            out["sources"] = [{"name": f.source.name, "state": f.source.state} for f in self.feeds]
            out["source_totals"] = {"reconnects": c.get("source.reconnects"),  # over every source (the status's
                                    "dropped_at_close": c.get("source.dropped_at_close"),
                                    "errors": c.snapshot("source.error.")}  # reasons name a failing device)
            out["sensors"] = {"tracked": sum(a.pipeline.snapshot.sensors for a in self.assets if a.pipeline),
                              "forgotten": c.get("sensors.forgotten")}
            out["assets"] = {a.id: self._asset_stats(a) for a in self.assets}
            return out
        snap = self.assets[0].pipeline.snapshot  # type: ignore[union-attr]
        out.update(threshold=snap.threshold, overrides=dict(snap.overrides),
                   sensors={"tracked": snap.sensors, "forgotten": c.get("sensors.forgotten")})
        return out

    def _asset_stats(self, a: Asset) -> dict[str, Any]:
        c = a.counters
        out: dict[str, Any] = {"state": _asset_state(self.asset_reasons(a), a), "windows": c.get("pipeline.windows"),
                               "alerts": _alerts(c), "rejected": c.snapshot("reject.")}
        if a.pipeline is not None:
            snap = a.pipeline.snapshot
            out.update(threshold=snap.threshold, overrides=dict(snap.overrides), sensors=snap.sensors,
                       inference_ms=a.pipeline.latencies.percentiles_ms())
        return out

    def sd_status(self) -> str:
        """systemd's one-line STATUS=."""
        st = self.state()
        c = self.counters
        if not self.with_assets:
            snap = self.assets[0].pipeline.snapshot  # type: ignore[union-attr]
            if snap.calibrating:
                done = (f"{snap.calibration_collected}/{snap.calibration_samples} readings"
                        if not snap.calibration_duration_s else f"{snap.calibration_progress:.0%}")
                return f"teach-in {done}; outbox {self.outbox.depth()}"
        extra = f" ({'; '.join(self.degraded_reasons())})" if st == "degraded" else ""
        assets = f" on {len(self.assets)} assets" if self.with_assets else ""
        return (f"{st}{extra}: {c.get('source.readings')} readings, {c.get('pipeline.windows')} windows, "
                f"{c.get('alerts.raised')} alerts{assets}; outbox {self.outbox.depth()}; "
                f"broker {'connected' if self.broker_connected() else 'unreachable'}")


def _machine(out: dict[str, Any], snap: PipelineSnapshot, reasons: list[str], **extra: Any) -> dict[str, Any]:
    """A machine's part of the status (the gateway's without assets, an asset's row with them), in its order."""
    out.update(threshold=snap.threshold, overrides=dict(snap.overrides), **extra)
    if reasons:
        out["reasons"] = reasons
    calibration = _calibration(snap)
    if calibration:
        out["calibration"] = calibration
    return out


def _per_asset(reasons: list[tuple[str, list[str]]]) -> list[str]:
    """The gateway's reasons from its assets': ``asset pump-2: …``; one that several share (a Modbus bus down under
    two pumps) is said once, naming them all: ``assets pump-1, pump-2: modbus bus line disconnected (…)``."""
    who: dict[str, list[str]] = {}
    for aid, rs in reasons:
        for r in rs:
            who.setdefault(r, []).append(aid)
    return [f"asset {ids[0]}: {r}" if len(ids) == 1 else f"assets {', '.join(ids)}: {r}" for r, ids in who.items()]


def _asset_state(reasons: list[str], a: Asset) -> str:
    if reasons:
        return "degraded"
    return "calibrating" if a.pipeline is not None and a.pipeline.snapshot.calibrating else "online"


def _alerts(c: Counters) -> dict[str, int]:
    return {"raised": c.get("alerts.raised"), "cleared": c.get("alerts.cleared"), "suppressed": c.get("alerts.suppressed"),
            "delayed": c.get("alerts.delayed")}


def _merged_ms(rings: list[Any]) -> dict[str, float] | None:
    """p50/p99 over the recent windows of every asset."""
    ordered = sorted(x for r in rings for x in r.kept())
    return percentiles_ms(ordered) if ordered else None


def _calibration(snap: PipelineSnapshot) -> dict[str, Any] | None:
    if snap.calibrating:
        out: dict[str, Any] = {"collected": snap.calibration_collected, "samples": snap.calibration_samples,
                               "progress": round(snap.calibration_progress, 3)}
        if snap.calibration_duration_s:
            out.update(duration_s=snap.calibration_duration_s, elapsed_s=round(snap.calibration_elapsed_s, 1))
        return out
    if snap.calibration_warning or snap.calibration_folded or snap.calibration_daily:
        out = {"fitted_at": iso(snap.calibration_fitted_at or 0.0)}
        if snap.calibration_warning:
            out["warning"] = snap.calibration_warning  # the teach-in did not look like one normal operating point
        if snap.calibration_folded:
            out["folded_alerts"] = snap.calibration_folded  # feedback taught it these were normal
        if snap.calibration_daily:
            out["daily_profile"] = list(snap.calibration_daily)  # the time of day's share is taken out of these
        return out
    return None


def _snapshot_key(snap: PipelineSnapshot | None) -> tuple[Any, ...]:
    if snap is None:
        return ()
    return (snap.model.get("sha256"), snap.threshold, tuple(sorted(snap.overrides.items(), key=str)),
            snap.calibrating, snap.calibration_warning, snap.calibration_folded, snap.calibration_daily)
