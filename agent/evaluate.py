"""``edge-agent evaluate``: score the daemon's alerts against labelled recordings (SKAB format).

Each CSV under ``--data`` that has an ``anomaly`` column is replayed through a fresh :class:`Pipeline` (a new
temporary state directory per file, so teach-in never leaks between files) — the very code the daemon runs, not
a re-implementation. The first ``N`` rows are teach-in (``--calibration-samples``, SKAB protocol: 400); the
rows after them are scored.

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

matplotlib is optional (``pip install 'edge-agent[eval]'``): without it the tables are written, not the plots.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TextIO

import numpy as np

from agent.counters import Counters
from agent.families import GROUP_BY, FamiliesError, Grouping, group_table, load_families

EXIT_OK = 0
EXIT_USAGE = 2
LABEL_COLUMN = "anomaly"
MATPLOTLIB_HINT = "plots need matplotlib: pip install 'edge-agent[eval]'"

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
    return _metrics_dict(
        c, rows=sum(r.rows for r in results), scored_rows=sum(r.scored_rows for r in results),
        segments=len(segs), segments_alerted=sum(s.alerted for s in segs),
        median_delay_s=median(s.delay_s for s in segs), false_alerts=sum(r.false_alerts for r in results),
        alerts=sum(r.alerts for r in results),
    )


def _metrics_dict(c: Confusion, **extra: Any) -> dict[str, Any]:
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


# ================================================================================================ running files


@dataclass
class AlertRecord:
    alert_id: str
    raise_row: int
    raise_window_end: str
    clear_row: int | None = None
    clear_window_end: str | None = None
    score: float = 0.0
    peak_score: float | None = None
    top_channels: list[dict[str, Any]] = field(default_factory=list)
    false_alert: bool = False


@dataclass
class FileRun:
    """One labelled recording replayed through a fresh pipeline."""

    rel: str
    ts: np.ndarray  # per row (reading), epoch s
    labels: np.ndarray  # per row, 1 = anomalous
    values: np.ndarray  # rows x channels (NaN where not a number), for the plot
    score_rows: np.ndarray  # rows where a window was scored
    scores: np.ndarray  # the scores there
    alerts: list[AlertRecord]
    threshold: float
    k: int
    n: int
    clear_ratio: float
    teach_in_rows: int | None  # rows read when teach-in completed (None: never completed)
    rejected: dict[str, int]
    bad_labels: int
    suppressed: int = 0  # raises held back by the alert policy (cooldown, rate limit): no message, not scored

    @property
    def spans(self) -> list[Span]:
        return [(a.raise_row, a.clear_row) for a in self.alerts]


def _init_only_settings(**values: Any) -> Any:
    """Settings from the given values and the defaults only: no env file, no EDGE_AGENT_* from the environment."""
    from agent.settings import Settings

    class _InitOnly(Settings):
        @classmethod
        def settings_customise_sources(  # type: ignore[override]
            cls, settings_cls: Any, init_settings: Any, **_: Any
        ) -> tuple[Any, ...]:
            return (init_settings,)

    return _InitOnly(**values)


def default_settings() -> Any:
    """The agent's settings at their defaults: no env file and no EDGE_AGENT_* from the environment."""
    return _init_only_settings()


def apply_overrides(settings: Any, overrides: Mapping[str, Any] | None) -> Any:
    """``settings`` with dotted-key overrides applied (``{"decision.k": 3, "model.threshold": 1.2,
    "calibration.samples": 400, "model.path": "generic"}``; a value None restores the default "from the
    sidecar"), validated like any configuration: an unknown key or a bad value raises ValueError naming it."""
    if not overrides:
        return settings
    from pydantic import ValidationError

    data = settings.model_dump()
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part)
            if not isinstance(node, dict):
                raise ValueError(f"unknown setting {key!r}")
        if leaf not in node:
            raise ValueError(f"unknown setting {key!r}")
        node[leaf] = value
    try:
        return _init_only_settings(**data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                             for err in e.errors())
        raise ValueError(f"bad setting override: {problems}") from None


