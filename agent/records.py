"""Frozen records that flow between the pipeline stages.

Timestamps are epoch seconds (``_ts``) in *data time*: taken from the device or the recording when it has
them, else on receipt. Intervals inside the agent use ``time.monotonic()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True, slots=True)
class Reading:
    """One timestamped set of channel values from one sensor, as parsed (not yet cleaned).

    Values are floats when the parser could read a number, else the raw text, so that the cleaner can count
    ``non_numeric`` by channel instead of the parser silently dropping it.
    """

    ts: float
    values: Mapping[str, float | str]
    sensor: str = ""


@dataclass(frozen=True, slots=True)
class Vector:
    """A cleaned reading: one float per model channel, in the model's channel order."""

    ts: float
    values: np.ndarray  # shape (C,), float64
    sensor: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    """``length`` consecutive vectors of one sensor, ready for feature extraction."""

    sensor: str
    start_ts: float
    end_ts: float
    data: np.ndarray  # shape (length, C), float64, oldest first


@dataclass(frozen=True, slots=True)
class Inference:
    """A model's verdict on one window."""

    window: Window
    score: float
    contributions: Mapping[str, float] = field(default_factory=dict)  # channel -> share of the score (sums to 1)
    latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the uplink, written to the outbox before it is published."""

    kind: str  # "alert" | "summary" | ...
    topic_suffix: str  # relative to {prefix}/{device_id}/
    payload: Mapping[str, Any]
    qos: int = 1
    retain: bool = False
