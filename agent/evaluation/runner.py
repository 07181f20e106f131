"""Replaying recordings through the daemon's own pipeline for ``edge-agent evaluate``: one fresh
:class:`Pipeline` per file (a new temporary state directory, so teach-in never leaks between files), its typed
events (agent.records) turned into alert spans, scored by :mod:`agent.evaluation.scoring`. :class:`Evaluation`
and :func:`evaluate_files` are the programmatic API (re-exported by agent.evaluate)."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from agent.counters import Counters
from agent.evaluation.overrides import apply_overrides, default_settings
from agent.evaluation.scoring import (
    LABEL_COLUMN,
    FileMetrics,
    NormalMetrics,
    Span,
    alert_row,
    false_alert_flags,
    normal_metrics,
    score_file,
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
    labelled_false: bool = False  # ``--label-false``: labelled false_positive when it cleared (folded into normal)


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
    suppressed: int = 0  # raises held back by the alert policy (cooldown, rate limit): scored only if raised later

    @property
    def spans(self) -> list[Span]:
        return [(a.raise_row, a.clear_row) for a in self.alerts]


def pipeline_factory(settings: Any, model: Any, calibration_samples: int | None,
                     build: Callable[[Any, Any, Counters], Any] | None = None) -> Callable[[Counters, Path], Any]:
    """Each file's Pipeline, built as the daemon builds its own (``build``, default ``app.build_pipeline``), with
    teach-in over ``calibration_samples`` readings (None: the duration alone) and its state in a fresh directory."""
    if build is None:
        from agent.assets import build_pipeline

        build = build_pipeline

    def make(counters: Counters, state_dir: Path, channels: list[str] | None = None, evidence: bool = False) -> Any:
        s = settings.model_copy(update={
            "state_dir": state_dir,
            "calibration": settings.calibration.model_copy(update={"samples": calibration_samples}),
        })
        kw: dict[str, Any] = {"channels": channels} if channels else {}
        if evidence:  # an alert's readings kept, as the daemon keeps them, for operator feedback (--label-false)
            from agent.evidence import EvidenceStore

            kw["evidence"] = EvidenceStore(state_dir / "evidence.db", s.alerts.evidence_max_bytes)
        try:
            return build(s, model, counters, **kw)
        except BaseException:
            if "evidence" in kw:
                kw["evidence"].close()
            raise

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
    from agent.sources.replay import recording_channels

    return recording_channels(path)  # as the replay source takes them (a header it cannot play: ValueError)


def run_file(model: Any, path: Path, rel: str, make_pipeline: Callable[..., Any],
             on_row: Callable[[int], None] | None = None, labelled: bool = True, label_false: int = 0) -> FileRun:
    """Replay one recording through a fresh Pipeline (``make_pipeline(counters, state_dir)`` with its own new
    temporary state dir, so teach-in starts afresh) reading by reading. ``labelled=False``: every row is normal
    (a long normal recording), its label column, if any, is ignored. ``label_false=N``: play an operator who
    labels false alerts ``false_positive`` when they clear (an alert none of whose readings — the buffer before its
    raise included — is labelled anomalous) through the daemon's feedback path (``Pipeline.learn``: its readings
    are folded into the normal model), until N labels have been learnt."""
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
    with tempfile.TemporaryDirectory(prefix="edge-agent-eval-") as state, contextlib.ExitStack() as closing:
        p = make_pipeline(counters, Path(state), channels if getattr(model, "needs_channels", False) else None,
                          **({"evidence": True} if label_false else {}))
        if getattr(p, "gather", None) is not None:
            p.gather.live = False  # a recording, whatever source the settings name: timed by its data
        if label_false and getattr(p, "evidence", None) is not None:
            closing.callback(p.evidence.close)  # before the state dir goes, also when the replay raises
        lookback = getattr(p.recorder, "buffer_len", 0) if label_false else 0  # readings before the raise it keeps
        learned = 0
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
                    # false: no row labelled anomalous among those the fold takes (the buffer before the raise too)
                    if learned < label_false and not any(labels[max(0, a.raise_row - lookback):]):
                        a.labelled_false = bool(p.learn(e.alert_id, "false_positive").get("learned"))
                        learned += a.labelled_false
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
    first_row: int  # first scored row: the teach-in length asked for, or with a duration the rows it took
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

    def after_labels(self) -> dict[str, Any] | None:
        """With ``label_false``: how many alerts were labelled false, and the alerts raised after the last labelled
        one cleared, over the data time left (None when nothing was labelled)."""
        r = self.run
        labelled = [a for a in r.alerts if a.labelled_false]
        if not labelled:
            return None
        cut = int(labelled[-1].clear_row)  # type: ignore[arg-type]
        later = sum(1 for a in r.alerts if a.raise_row > cut)
        hours = float(r.ts[-1] - r.ts[cut]) / 3600 if len(r.ts) else 0.0
        return {"labelled": len(labelled), "after_row": cut, "hours": hours, "alerts": later,
                "alerts_per_hour": later / hours if hours > 0 else None}

    def notes(self) -> list[str]:
        """What the reader of the table must know about this file (teach-in, labels, suppressed alerts)."""
        r, notes = self.run, []
        if r.teach_in_rows is None:
            notes.append(f"teach-in never completed in its {len(r.ts)} rows")
        elif r.teach_in_rows > self.first_row:
            notes.append(f"teach-in took {r.teach_in_rows} rows (rejected readings)")
        if r.bad_labels:
            notes.append(f"{r.bad_labels} row(s) without a 0/1 label taken as 0")
        if r.suppressed:
            notes.append(f"{r.suppressed} alert(s) held back by cooldown/rate limit (scored where raised later, the "
                         "fault still on)")
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
    label_false: int = 0  # play an operator labelling the first N false alerts of each file (run_file)
    duration_s: float | None = None  # teach-in as a span of data time (with ``samples``: both must be reached)

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
                from agent.assets import load_model as load_model_default

                load_model = load_model_default
            model = load_model(s)
        samples, duration = s.calibration.samples, s.calibration.duration
        if samples is None and not duration:  # a duration replaces the sidecar's count, as in the daemon
            sidecar = getattr(model, "sidecar", None)
            samples = sidecar.calibration.samples if sidecar is not None else 0
        return cls(s, model, int(samples or 0), pipeline_factory(s, model, samples, build_pipeline),
                   duration_s=duration)

    def run(self, path: str | Path, rel: str | None = None, labelled: bool = True,
            on_row: Callable[[int], None] | None = None) -> FileResult:
        """Replay one file through a fresh pipeline and score it (``labelled=False``: all rows normal)."""
        path = Path(path)
        with _quiet_pipeline(not self.verbose):
            fr = run_file(self.model, path, rel or path.name, self.make_pipeline, on_row, labelled, self.label_false)
        first = self.samples  # a count: the protocol's rows, whatever the pipeline needed (the notes say)
        if self.duration_s:  # a span of data time: scored from where this file's teach-in ended
            first = len(fr.ts) if fr.teach_in_rows is None else fr.teach_in_rows
        return FileResult(fr, score_file(fr.labels, fr.ts, fr.spans, first), first, labelled)

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
