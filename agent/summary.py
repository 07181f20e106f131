"""Summaries: per-period statistics of an asset's readings and scores, and the ``SummaryEvent`` they become.

Runs on the pipeline thread. A period is ``interval_s`` of data time; counters (rejections, repairs, gaps) are
reported as what moved since the previous summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from agent.counters import Counters
from agent.records import SummaryEvent, Vector

COUNTED = ("reject.", "repaired.", "gap.")
ROWS_HELD = 256  # vectors held before they are added to a period's per-channel sums, min and max
SCORES_KEPT = 16_384  # at most this many window scores per period for the percentiles (8 bytes each): every one
# while they fit, then every 2nd, 4th, … window of the whole period (a busy period is sampled evenly, not cut short)


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
    _buf: np.ndarray = field(default_factory=lambda: np.empty(0))  # the period's scores kept: windows 0, s, 2s, …
    _n: int = 0
    _stride: int = 1  # s: every s-th window of the period is kept (``windows``: the index of the next one)
    _max: float = float("-inf")  # over every window of the period

    def __post_init__(self) -> None:
        self._reset_stats()

    def _reset_stats(self) -> None:
        c = len(self.channels)
        self._total, self._lo, self._hi = np.zeros(c), np.full(c, np.inf), np.full(c, -np.inf)
        self._rows, self._k = np.empty((ROWS_HELD, c)), 0  # vectors not yet in the three above
        self._since = [0] * c  # per channel: the period's readings before it was read (a model swap added it)

    def with_channels(self, channels: list[str]) -> "Summariser":
        """A summariser of ``channels`` (a model swap) that goes on with this period: its start, its readings,
        windows and alerts, and the statistics of the channels read before too; a new channel's count starts at
        the swap, and so do the scores (the old model's, against another threshold, are not the new one's)."""
        self._fold()
        new = Summariser(list(channels), self.interval_s, self.period_start, self.last_ts, self.readings,
                         self.windows, self.raised, self.cleared, self.suppressed)
        old = {name: i for i, name in enumerate(self.channels)}
        for j, name in enumerate(new.channels):
            i = old.get(name)
            if i is None:
                new._since[j] = self.readings
            else:
                new._total[j], new._lo[j], new._hi[j], new._since[j] = (self._total[i], self._lo[i], self._hi[i],
                                                                         self._since[i])
        return new

    def due(self, ts: float) -> bool:
        """True when ``ts`` lies past the end of the current period (call ``take`` before adding it)."""
        return self.period_start is not None and ts - self.period_start >= self.interval_s

    def add_vector(self, v: Vector) -> None:
        if self.period_start is None:
            self.period_start = v.ts
        self.last_ts = v.ts
        self.readings += 1
        self._rows[self._k] = v.values  # held, added ROWS_HELD at a time: 3 ufuncs per vector cost more than the sums
        self._k += 1
        if self._k == ROWS_HELD:
            self._fold()

    def _fold(self) -> None:
        """The vectors held, into the period's sums (in their order: the same bits as one at a time), min and max."""
        k = self._k
        if k:
            self._k = 0
            self._stats(self._rows[:k])

    def add_rows(self, ts: np.ndarray, rows: np.ndarray) -> None:
        """``add_vector`` for each row in turn (the sums added in the same order: the same bits)."""
        if self.period_start is None:
            self.period_start = float(ts[0])
        self.last_ts = float(ts[-1])
        self.readings += len(ts)
        self._fold()
        self._stats(rows)

    def _stats(self, rows: np.ndarray) -> None:
        """Sums, min and max taken row after row, as one ``add``/``minimum``/``maximum`` per vector would (the same
        bits, the sign of a zero included: a reduction over a contiguous column may settle -0.0 vs 0.0 otherwise)."""
        self._total = np.add.accumulate(np.vstack((self._total, rows)), axis=0)[-1]
        self._lo = np.minimum.accumulate(np.vstack((self._lo, rows)), axis=0)[-1]
        self._hi = np.maximum.accumulate(np.vstack((self._hi, rows)), axis=0)[-1]

    @property
    def scores(self) -> np.ndarray:
        """The period's window scores kept so far, in order (a view)."""
        return self._buf[:self._n]

    def _grow(self) -> None:
        """Double the buffer (from 1,024, up to SCORES_KEPT)."""
        buf = np.empty(min(SCORES_KEPT, max(2 * len(self._buf), 1024)))
        buf[:self._n] = self._buf[:self._n]
        self._buf = buf

    def _halve(self) -> None:
        """The buffer is full: keep every other score kept so far (windows 0, 2s, 4s, …) and every 2s-th from now."""
        kept = self._buf[:self._n:2]
        self._n = len(kept)
        self._buf[:self._n] = kept
        self._stride *= 2

    def add_scores(self, scores: np.ndarray) -> None:
        """``add_score`` for each (the same scores kept)."""
        m = len(scores)
        if not m:
            return
        first, i = self.windows, 0
        self.windows += m
        top = float(scores.max())
        if top > self._max:
            self._max = top
        while i < m:
            s = self._stride
            picks = scores[i + (-(first + i)) % s::s]  # the scores of windows whose index is a multiple of s
            if self._n + len(picks) > len(self._buf) and len(self._buf) < SCORES_KEPT:
                self._grow()
                continue
            room = len(self._buf) - self._n
            if len(picks) <= room:
                self._buf[self._n:self._n + len(picks)] = picks
                self._n += len(picks)
                return
            self._buf[self._n:] = picks[:room]
            self._n += room
            i += (-(first + i)) % s + room * s  # past the last score written
            self._halve()

    def add_score(self, score: float) -> None:
        k = self.windows
        self.windows += 1
        if score > self._max:
            self._max = score
        if k % self._stride:
            return
        if self._n == len(self._buf):
            if len(self._buf) < SCORES_KEPT:
                self._grow()
            else:
                self._halve()
                if k % self._stride:
                    return
        self._buf[self._n] = score
        self._n += 1

    def _end_of_data(self) -> float | None:
        if self.last_ts is None or self.period_start is None:
            return self.last_ts
        return max(self.last_ts, self.period_start)

    def take(self, end_ts: float | None, rejected: Mapping[str, int]) -> dict[str, Any]:
        """The summary of the period so far (ending at ``end_ts``), and a fresh period."""
        scores = self.scores
        self._fold()
        if scores.size:
            p50, p95 = np.quantile(scores, [0.5, 0.95])  # one call: the numbers of two
        n = self.readings  # every vector carries every channel: a channel's count is the readings since it is read
        out: dict[str, Any] = {
            "period_start": self.period_start,
            # a final summary ends at the last reading, or where it began when none came since (a period closed by
            # the clock while a live source was silent ended past the last reading)
            "period_end": end_ts if end_ts is not None else self._end_of_data(),
            "readings": self.readings,
            "rejected": dict(rejected),
            "windows": self.windows,
            "alerts_raised": self.raised,
            "alerts_cleared": self.cleared,
            "alerts_suppressed": self.suppressed,
            "score": (
                {"p50": float(p50), "p95": float(p95), "max": self._max} if scores.size else None
            ),
            "channels": {
                name: {"count": n - since, "min": float(lo), "mean": float(t / (n - since)), "max": float(hi)}
                if n - since else {"count": 0}
                for name, t, lo, hi, since in zip(self.channels, self._total, self._lo, self._hi, self._since)
            },
        }
        self.period_start = end_ts
        self.readings = self.windows = self.raised = self.cleared = self.suppressed = 0
        self._reset_stats()
        self._n, self._max, self._stride = 0, float("-inf"), 1
        if len(self._buf) > 4096:
            self._buf = np.empty(0)  # a busy period's buffer is not kept through a quiet one
        return out