def pipeline_factory(settings: Any, model: Any, calibration_samples: int,
                     build: Callable[[Any, Any, Counters], Any] | None = None) -> Callable[[Counters, Path], Any]:
    """Builds each file's Pipeline the way the daemon builds its own (``build``, default ``app.build_pipeline``),
    with teach-in over ``calibration_samples`` readings and the state in the given (fresh) directory."""
    if build is None:
        from agent.assets import build_pipeline as build

    def make(counters: Counters, state_dir: Path, channels: list[str] | None = None) -> Any:
        s = settings.model_copy(update={
            "state_dir": state_dir,
            "calibration": settings.calibration.model_copy(update={"samples": calibration_samples}),
        })
        return build(s, model, counters, **({"channels": channels} if channels else {}))

    return make


def _label(v: float | str | None) -> int | None:
    if isinstance(v, float) and not math.isnan(v):
        return 1 if v == 1.0 else 0
    return None


def model_channels(model: Any, path: Path) -> list[str]:
    """The channels to keep per row (for the plot): the model's sidecar channels, else every column of the file
    but its time and label columns (a detector that takes its channels from the source)."""
    sidecar = getattr(model, "sidecar", None)
    if sidecar is not None and getattr(sidecar, "channels", None):
        return list(sidecar.channels)
    from agent.sources.replay import LABEL_COLUMNS, TIME_COLUMNS

    return [h for h in read_header(path) if h.lower() not in TIME_COLUMNS and h not in LABEL_COLUMNS]


def run_file(model: Any, path: Path, rel: str, make_pipeline: Callable[[Counters, Path], Any],
             on_row: Callable[[int], None] | None = None, labelled: bool = True) -> FileRun:
    """Replay one recording through a fresh Pipeline (``make_pipeline(counters, state_dir)`` with its own new
    temporary state dir, so teach-in starts afresh) reading by reading. ``labelled=False``: every row is normal
    (a long normal recording), its label column, if any, is ignored."""
    from agent.parse import iso
    from agent.records import AlertEvent
    from agent.sources.replay import read_recording

    channels = model_channels(model, path)
    counters = Counters()
    ts: list[float] = []
    labels: list[int] = []
    values: list[list[float]] = []
    score_rows: list[int] = []
    scores: list[float] = []
    alerts: dict[str, AlertRecord] = {}
    order: list[str] = []
    bad_labels = 0
    teach_in_rows = None
    with tempfile.TemporaryDirectory(prefix="edge-agent-eval-") as state:
        p = make_pipeline(counters, Path(state), channels if getattr(model, "needs_channels", False) else None)
        if not p.calibrating:
            teach_in_rows = 0
        last = p.last_inference
        for row, r in enumerate(read_recording(path, counters, sensor="evaluate")):
            ts.append(r.ts)
            lab = _label(r.values.get(LABEL_COLUMN)) if labelled else 0
            if lab is None:
                bad_labels += 1
                lab = 0
            labels.append(lab)
            values.append([v if isinstance(v := r.values.get(c), float) else math.nan for c in channels])
            out = p.process(r)
            if teach_in_rows is None and not p.calibrating:
                teach_in_rows = row + 1
            inf = p.last_inference
            if inf is not None and inf is not last:
                last = inf
                score_rows.append(row)
                scores.append(inf.score)
            for e in out:  # typed events (agent.records), the same the daemon turns into messages
                if not isinstance(e, AlertEvent):
                    continue
                at = alert_row(ts, e.window_end_ts, row)
                if e.state == "raised":
                    alerts[e.alert_id] = AlertRecord(
                        e.alert_id, at, iso(e.window_end_ts), score=float(e.score),
                        top_channels=[{"channel": c, "share": round(sh, 4)} for c, sh in e.top],
                    )
                    order.append(e.alert_id)
                elif e.alert_id in alerts:
                    a = alerts[e.alert_id]
                    a.clear_row, a.clear_window_end = at, iso(e.window_end_ts)
                    a.peak_score = e.peak_score
            if on_row is not None:
                on_row(row + 1)
        p.finish()
        params = p.params
    recs = [alerts[i] for i in order]
    y = np.asarray(labels, dtype=np.int8)
    for a, flag in zip(recs, false_alert_flags([(a.raise_row, a.clear_row) for a in recs], y)):
        a.false_alert = flag
    return FileRun(
        rel=rel, ts=np.asarray(ts, dtype=np.float64), labels=y,
        values=np.asarray(values, dtype=np.float64).reshape(len(ts), len(channels)),
        score_rows=np.asarray(score_rows, dtype=np.int64), scores=np.asarray(scores, dtype=np.float64),
        alerts=recs, threshold=float(params.threshold), k=params.k, n=params.n, clear_ratio=params.clear_ratio,
        teach_in_rows=teach_in_rows, rejected=counters.snapshot("reject."), bad_labels=bad_labels,
        suppressed=counters.get("alerts.suppressed"),
    )


