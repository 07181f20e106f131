"""The scoring protocol of ``edge-agent evaluate``: pure functions from labels, row timestamps and alert spans to
SKAB's metrics (no pipeline, no files).

Scoring rules (also in docs/evaluate.md):

* A row is *predicted anomalous* while an alert is active: from the row of its ``raised`` message (inclusive)
  to the row of its ``cleared`` message (exclusive); an alert never cleared lasts to the end of the file. An
  alert's row is the row whose reading completed the alert's window, i.e. the reading with timestamp
  ``window_end`` that the pipeline accepted. With duplicated timestamps that is the first of the duplicates (the
  pipeline drops the later ones as ``duplicate_ts``), so the rule equals "raise.window_end <= t <
  clear.window_end" on timestamps, while rows are still matched by index order.
* Point-wise counts TP/FP/FN/TN over the scored rows (row index >= N); F1 = TP / (TP + (FP + FN) / 2), FAR =
  FP / (FP + TN), MAR = FN / (FN + TP) — SKAB's definitions, summed over all files for the total.
* Events: a *segment* is a maximal run of scored rows labelled 1. It is *alerted* when an active row overlaps it;
  its *delay* is the time from its first row to the first row of the first alert overlapping it, clamped at 0
  (an alert already active when the segment starts counts 0 s). A *false alert* is a raised alert whose active
  rows hold no row labelled 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

LABEL_COLUMN = "anomaly"

Span = tuple[int, "int | None"]  # alert-active rows [start, end); end None = to the end of the file


# ================================================================================================ pure metrics


@dataclass(frozen=True)
class Confusion:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def f1(self) -> float | None:
        """SKAB's F1 = TP / (TP + (FP + FN) / 2) (the usual 2PR / (P + R)); None when undefined."""
        d = self.tp + (self.fp + self.fn) / 2
        return self.tp / d if d else None

    @property
    def far(self) -> float | None:
        """False alarm rate FP / (FP + TN): share of normal rows flagged."""
        d = self.fp + self.tn
        return self.fp / d if d else None

    @property
    def mar(self) -> float | None:
        """Missed alarm rate FN / (FN + TP): share of anomalous rows not flagged."""
        d = self.fn + self.tp
        return self.fn / d if d else None


def active_rows(n_rows: int, spans: Iterable[Span]) -> np.ndarray:
    """Boolean per row: True while an alert is active (start inclusive, end exclusive, None = to the end)."""
    pred = np.zeros(n_rows, dtype=bool)
    for start, end in spans:
        pred[max(0, start):n_rows if end is None else max(0, end)] = True
    return pred


def confusion(labels: Sequence[int] | np.ndarray, predicted: Sequence[bool] | np.ndarray, first_row: int) -> Confusion:
    """Point-wise TP/FP/FN/TN over rows ``first_row..`` (labels 1 = anomalous)."""
    y = np.asarray(labels)[first_row:] == 1
    p = np.asarray(predicted, dtype=bool)[first_row:]
    return Confusion(int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum()), int((~y & ~p).sum()))


def label_segments(labels: Sequence[int] | np.ndarray, first_row: int) -> list[tuple[int, int]]:
    """Maximal runs of rows labelled 1 among rows ``first_row..``, as [start, end) row ranges."""
    y = np.asarray(labels) == 1
    out: list[tuple[int, int]] = []
    start = None
    for i in range(max(0, first_row), len(y)):
        if y[i] and start is None:
            start = i
        elif not y[i] and start is not None:
            out.append((start, i))
            start = None
    if start is not None:
        out.append((start, len(y)))
    return out


@dataclass(frozen=True)
class SegmentResult:
    start: int  # first row
    end: int  # row after the last
    alerted: bool
    delay_s: float | None  # None when not alerted


def segment_results(
    segments: Sequence[tuple[int, int]], spans: Sequence[Span], ts: Sequence[float] | np.ndarray, n_rows: int
) -> list[SegmentResult]:
    """For each segment: alerted (an active row overlaps it) and the delay from its first row to the first row
    of the earliest alert overlapping it, clamped at 0 (already active at the segment start = 0 s)."""
    ts = np.asarray(ts, dtype=np.float64)
    ordered = sorted((s, n_rows if e is None else e) for s, e in spans)
    out = []
    for s0, s1 in segments:
        hit = next(((a, b) for a, b in ordered if a < b and a < s1 and b > s0), None)
        if hit is None:
            out.append(SegmentResult(s0, s1, False, None))
        else:
            out.append(SegmentResult(s0, s1, True, max(0.0, float(ts[hit[0]] - ts[s0]))))
    return out


def false_alert_flags(spans: Sequence[Span], labels: Sequence[int] | np.ndarray) -> list[bool]:
    """Per alert span: True when none of its active rows is labelled 1 (a false alert)."""
    y = np.asarray(labels) == 1
    n = len(y)
    return [not bool(y[max(0, a):n if b is None else b].any()) for a, b in spans]


