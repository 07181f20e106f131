"""Decisions: the alert state machine (threshold, k-of-n debounce, hysteresis) and periodic summaries.

Pure and single-threaded (the pipeline thread owns them), so they are tested without broker or hardware.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from agent.records import Inference, Vector

RAISED = "raised"
CLEARED = "cleared"


@dataclass
class Transition:
    """An alert changing state, with what caused it."""

    state: str  # RAISED | CLEARED
    alert_id: str
    sensor: str
    inference: Inference
    threshold: float
    peak_score: float
    receded: bool = False  # cleared because the event receded (under recede_ratio x its peak), not under the clear level


RECEDE_MARGIN = 0.3  # after a "receded" clear, a new raise needs 30 % more than the score it cleared at


class AlertMachine:
    """One sensor's alert: raised when ``k`` of the last ``n`` windows score over the threshold, cleared when
    ``k`` of the last ``n`` score under ``threshold x clear_ratio`` (hysteresis). The history restarts at every
    transition, so a raise needs k fresh windows over the threshold and a clear k fresh windows under it.

    With ``recede_ratio`` > 0 an alert also clears when the event has receded: k of the last n windows under
    ``recede_ratio x`` the alert's peak score, even if still over the clear level (a machine that settles a little
    away from where it was taught after a fault that is over). A new raise then needs the score to exceed the one
    it cleared at by ``RECEDE_MARGIN``; that floor decays back to the threshold with a time constant of
    ``refractory`` windows, so the settled state does not raise again while it is absorbed.

    The recent scores are kept (not just whether they were over), so that a new threshold re-judges them
    (``retune``) instead of forgetting the debounce: a command cannot silence alerts by resetting it.
    """

    def __init__(self, sensor: str, threshold: float, k: int, n: int, clear_ratio: float,
                 recede_ratio: float = 0.0, refractory: int = 1800):
        if not 1 <= k <= n:
            raise ValueError("need 1 <= k <= n")
        self.sensor = sensor
        self.threshold = threshold
        self.k, self.n, self.clear_ratio = k, n, clear_ratio
        self.recede_ratio = recede_ratio
        self._decay = math.exp(-1.0 / refractory) if refractory > 0 else 0.0
        self._scores: deque[float] = deque(maxlen=n)
        self._receded: deque[bool] = deque(maxlen=n)  # while raised: was the window under recede_ratio x the peak
        self.active_id: str | None = None
        self._peak = 0.0
        self._floor = 0.0  # a raise needs a score over this too (after a receded clear); decays each window

    @property
    def active(self) -> bool:
        return self.active_id is not None

    def update(self, inf: Inference) -> Transition | None:
        """Feed one scored window; a Transition when the alert is raised or cleared by it."""
        s = inf.score
        self._scores.append(s)
        if self.active_id is None:
            level = self.threshold
            if self._floor > level:
                level = self._floor
                self._floor *= self._decay
            self._receded.append(False)
            if sum(1 for x in self._scores if x > level) >= self.k:
                self.active_id = uuid.uuid4().hex
                self._peak = s
                self._floor = 0.0
                self._scores.clear()
                self._receded.clear()
                return Transition(RAISED, self.active_id, self.sensor, inf, self.threshold, s)
            return None
        self._peak = max(self._peak, s)
        under = self.threshold * self.clear_ratio
        self._receded.append(self.recede_ratio > 0 and s < self.recede_ratio * self._peak)
        if sum(1 for x, r in zip(self._scores, self._receded) if x < under or r) >= self.k:
            receded = s >= under  # cleared because the event receded, still over the clear level
            tr = Transition(CLEARED, self.active_id, self.sensor, inf, self.threshold, self._peak, receded)
            if receded:
                self._floor = s * (1 + RECEDE_MARGIN)
            self.active_id = None
            self._scores.clear()
            self._receded.clear()
            return tr
        return None

    def retune(self, threshold: float, k: int, n: int, clear_ratio: float, recede_ratio: float | None = None) -> None:
        """New decision parameters from the next window on; the recent scores are judged again by them (an
        active alert stays active until ``k`` windows are under the new clear level)."""
        if not 1 <= k <= n:
            raise ValueError("need 1 <= k <= n")
        self.threshold, self.k, self.clear_ratio = threshold, k, clear_ratio
        if recede_ratio is not None:
            self.recede_ratio = recede_ratio
        if n != self.n:
            self.n = n
            self._scores = deque(self._scores, maxlen=n)
            self._receded = deque(self._receded, maxlen=n)

    def reset(self) -> None:
        """Forget the debounce history (after a gap, or scores of another model); an active alert stays active."""
        self._scores.clear()
        self._receded.clear()


@dataclass
class Summariser:
    """Collects per-period statistics; ``due`` tells when a period of ``interval_s`` of data time is over."""

    channels: list[str]
    interval_s: float
    period_start: float | None = None
    last_ts: float | None = None
    readings: int = 0
    windows: int = 0
    raised: int = 0
    cleared: int = 0
    suppressed: int = 0
    _scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reset_stats()

    def _reset_stats(self) -> None:
        c = len(self.channels)
        self._total, self._lo, self._hi = np.zeros(c), np.full(c, np.inf), np.full(c, -np.inf)

    def due(self, ts: float) -> bool:
        """True when ``ts`` lies past the end of the current period (call ``take`` before adding it)."""
        return self.period_start is not None and ts - self.period_start >= self.interval_s

    def add_vector(self, v: Vector) -> None:
        if self.period_start is None:
            self.period_start = v.ts
        self.last_ts = v.ts
        self.readings += 1
        x = v.values
        self._total += x
        np.minimum(self._lo, x, out=self._lo)
        np.maximum(self._hi, x, out=self._hi)

    def add_score(self, score: float) -> None:
        self.windows += 1
        if len(self._scores) < 100_000:  # bounded even with a very long interval
            self._scores.append(score)

    def take(self, end_ts: float | None, rejected: Mapping[str, int]) -> dict[str, Any]:
        """The summary of the period so far (ending at ``end_ts``), and a fresh period."""
        scores = np.asarray(self._scores)
        n = self.readings  # every vector carries every channel: each channel's count is the reading count
        out: dict[str, Any] = {
            "period_start": self.period_start,
            "period_end": end_ts if end_ts is not None else self.last_ts,
            "readings": self.readings,
            "rejected": dict(rejected),
            "windows": self.windows,
            "alerts_raised": self.raised,
            "alerts_cleared": self.cleared,
            "alerts_suppressed": self.suppressed,
            "score": (
                {"p50": float(np.quantile(scores, 0.5)), "p95": float(np.quantile(scores, 0.95)),
                 "max": float(scores.max())} if scores.size else None
            ),
            "channels": {
                name: {"count": n, "min": float(lo), "mean": float(t / n), "max": float(hi)}
                if n else {"count": 0}
                for name, t, lo, hi in zip(self.channels, self._total, self._lo, self._hi)
            },
        }
        self.period_start = end_ts
        self.readings = self.windows = self.raised = self.cleared = self.suppressed = 0
        self._reset_stats()
        self._scores = []
        return out


class AlertPolicy:
    """Cooldown and rate limit on raised alerts, in data time. A suppressed alert is counted, never silent."""

    def __init__(self, cooldown_s: float = 0.0, rate_limit_per_hour: int = 0):
        self.cooldown_s = cooldown_s
        self.rate_limit_per_hour = rate_limit_per_hour
        self._last_clear: dict[str, float] = {}
        self._raises: deque[float] = deque()

    def allow(self, sensor: str, ts: float) -> bool:
        """May an alert be raised on ``sensor`` at ``ts``? (records it when yes)."""
        last = self._last_clear.get(sensor)
        if self.cooldown_s and last is not None and ts - last < self.cooldown_s:
            return False
        if self.rate_limit_per_hour:
            while self._raises and ts - self._raises[0] >= 3600:
                self._raises.popleft()
            if len(self._raises) >= self.rate_limit_per_hour:
                return False
            self._raises.append(ts)  # only with a limit: without one the list would grow for ever
        return True

    def cleared(self, sensor: str, ts: float) -> None:
        self._last_clear[sensor] = ts

    def forget(self, sensor: str) -> None:
        """Drop what is kept of an idle sensor (its cooldown has long passed)."""
        self._last_clear.pop(sensor, None)
