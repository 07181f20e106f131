"""Frozen records that flow between the pipeline stages.

Timestamps are epoch seconds (``_ts``) in *data time*: taken from the device or the recording when it has
them, else on receipt. Intervals inside the agent use ``time.monotonic()``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, final

import numpy as np


@final  # never subclassed: ``type(r) is Reading`` / ``is Block`` (the hot paths' test) narrows both ways
@dataclass(frozen=True, slots=True)
class Reading:
    """One timestamped set of channel values from one sensor, as parsed (not yet cleaned).

    Values are floats when the parser could read a number, else the raw text, so that the cleaner can count
    ``non_numeric`` by channel instead of the parser silently dropping it.
    """

    ts: float
    values: Mapping[str, float | str]
    sensor: str = ""
    asset: str = ""  # which asset's pipeline it feeds ("": the only one, a configuration without assets)


BLOCK_MIN = 8  # readings: fewer are cheaper one by one (the bulk path's fixed cost is ~150 us; bench/window_cost.py):
# sources hand a shorter run over as Readings (agent.payload.coalesce), the pipeline takes a smaller block reading by
# reading (Pipeline.process_block), and the bulk path takes no shorter run of clean rows (agent.pipeline_block)


@final
@dataclass(frozen=True, slots=True)
class Block:
    """Consecutive readings of one sensor handed over at once, as columns: a payload that carries an array of
    samples (one timestamp and a sample period), a burst of messages, a Modbus read of many registers.

    ``values[i, j]`` is channel ``channels[j]`` at ``ts[i]``; NaN where the source had no number for it. A block
    counts as ``len(block)`` readings everywhere a reading is counted (queue, drops, stats).
    """

    ts: np.ndarray  # shape (n,), float64 epoch seconds, data time, oldest first
    channels: tuple[str, ...]
    values: np.ndarray  # shape (n, len(channels)), float64
    sensor: str = ""
    asset: str = ""

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def rows(self) -> list[Reading]:
        """The same data as readings (the slow path, and for tests)."""
        names = self.channels
        return [Reading(float(t), dict(zip(names, map(float, row))), self.sensor, self.asset)
                for t, row in zip(self.ts, self.values)]


@dataclass(slots=True)  # made per reading: not frozen (frozen costs 3x per __init__); never changed
class Vector:
    """A cleaned reading: one float per model channel, in the model's channel order."""

    ts: float
    values: np.ndarray  # shape (C,), float64
    sensor: str = ""


@dataclass(slots=True)  # made per reading: not frozen (frozen costs 3x per __init__); never changed
class Window:
    """``length`` consecutive vectors of one sensor, ready for feature extraction."""

    sensor: str
    start_ts: float
    end_ts: float
    data: np.ndarray  # shape (length, C), float64, oldest first


@dataclass(slots=True)  # made per reading: not frozen (frozen costs 3x per __init__); never changed
class Inference:
    """A model's verdict on one window."""

    window: Window
    score: float
    contributions: Mapping[str, float] = field(default_factory=dict)  # channel -> share of the score (sums to 1)
    latency_s: float = 0.0


class Contributions(Mapping[str, float]):
    """Each channel's share of a score (summing to 1), computed only when somebody looks (alerts, not windows)."""

    __slots__ = ("_channels", "_raw", "_shares")

    def __init__(self, channels: list[str], raw: np.ndarray | Callable[[], np.ndarray]):
        self._channels, self._raw = channels, raw
        self._shares: dict[str, float] | None = None

    def _get(self) -> dict[str, float]:
        if self._shares is None:
            if callable(self._raw):  # computed when first looked at (a batch's windows: alerts only)
                self._raw = self._raw()
            raw = self._raw
            total = float(raw.sum())
            n = len(self._channels)
            if total == np.inf and not np.isnan(raw).any():  # squares overflowed: the channels that did are the cause
                raw = np.isinf(raw).astype(np.float64)
                total = float(raw.sum())
            shares = raw / total if total > 0 and np.isfinite(total) else np.full(n, 1 / n)
            self._shares = {c: float(v) for c, v in zip(self._channels, shares)}
        return self._shares

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._channels)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the uplink, written to the outbox before it is published."""

    kind: str  # "alert" | "summary" | ...
    topic_suffix: str  # relative to {prefix}/{device_id}/
    payload: Mapping[str, Any]
    qos: int = 1
    retain: bool = False


# -- what the pipeline decides: typed events (agent.messages turns them into MQTT payloads) --------------------


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert raised or cleared on one sensor's windows."""

    state: str  # "raised" | "cleared"
    alert_id: str
    sensor: str
    score: float  # of the window that caused the transition
    threshold: float
    peak_score: float  # highest score while raised (= score for a raise)
    top: tuple[tuple[str, float], ...]  # up to 3 (channel, share of the score), largest first
    window_start_ts: float
    window_end_ts: float
    model: Mapping[str, str]  # name, version
    receded: bool = False  # cleared because the event receded (agent.decide.AlertMachine)
    evidence_id: str | None = None  # raised: the evidence kept under this id
    evidence_bytes: int = 0
    evidence: Mapping[str, Any] | None = None  # raised: inline evidence (EDGE_AGENT_ALERTS__EVIDENCE_INLINE_MAX_BYTES)
    asset: str = ""
    reason: str = ""  # cleared without its fault's end, at a start: why it could not be resumed (agent.open_alerts)

    @property
    def margin(self) -> float | None:
        """How far over the threshold the (peak) score is, relative."""
        return (self.peak_score - self.threshold) / self.threshold if self.threshold > 0 else None