def alert_row(ts: Sequence[float] | np.ndarray, window_end_ts: float, emitted_row: int) -> int:
    """The row of an alert: the reading with the alert's ``window_end`` timestamp that the pipeline accepted.

    Searched back from the row being processed when the alert came out (normally that very row: a window ends
    with the reading that completed it): the last row at or before it whose timestamp is <= ``window_end``, then
    back to the first of the rows sharing that timestamp (the pipeline drops later duplicates as
    ``duplicate_ts``, so the first is the one it accepted).
    """
    i = emitted_row
    while i > 0 and ts[i] > window_end_ts:
        i -= 1
    while i > 0 and ts[i - 1] == ts[i]:
        i -= 1
    return i


def median(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


@dataclass
class FileMetrics:
    """Everything scored for one file (pure data, JSON-ready)."""

    rows: int
    scored_rows: int
    counts: Confusion
    segments: list[SegmentResult]
    false_alerts: int
    alerts: int

    @property
    def segments_alerted(self) -> int:
        return sum(s.alerted for s in self.segments)

    @property
    def median_delay_s(self) -> float | None:
        return median(s.delay_s for s in self.segments)


def score_file(labels: Sequence[int] | np.ndarray, ts: Sequence[float] | np.ndarray, spans: Sequence[Span],
               first_row: int) -> FileMetrics:
    """All metrics of one file from its labels, row timestamps, alert spans and the first scored row."""
    n = len(labels)
    pred = active_rows(n, spans)
    segs = label_segments(labels, first_row)
    return FileMetrics(
        rows=n,
        scored_rows=max(0, n - first_row),
        counts=confusion(labels, pred, first_row),
        segments=segment_results(segs, spans, ts, n),
        false_alerts=sum(false_alert_flags(spans, labels)),
        alerts=len(spans),
    )


def totals(results: Sequence[FileMetrics]) -> dict[str, Any]:
    """Summed counts, rates from the sums, segments alerted, median delay over all segments, false alerts."""
    c = sum((r.counts for r in results), Confusion())
    segs = [s for r in results for s in r.segments]
    return metrics_dict(
        c, rows=sum(r.rows for r in results), scored_rows=sum(r.scored_rows for r in results),
        segments=len(segs), segments_alerted=sum(s.alerted for s in segs),
        median_delay_s=median(s.delay_s for s in segs), false_alerts=sum(r.false_alerts for r in results),
        alerts=sum(r.alerts for r in results),
    )


def metrics_dict(c: Confusion, **extra: Any) -> dict[str, Any]:
    return {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn, "f1": c.f1, "far": c.far, "mar": c.mar, **extra}


def group_totals(groups: Sequence[str], results: Sequence[FileMetrics], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per group (in first-seen order): the totals of its files, their names and the false alerts per file."""
    out = []
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        t = totals([results[i] for i in idx])
        out.append({"group": g, **t, "files": [names[i] for i in idx],
                    "false_alerts_per_file": t["false_alerts"] / len(idx)})
    return out


@dataclass(frozen=True)
class NormalMetrics:
    """A recording of normal operation replayed after teach-in: every alert is a false alert."""

    rows: int
    scored_rows: int
    hours: float  # data time from the first scored row to the last row
    alerts: int
    active_rows: int  # scored rows with an alert active
    threshold: float
    score_p99: float | None  # of the windows scored after teach-in
    score_max: float | None

    @property
    def alerts_per_hour(self) -> float | None:
        return self.alerts / self.hours if self.hours > 0 else None

    @property
    def active_share(self) -> float | None:
        """The FAR of a normal recording: share of scored rows with an alert active."""
        return self.active_rows / self.scored_rows if self.scored_rows else None

    @property
    def headroom(self) -> float | None:
        """p99 score / threshold: below 1 the usual score stays under the threshold by that margin."""
        return self.score_p99 / self.threshold if self.score_p99 is not None and self.threshold > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "false_alerts": self.alerts, "alerts_per_hour": self.alerts_per_hour,
                "active_share": self.active_share, "headroom_p99": self.headroom,
                "max_over_threshold": None if self.score_max is None or self.threshold <= 0
                else self.score_max / self.threshold}


def normal_metrics(ts: Sequence[float] | np.ndarray, spans: Sequence[Span], score_rows: Sequence[int] | np.ndarray,
                   scores: Sequence[float] | np.ndarray, threshold: float, first_row: int) -> NormalMetrics:
    """False alerts, alert-active rows and score headroom of a normal recording scored from ``first_row``."""
    ts = np.asarray(ts, dtype=np.float64)
    n = len(ts)
    scored = max(0, n - first_row)
    sc = np.asarray(scores, dtype=np.float64)[np.asarray(score_rows, dtype=np.int64) >= first_row]
    sc = sc[np.isfinite(sc)]
    return NormalMetrics(
        rows=n, scored_rows=scored,
        hours=float(ts[-1] - ts[first_row]) / 3600.0 if scored else 0.0,
        alerts=len(spans), active_rows=int(active_rows(n, spans)[first_row:].sum()), threshold=float(threshold),
        score_p99=float(np.percentile(sc, 99)) if len(sc) else None,
        score_max=float(sc.max()) if len(sc) else None,
    )