# ================================================================================================ API


@dataclass
class FileResult:
    """One recording replayed and scored: the replay (alerts, spans, scores) and its metrics."""

    run: FileRun
    metrics: FileMetrics
    first_row: int  # first scored row (= the teach-in length asked for)
    labelled: bool = True

    @property
    def rel(self) -> str:
        return self.run.rel

    @property
    def spans(self) -> list[Span]:
        return self.run.spans

    def normal(self) -> NormalMetrics:
        """The long-normal-operation view of this replay (every alert false)."""
        r = self.run
        return normal_metrics(r.ts, r.spans, r.score_rows, r.scores, r.threshold, self.first_row)

    def notes(self) -> list[str]:
        """What the reader of the table must know about this file (teach-in, labels, suppressed alerts)."""
        r, notes = self.run, []
        if r.teach_in_rows is None:
            notes.append(f"teach-in never completed ({len(r.ts)} rows < {self.first_row})")
        elif r.teach_in_rows > self.first_row:
            notes.append(f"teach-in took {r.teach_in_rows} rows (rejected readings)")
        if r.bad_labels:
            notes.append(f"{r.bad_labels} row(s) without a 0/1 label taken as 0")
        if r.suppressed:
            notes.append(f"{r.suppressed} alert(s) suppressed by cooldown/rate limit (not scored)")
        return notes


@dataclass
class Evaluation:
    """A model and the settings to replay recordings with: built once, then run on any number of files.

    The command and scripts (a parameter search calling it many times) share this one code path: the daemon's
    own pipeline per file, scored by :func:`score_file`. Nothing is plotted or written.
    """

    settings: Any
    model: Any
    samples: int
    make_pipeline: Callable[[Counters, Path], Any]
    verbose: bool = False  # False: the pipeline's per-alert and teach-in log lines are held back

    @classmethod
    def create(cls, overrides: Mapping[str, Any] | None = None, settings: Any = None, model: Any = None,
               load_model: Callable[[Any], Any] | None = None,
               build_pipeline: Callable[[Any, Any, Counters], Any] | None = None) -> "Evaluation":
        """From ``settings`` (default: the defaults, no environment) with dotted ``overrides`` applied. The model
        is ``model`` if given, else ``load_model(settings)`` (default ``app.load_model``: ``model.path``, or the
        bundled model); each file's pipeline is ``build_pipeline(settings, model, counters)`` (default
        ``app.build_pipeline``): the seams for a detector that is not a TFLite model. Raises ValueError on a bad
        override and the loader's error (``ModelError``) on a bad model."""
        s = apply_overrides(settings if settings is not None else default_settings(), overrides)
        if model is None:
            if load_model is None:
                from agent.assets import load_model
            model = load_model(s)
        samples = s.calibration.samples
        if samples is None:
            sidecar = getattr(model, "sidecar", None)
            samples = sidecar.calibration.samples if sidecar is not None else 0
        return cls(s, model, int(samples), pipeline_factory(s, model, int(samples), build_pipeline))

    def run(self, path: str | Path, rel: str | None = None, labelled: bool = True,
            on_row: Callable[[int], None] | None = None) -> FileResult:
        """Replay one file through a fresh pipeline and score it (``labelled=False``: all rows normal)."""
        path = Path(path)
        with _quiet_pipeline(not self.verbose):
            fr = run_file(self.model, path, rel or path.name, self.make_pipeline, on_row, labelled)
        return FileResult(fr, score_file(fr.labels, fr.ts, fr.spans, self.samples), self.samples, labelled)

    def run_many(self, files: Iterable[str | Path], base: str | Path | None = None) -> list[FileResult]:
        """:meth:`run` on each file; ``rel`` names are relative to ``base`` (default: the file name)."""
        out = []
        for f in map(Path, files):
            rel = f.relative_to(base).as_posix() if base is not None else f.name
            out.append(self.run(f, rel))
        return out