@dataclass(frozen=True, slots=True)
class SummaryEvent:
    """One summary period of an asset's data (``end_ts`` None: the last reading's time)."""

    period_start_ts: float | None
    period_end_ts: float | None
    final: bool
    model: Mapping[str, str]
    calibrating: bool
    threshold: float
    readings: int
    windows: int
    alerts_raised: int
    alerts_cleared: int
    alerts_suppressed: int
    rejected: Mapping[str, int]
    repaired: Mapping[str, int]
    gaps: Mapping[str, int]
    score: Mapping[str, float] | None  # p50, p95, max of the window scores
    channels: Mapping[str, Mapping[str, float]]  # per channel count, min, mean, max
    stale_channels: tuple[str, ...]
    drift: Mapping[str, float] | None  # per channel mean against the calibrated normal, in sigma
    asset: str = ""


@dataclass(frozen=True, slots=True)
class AdviceEvent:
    """Parameter advice for a raised alert (``fields``: the message body agent.advice builds)."""

    alert_id: str
    sensor: str
    fields: Mapping[str, Any]
    asset: str = ""


Event = AlertEvent | SummaryEvent | AdviceEvent


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """The pipeline's state after its latest step, published whole for other threads (status, stats, health).

    The pipeline thread replaces the snapshot (one attribute assignment) and never changes one it published, so a
    reader on another thread sees a consistent state without a lock and without touching the stages' own dicts.
    """

    calibrating: bool = False
    calibration_collected: int = 0
    calibration_samples: int = 0
    calibration_duration_s: float | None = None  # a teach-in by duration (then progress is by data time)
    calibration_elapsed_s: float = 0.0
    calibration_warning: str | None = None  # the teach-in did not look like one normal operating point
    calibration_folded: int = 0  # alerts whose readings feedback folded into the normal model
    calibration_fitted_at: float | None = None
    calibration_daily: tuple[str, ...] = ()  # channels the teach-in learnt a daily profile for (agent/season.py)
    threshold: float = 0.0
    overrides: Mapping[str, Any] = field(default_factory=dict)  # in force: threshold / model set by command
    stale_channels: frozenset[str] = frozenset()  # "sensor/channel" (the channel alone for a nameless sensor)
    sensors: int = 0  # sensors tracked now (bounded by EDGE_AGENT_CLEANING__MAX_SENSORS)
    model: Mapping[str, str] = field(default_factory=dict)  # name, version, sha256 of the model running

    @property
    def calibration_progress(self) -> float:
        if not self.calibrating:
            return 1.0
        parts = []
        if self.calibration_samples:
            parts.append(self.calibration_collected / self.calibration_samples)
        if self.calibration_duration_s:
            parts.append(self.calibration_elapsed_s / self.calibration_duration_s)
        return max(0.0, min(1.0, min(parts))) if parts else 1.0


def finite(value: Any) -> Any:
    """``value`` with every NaN/inf float (at any depth) replaced by None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, np.generic):
        return finite(value.item())
    return value


def message_bytes(payload: Mapping[str, Any]) -> bytes:
    """The one encoding of every message the agent sends (outbox rows, status, stats, replies): compact JSON,
    non-finite numbers as null (``allow_nan=False`` makes a miss an error here rather than invalid JSON upstream)."""
    return json.dumps(finite(payload), separators=(",", ":"), allow_nan=False).encode()