class Summaries:
    """The summariser of one pipeline plus what a summary reports beside its statistics."""

    def __init__(self, channels: list[str], interval_s: float, counters: Counters):
        self.counters = counters
        self.summariser = Summariser(list(channels), interval_s)
        self._bases = {p: counters.snapshot(p) for p in COUNTED}
        self._started = time.time()  # wall clock: the period of a run that accepted no reading at all
        self._last_end: float | None = None  # data time: where the last summary's period ended

    def renew(self, channels: list[str]) -> None:
        """A model swap (of these channels): a summariser that goes on with the period (``with_channels``)."""
        self.summariser = self.summariser.with_channels(channels)

    def _moved(self, prefix: str) -> dict[str, int]:
        """The counters under ``prefix`` that moved since the last summary, by how much."""
        now, base = self.counters.snapshot(prefix), self._bases[prefix]
        self._bases[prefix] = now
        return {k: v - base.get(k, 0) for k, v in now.items() if v - base.get(k, 0)}

    def take(self, end_ts: float | None, *, final: bool, model: Mapping[str, str], calibrating: bool,
             threshold: float, stale: frozenset[str] | set[str], normaliser: Any, asset: str) -> SummaryEvent:
        s = self.summariser.take(end_ts, self._moved("reject."))
        if s["period_start"] is None:  # no reading in the period (only a final summary can be so): it is empty,
            # at the end of the data time so far, or for a run without any data time (a header-only recording),
            # the run itself on the wall clock — a period is never null (README: summary)
            s["period_start"], s["period_end"] = (
                (self._last_end, self._last_end) if self._last_end is not None else (self._started, time.time()))
        self._last_end = s["period_end"]
        return SummaryEvent(
            period_start_ts=s["period_start"], period_end_ts=s["period_end"], final=final, model=model,
            calibrating=calibrating, threshold=threshold, readings=s["readings"], windows=s["windows"],
            alerts_raised=s["alerts_raised"], alerts_cleared=s["alerts_cleared"],
            alerts_suppressed=s["alerts_suppressed"], rejected=s["rejected"], repaired=self._moved("repaired."),
            gaps=self._moved("gap."), score=s["score"], channels=s["channels"], stale_channels=tuple(sorted(stale)),
            drift=None if calibrating else drift(s["channels"], normaliser), asset=asset,
        )


def drift(channels: Mapping[str, Mapping[str, Any]], normaliser: Any) -> dict[str, float] | None:
    """Each channel's mean in the period against the normal it was calibrated on, in sigma (None without a normal:
    teach-in running, or a model without normalisation)."""
    if normaliser is None or normaliser.mean is None or normaliser.std is None:
        return None
    return {
        name: round(float((st["mean"] - mu) / sd), 3)
        for (name, st), mu, sd in zip(channels.items(), normaliser.mean, normaliser.std) if st.get("count")
    }