@contextlib.contextmanager
def _quiet_pipeline(quiet: bool) -> Iterator[None]:
    """Hold back the pipeline's INFO/WARNING lines (one per alert) while replaying, unless asked for."""
    loggers = [logging.getLogger(n) for n in ("agent.pipeline", "agent.calibrate")]
    saved = [lg.level for lg in loggers]
    if quiet:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, saved):
            lg.setLevel(lvl)


def evaluate_files(files: Iterable[str | Path], overrides: Mapping[str, Any] | None = None, *,
                   base: str | Path | None = None, **create: Any) -> list[FileResult]:
    """Score labelled recordings with the given setting overrides: ``Evaluation.create(overrides, **create)``
    then ``run_many``. Per file: ``.metrics`` (counts, segments, false alerts) and ``.spans`` (alert rows).
    Building the :class:`Evaluation` once and calling ``run_many`` saves reloading the model."""
    return Evaluation.create(overrides, **create).run_many(files, base)


# ================================================================================================ files


def read_header(path: Path) -> list[str]:
    """The header of a CSV, split the way the replay source splits it (``;`` or ``,``)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        line = f.readline()
    delimiter = ";" if line.count(";") > line.count(",") else ","
    return [h.strip() for h in next(csv.reader([line], delimiter=delimiter), [])]


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(p))]


def find_csvs(data: Path) -> list[Path]:
    """``data`` itself when it is a file, else every ``*.csv`` below it, in natural order (2 before 10)."""
    if data.is_file():
        return [data]
    return sorted((p for p in data.rglob("*") if p.is_file() and p.suffix.lower() == ".csv"), key=_natural_key)


def plot_name(rel: str) -> str:
    """``valve1/3.csv`` → ``valve1_3.png``."""
    stem = rel[:-4] if rel.lower().endswith(".csv") else rel
    return re.sub(r"[\\/]+", "_", stem) + ".png"


# ================================================================================================ output


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


TABLE_COLUMNS = ("file", "rows", "thr", "TP", "FP", "FN", "TN", "F1", "FAR%", "MAR%", "alerted", "delay_s", "false")


def table(rows: Sequence[dict[str, Any]], total: dict[str, Any]) -> str:
    """The aligned text table: one line per file and a TOTAL line."""

    def cells(name: str, m: dict[str, Any], thr: float | None) -> list[str]:
        return [
            name, str(m["scored_rows"]), _fmt(thr, ".4g"), str(m["tp"]), str(m["fp"]), str(m["fn"]), str(m["tn"]),
            _fmt(m["f1"], ".3f"), _fmt(m["far"], ".1f", 100), _fmt(m["mar"], ".1f", 100),
            f"{m['segments_alerted']}/{m['segments']}", _fmt(m["median_delay_s"], ".1f"), str(m["false_alerts"]),
        ]

    lines = [list(TABLE_COLUMNS)] + [cells(r["file"], r, r["threshold"]) for r in rows]
    lines.append(cells("TOTAL", total, None))
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_COLUMNS))]

    def render(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    out = [render(lines[0]), "  ".join("-" * w for w in widths)]
    out += [render(line) for line in lines[1:-1]]
    out += ["  ".join("-" * w for w in widths), render(lines[-1])]
    return "\n".join(out) + "\n"


def file_entry(run: FileRun, metrics: FileMetrics, first_row: int, plot: str | None) -> dict[str, Any]:
    from agent.parse import iso

    ts = run.ts
    return {
        "file": run.rel,
        **_metrics_dict(
            metrics.counts, rows=metrics.rows, scored_rows=metrics.scored_rows, first_scored_row=first_row,
            segments=len(metrics.segments), segments_alerted=metrics.segments_alerted,
            median_delay_s=metrics.median_delay_s, false_alerts=metrics.false_alerts, alerts=metrics.alerts,
        ),
        "threshold": run.threshold,
        "teach_in_rows": run.teach_in_rows,
        "rejected": run.rejected,
        "bad_labels": run.bad_labels,
        "suppressed_alerts": run.suppressed,
        "segment_details": [
            {"start_row": s.start, "end_row": s.end, "start": iso(float(ts[s.start])), "end": iso(float(ts[s.end - 1])),
             "alerted": s.alerted, "delay_s": s.delay_s}
            for s in metrics.segments
        ],
        "alert_details": [asdict(a) for a in run.alerts],
        "plot": plot,
    }


class Progress:
    """One in-place line on a terminal (``\\r``); one line per finished file otherwise."""

    def __init__(self, stream: TextIO, total_files: int, total_rows: int):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.total_files, self.total_rows = total_files, total_rows
        self.rows_before = 0
        self.index = 0
        self.name = ""
        self._last = 0.0
        self._width = 0

    def start(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.row(0, force=True)

    def row(self, rows_in_file: int, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        done = self.rows_before + rows_in_file
        frac = min(1.0, done / self.total_rows) if self.total_rows else 1.0
        bar = "#" * int(frac * 30)
        self._line(
            f"[{bar:<30}] {frac:4.0%}  file {self.index}/{self.total_files} {self.name}  rows {done}/{self.total_rows}"
        )

    def _line(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def done(self, rows: int, note: str) -> None:
        self.rows_before += rows
        if self.tty:
            self.row(0, force=True)
        else:
            self.stream.write(f"[{self.index}/{self.total_files}] {self.name}: {rows} rows, {note}\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a warning) without garbling the bar."""
        if self.tty and self._width:
            self._line("")
            self.stream.write("\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


# ================================================================================================ plot


def _break_gaps(x: np.ndarray, ts: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN where the data has a gap (> 5 median steps) so that the line is not drawn across it."""
    if len(ts) < 3:
        return x, y
    dt = np.diff(ts)
    step = float(np.median(dt))
    gaps = np.flatnonzero(dt > 5 * max(step, 1e-9)) + 1
    if not len(gaps):
        return x, y
    return np.insert(x, gaps, x[gaps - 1]), np.insert(np.asarray(y, dtype=np.float64), gaps, np.nan)


def plot_file(run: FileRun, channels: Sequence[str], first_row: int, out: Path) -> None:
    """One PNG (1600x1000): the channels as small multiples, then the score (log) with threshold and clear level;
    labelled segments shaded red, alert spans orange, teach-in grey. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(run.ts)
    t = np.round(run.ts * 1000).astype(np.int64).astype("datetime64[ms]")
    c = len(channels)
    fig = plt.figure(figsize=(16, 10), dpi=100)
    gs = fig.add_gridspec(c + 1, 1, height_ratios=[1] * c + [3.2], hspace=0.08)
    axes = [fig.add_subplot(gs[i, 0]) for i in range(c + 1)]
    for ax in axes[1:]:
        ax.sharex(axes[0])
    spans = [(a, n if b is None else b) for a, b in run.spans]
    segs = label_segments(run.labels, first_row)

    def t_at(i: int) -> Any:
        return t[min(i, n - 1)]

    for ax in axes:
        if first_row > 0 and n:
            ax.axvspan(t[0], t_at(first_row), color="0.85", lw=0)
        for s0, s1 in segs:
            ax.axvspan(t[s0], t_at(s1), color="tab:red", alpha=0.18, lw=0)
        for a, b in spans:
            ax.axvspan(t_at(a), t_at(b), ymin=0.0, ymax=0.12, color="tab:orange", alpha=0.9, lw=0)
        ax.grid(True, alpha=0.3)
    for i, (ax, name) in enumerate(zip(axes, channels)):
        ax.plot(*_break_gaps(t, run.ts, run.values[:, i]), lw=0.7, color="tab:blue")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelbottom=False, labelsize=7)
        ax.yaxis.set_major_locator(plt.MaxNLocator(2))
    ax = axes[-1]
    if len(run.scores):
        s = np.where(run.scores > 0, run.scores, np.nan)
        ax.plot(*_break_gaps(t[run.score_rows], run.ts[run.score_rows], s), lw=0.8, color="k", label="score")
        ax.set_yscale("log")
    ax.axhline(run.threshold, color="tab:red", lw=1.2, ls="-", label=f"threshold {run.threshold:.4g}")
    ax.axhline(run.threshold * run.clear_ratio, color="tab:red", lw=0.8, ls="--",
               label=f"clear level x{run.clear_ratio:g}")
    for a, b in spans:
        ax.axvspan(t_at(a), t_at(b), color="tab:orange", alpha=0.25, lw=0)
    ax.set_ylabel("score")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(mdates.AutoDateLocator()))
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Patch(color="0.85", label=f"teach-in ({first_row} rows)"),
        Patch(color="tab:red", alpha=0.3, label="labelled anomaly"),
        Patch(color="tab:orange", alpha=0.6, label="alert active"),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=8, ncol=5)
    fa = sum(a.false_alert for a in run.alerts)
    fig.suptitle(f"{run.rel} — {len(run.alerts)} alert(s), {fa} false; k={run.k} n={run.n}", fontsize=12)
    fig.subplots_adjust(left=0.12, right=0.98, top=0.95, bottom=0.05)
    fig.savefig(out)
    plt.close(fig)


# ================================================================================================ command


def add_arguments(parser: argparse.ArgumentParser, env_file: bool = True) -> argparse.ArgumentParser:
    """The options of ``edge-agent evaluate`` (``env_file=False`` when the caller adds ``--env-file`` itself)."""
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="labelled CSV (SKAB format, 'anomaly' column), or a folder searched recursively for *.csv")
    parser.add_argument("--normal", action="append", default=[], metavar="FILE",
                        help="a recording of normal operation (no labels needed; repeatable): teach-in on its first N "
                             "rows, then report false alerts per hour, alert-active share and score headroom")
    parser.add_argument("--unlabelled-as-normal", action="store_true",
                        help="treat a CSV under --data without an 'anomaly' column as --normal instead of skipping it")
    parser.add_argument("--group-by", choices=GROUP_BY, default="file",
                        help="also report per fault family (--families mapping) or per folder, and pooled "
                             "(default: file, the per-file table only)")
    parser.add_argument("--families", metavar="FILE", default=None,
                        help="family mapping for --group-by family: JSON or TOML table of path glob = family name "
                             "(default: the bundled SKAB mapping)")
    parser.add_argument("--calibration-samples", type=_non_negative, default=None, metavar="N",
                        help="first N rows of each file are teach-in, the rest is scored "
                             "(default: the model sidecar's calibration.samples; SKAB protocol: 400)")
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="model .tflite with its .json sidecar beside it (default: the bundled pump-anomaly model)")
    parser.add_argument("--runtime", choices=["auto", "ai_edge_litert", "tflite_runtime"], default=None,
                        help="TFLite runtime (default: auto)")
    parser.add_argument("--out", metavar="DIR", default="eval-out",
                        help="where summary.txt, summary.json and the plots go (default: ./eval-out)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    if env_file:
        parser.add_argument("--env-file", metavar="PATH", default=None,
                            help="take model, runtime, calibration samples, threshold and decision (k, n, clear_ratio) "
                                 "from this agent env file and the environment, as the daemon would; options given "
                                 "here win (default: none of them, the sidecar's values)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the pipeline's log lines (alerts, teach-in)")
    return parser


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _policy(settings: Any) -> dict[str, Any]:
    a = getattr(settings, "alerts", None)
    if a is None:
        return {}
    return {k: getattr(a, k) for k in ("cooldown_s", "rate_limit_per_hour") if hasattr(a, k)}


def _fail(msg: str) -> int:
    print(f"evaluate: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _count_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


@dataclass
class _Job:
    path: Path
    rel: str
    rows: int
    labelled: bool


def _collect(data: Path | None, normal: Sequence[str], unlabelled_as_normal: bool
             ) -> tuple[list[_Job], list[dict[str, str]], int]:
    """The files to run (labelled ones under --data, then the normal ones), the skipped ones, and how many CSVs
    --data held."""
    jobs: list[_Job] = []
    skipped: list[dict[str, str]] = []
    files = find_csvs(data) if data is not None else []
    base = (data if data.is_dir() else data.parent) if data is not None else None
    for f in files:
        rel = f.relative_to(base).as_posix() if base is not None else f.name
        try:
            header = read_header(f)
        except OSError as e:
            skipped.append({"file": rel, "reason": f"unreadable ({e.strerror})"})
            continue
        if LABEL_COLUMN not in header and not unlabelled_as_normal:
            skipped.append({"file": rel, "reason": f"no '{LABEL_COLUMN}' column"})
            continue
        jobs.append(_Job(f, rel, _count_rows(f), LABEL_COLUMN in header))
    for name in normal:
        f = Path(name)
        jobs.append(_Job(f, f.name if data is None or not f.is_relative_to(base) else f.relative_to(base).as_posix(),
                         _count_rows(f), False))
    return jobs, skipped, len(files)


def normal_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned text table of the long-normal-operation runs."""
    head = ["normal file", "rows", "hours", "thr", "alerts", "per_hour", "active%", "p99/thr", "max/thr"]
    lines = [head] + [[
        r["file"], str(r["scored_rows"]), f"{r['hours']:.2f}", _fmt(r["threshold"], ".4g"), str(r["alerts"]),
        _fmt(r["alerts_per_hour"], ".2f"), _fmt(r["active_share"], ".2f", 100), _fmt(r["headroom_p99"], ".3f"),
        _fmt(r["max_over_threshold"], ".3f"),
    ] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def render(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    return "\n".join([render(head), "  ".join("-" * w for w in widths), *map(render, lines[1:])]) + "\n"


def run(args: argparse.Namespace) -> int:
    """``edge-agent evaluate`` with parsed arguments; the exit code."""
    from agent.infer import ModelError

    if args.data is None and not args.normal:
        return _fail("give --data DIR (labelled recordings) and/or --normal FILE (a normal recording)")
    data = Path(args.data) if args.data is not None else None
    if data is not None and not data.exists():
        return _fail(f"--data {data}: no such file or directory")
    for name in args.normal:
        if not Path(name).is_file():
            return _fail(f"--normal {name}: no such file")
    grouping = Grouping(args.group_by)
    if args.families:
        try:
            grouping = Grouping(args.group_by, tuple(load_families(Path(args.families))))
        except FamiliesError as e:
            return _fail(str(e))
    env_file = getattr(args, "env_file", None)
    if env_file:
        from agent.settings import ConfigError, load_settings

        try:
            settings = load_settings(Path(env_file))
        except ConfigError as e:
            for line in e.problems:
                print(f"config error: {line}", file=sys.stderr)
            return EXIT_USAGE
    else:
        settings = default_settings()
    overrides: dict[str, Any] = {}
    if args.model:
        overrides["model.path"] = args.model
    if args.runtime:
        overrides["model.runtime"] = args.runtime
    if args.calibration_samples is not None:
        overrides["calibration.samples"] = args.calibration_samples
    try:
        ev = Evaluation.create(overrides, settings=settings)
    except ModelError as e:
        return _fail(f"model error: {e}")
    except ValueError as e:
        return _fail(str(e))
    model, samples, settings = ev.model, ev.samples, ev.settings

    out = Path(args.out)
    progress = Progress(sys.stderr, 0, 0)
    try:
        jobs, skipped, n_csv = _collect(data, args.normal, args.unlabelled_as_normal)
    except OSError as e:
        return _fail(f"cannot read {e.filename} ({e.strerror})")
    for s in skipped:
        progress.message(f"warning: skipping {s['file']}: {s['reason']}")
    if not jobs:
        return _fail(
            f"no labelled CSV (with an '{LABEL_COLUMN}' column) in {data}"
            + (f" ({n_csv} CSV file(s) found, none labelled)" if n_csv else " (no *.csv found)")
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _fail(f"--out {out}: cannot create ({e.strerror})")

    ev.verbose = args.verbose
    plots = not args.no_plots
    progress = Progress(sys.stderr, len(jobs), sum(j.rows for j in jobs))
    entries: list[dict[str, Any]] = []
    results: list[FileMetrics] = []
    groups: list[str] = []
    normal_rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    try:
        for i, job in enumerate(jobs, 1):
            progress.start(i, job.rel)
            try:
                res = ev.run(job.path, job.rel, labelled=job.labelled, on_row=progress.row)
            except (OSError, ValueError) as e:
                progress.message(f"warning: skipping {job.rel}: {e}")
                skipped.append({"file": job.rel, "reason": str(e)})
                continue
            fr, m = res.run, res.metrics
            for note in res.notes():
                progress.message(f"warning: {job.rel}: {note}")
            png = None
            if plots and len(fr.ts):
                try:
                    plot_file(fr, model_channels(model, job.path), samples, out / plot_name(job.rel))
                    png = plot_name(job.rel)
                except ImportError:
                    progress.message(MATPLOTLIB_HINT)
                    plots = False
            params = {"k": fr.k, "n": fr.n, "clear_ratio": fr.clear_ratio}
            if job.labelled:
                entries.append(file_entry(fr, m, samples, png))
                results.append(m)
                groups.append(grouping.group(job.rel, job.path, lambda msg: progress.message(f"warning: {msg}")))
                note = f"{m.alerts} alert(s), segments alerted {m.segments_alerted}/{len(m.segments)}"
            else:
                nm = res.normal()
                normal_rows.append({"file": job.rel, **nm.as_dict(), "teach_in_rows": fr.teach_in_rows,
                                    "rejected": fr.rejected, "suppressed_alerts": fr.suppressed,
                                    "alert_details": [asdict(a) for a in fr.alerts], "plot": png})
                note = f"{nm.alerts} alert(s) in {nm.hours:.2f} h of normal operation"
            progress.done(len(fr.ts), note)
    finally:
        progress.close()

    configured = settings.model.threshold
    sidecar = getattr(model, "sidecar", None)
    if configured is not None:
        source, shown = "configured", f"{configured:g}"
    elif samples and sidecar is not None and "threshold" in sidecar.calibration.fit:
        source, shown = "calibrated", "calibrated per file"
    elif sidecar is not None:
        source, shown = "sidecar", f"{sidecar.threshold:g} (sidecar)"
    else:
        source, shown = "model", "the model's own"
    describe = model.describe() if hasattr(model, "describe") else {"name": getattr(model, "name", str(model))}
    header = (
        f"model {describe.get('name')} {describe.get('version', '')} sha256 {getattr(model, 'sha256', '-')} "
        f"({getattr(model, 'runtime', '-')} {getattr(model, 'runtime_version', '')})\n"
        f"data {data if data is not None else '-'}: {len(results)} labelled file(s), {len(normal_rows)} normal, "
        f"{len(skipped)} skipped; teach-in {samples} rows per file; "
        f"threshold {shown}, k={params.get('k')} n={params.get('n')} clear_ratio={params.get('clear_ratio')}\n"
    )
    body = ""
    total: dict[str, Any] = {}
    group_rows: list[dict[str, Any]] = []
    if results:
        total = totals(results)
        total["files"] = len(results)
        total["false_alerts_per_file"] = total["false_alerts"] / len(results)
        header += ("rows = scored rows; FAR/MAR in %; alerted = segments alerted; delay_s = median detection delay; "
                   "false = false alerts\n")
        body += table(entries, total)
        if grouping.by != "file":
            group_rows = group_totals(groups, results, [e["file"] for e in entries])
            body += f"\nper {grouping.by}:\n" + group_table(group_rows, total)
    if normal_rows:
        body += ("\nnormal operation (every alert is false): hours = data time after teach-in; per_hour = false "
                 "alerts per hour; active% = rows with an alert active; p99/thr, max/thr = score over threshold\n")
        body += normal_table(normal_rows)
    skipped_txt = "".join(f"skipped {s['file']}: {s['reason']}\n" for s in skipped)
    summary = {
        "model": {**describe, "path": str(getattr(model, "path", "")), "runtime": getattr(model, "runtime", None),
                  "runtime_version": getattr(model, "runtime_version", None)},
        "data": None if data is None else str(data),
        "calibration_samples": samples,
        "decision": {"threshold": configured, "threshold_source": source, **params},
        "alert_policy": _policy(settings),
        "protocol": "per file: first N rows teach-in (fresh state), rows >= N scored point-wise by alert state "
                    "(raise row inclusive .. clear row exclusive); F1 = TP/(TP+(FP+FN)/2), FAR = FP/(FP+TN), "
                    "MAR = FN/(FN+TP); delay clamped at 0",
        "group_by": grouping.by,
        "families": [list(p) for p in grouping.mapping] if grouping.by == "family" else None,
        "total": total or None,
        "groups": group_rows if grouping.by != "file" else None,
        "files": entries,
        "normal": normal_rows,
        "skipped": skipped,
    }
    try:
        (out / "summary.txt").write_text(header + "\n" + body.lstrip("\n") + skipped_txt)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    except OSError as e:
        print(f"evaluate: cannot write to {out} ({e.strerror})", file=sys.stderr)
        return 1
    sys.stdout.write(header + "\n" + body.lstrip("\n") + skipped_txt)
    sys.stdout.write(f"written: {out / 'summary.txt'}, {out / 'summary.json'}"
                     + (f" and {sum(1 for e in entries + normal_rows if e['plot'])} plot(s)" if plots else "") + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -c 'from agent.evaluate import main; main()' --data ...``)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="edge-agent evaluate",
        description="Replay labelled recordings (SKAB format) through the agent's pipeline and score its alerts.",
    ))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments, 0 on --help
        return int(e.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
