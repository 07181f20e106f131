"""Teach-in: the first readings after install are normal; fit the model's normal on site, persist it.

Runs on the pipeline thread. The raw normal readings are kept in ``STATE_DIR/calibration.npz`` beside the fitted
result (``calibration.json``), so that a new model with the same channels is calibrated from them at once
instead of starting another teach-in, and so that operator feedback can fold more normal data in:

* a teach-in is a number of readings (``samples``), a span of data time (``duration_s``), or both (both must be
  reached). A long one keeps at most ``MAX_ROWS`` readings, in evenly spread runs of ``CHUNK`` (memory is bounded
  whatever the sampling rate);
* before fitting, the two halves of the teach-in are checked against each other (:func:`agent.generic.contamination`,
  for every model): a fault or a change of operating point inside the teach-in is reported (log, status,
  ``edge-agent calibrate``) and, when one half is consistent, only that half is fitted;
* ``fold(alert_id, rows)`` — an operator's ``false_positive`` label: the alert's readings are normal too, the model
  is refitted on teach-in + folded readings, persisted in ``calibration-feedback.npz``; ``unfold`` undoes it.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.derive import Deriver
from agent.files import atomic_write, set_aside
from agent.generic import GenericModel, GenericScorer, contamination
from agent.infer import Scorer
from agent.logsafe import clip
from agent.window import Normaliser, Windower

log = logging.getLogger(__name__)

MAX_ROWS = 20_000  # readings kept from one teach-in (a 24 h teach-in at 10 Hz would be 864,000)
CHUNK = 256  # ... thinned by dropping every other run of this many, so the kept ones stay contiguous
MAX_FOLDED = 100  # alerts whose readings feedback may fold in; the oldest fold goes first
MAX_FOLD_ROWS = 2_000  # readings folded in per alert


class Detector(Protocol):
    """What teach-in needs of a model (a TFLite :class:`Model` or a :class:`GenericModel`)."""

    sha256: str
    sidecar: Any

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Calibration:
    """What teach-in fitted: normalisation, threshold, detector parameters, and for which model."""

    model_sha256: str
    channels: list[str]
    mean: list[float] | None
    std: list[float] | None
    threshold: float | None
    samples: int
    fitted_at: float
    params: dict[str, Any] | None = None  # the generic detector's baseline, scale, ...
    warning: str | None = None  # the teach-in did not look like one normal operating point
    folded: list[str] = field(default_factory=list)  # alerts whose readings feedback folded in

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def write(self, path: Path) -> None:
        """Persist as JSON, atomically (a power cut leaves the old file or the new one)."""
        atomic_write(path, json.dumps(self.to_json(), indent=1).encode())


def parse_calibration(raw: bytes) -> Calibration:
    """A Calibration from ``calibration.json``; ValueError saying what is wrong (garbage, NaN, wrong shapes)."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number")

    try:
        data = json.loads(raw, parse_constant=no_constant)
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        cal = Calibration(**data)
    except TypeError as e:
        raise ValueError(f"not a calibration ({e})") from None
    if not isinstance(cal.model_sha256, str) or not isinstance(cal.channels, list) or not all(isinstance(c, str) for c in cal.channels):
        raise ValueError("model_sha256 and channels must be text")
    n = len(cal.channels)
    for name in ("mean", "std"):
        vec = getattr(cal, name)
        if vec is not None and (not isinstance(vec, list) or len(vec) != n or not all(_finite(v) for v in vec)):
            raise ValueError(f"{name} must be {n} finite numbers")
    if cal.std is not None and any(v < 0 for v in cal.std):
        raise ValueError("std must not be negative")
    if cal.threshold is not None and not (_finite(cal.threshold) and cal.threshold > 0):
        raise ValueError(f"threshold {cal.threshold!r} is not a finite positive number")
    if isinstance(cal.samples, bool) or not isinstance(cal.samples, int) or cal.samples < 0 or not _finite(cal.fitted_at):
        raise ValueError("samples and fitted_at must be numbers")
    if cal.params is not None and not isinstance(cal.params, dict):
        raise ValueError("params must be an object")
    if cal.warning is not None and not isinstance(cal.warning, str):
        raise ValueError("warning must be text")
    if not isinstance(cal.folded, list) or not all(isinstance(a, str) for a in cal.folded):
        raise ValueError("folded must be a list of alert ids")
    return cal


def _finite(v: Any) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def fit(model: Detector, normal: np.ndarray, folded: list[str] | None = None) -> Calibration:
    """Fit what the model asks for on ``normal`` (rows of raw vectors, oldest first)."""
    sc = model.sidecar
    channels = list(sc.channels)
    warning = None
    if isinstance(model, GenericModel):
        r = model.fit(normal, check=not folded)  # checks the halves itself (with its own window)
        return Calibration(
            model_sha256=model.sha256, channels=channels, mean=r["baseline"], std=r["scale"],
            threshold=float(r["threshold"]), samples=int(len(normal)), fitted_at=time.time(), params=r,
            warning=r.get("warning"), folded=list(folded or []),
        )
    found = contamination(normal, channels) if not folded else None
    if found is not None:
        warning, keep = found
        if keep is not None:
            normal = normal[keep[0]:keep[1]]
    spec = sc.calibration
    if "normalisation" in spec.fit and sc.normalisation.method == "zscore":
        norm = Normaliser.fit(Deriver(sc.channels, sc.derived)(normal))  # derived features are normalised too
    else:
        norm = sidecar_normaliser(model)
    threshold = None
    if "threshold" in spec.fit:
        scorer = Scorer(model, norm)
        w = Windower(sc.window.length, sc.window.hop, len(sc.channels))
        from agent.records import Vector

        scores = []
        for i, row in enumerate(normal):
            win = w.push(Vector(ts=float(i), values=row))
            if win is not None:
                scores.append(scorer.score(win.data)[0])
        if scores:
            threshold = float(np.quantile(np.asarray(scores), spec.threshold_quantile) * spec.threshold_factor)
            if not (math.isfinite(threshold) and threshold > 0):  # e.g. perfectly constant data: keep the sidecar's
                log.warning("teach-in fitted threshold %r is unusable: the sidecar's %.4g holds", threshold, sc.threshold)
                threshold = None
    return Calibration(
        model_sha256=model.sha256,
        channels=channels,
        mean=None if norm.mean is None else [float(v) for v in norm.mean],
        std=None if norm.std is None else [float(v) for v in norm.std],
        threshold=threshold,
        samples=int(len(normal)),
        fitted_at=time.time(),
        warning=warning,
        folded=list(folded or []),
    )


def sidecar_normaliser(model: Detector) -> Normaliser:
    n = getattr(model.sidecar, "normalisation", None)
    if n is None or n.method == "none" or n.mean is None or n.std is None:
        return Normaliser(None, None)
    return Normaliser(np.asarray(n.mean), np.asarray(n.std))


def make_scorer(model: Detector, cal: Calibration | None, previous: Any = None) -> Scorer | GenericScorer | None:
    """The scorer for ``model`` with ``cal`` (None: not calibrated; a generic detector then has none yet).

    ``previous``: the scorer being replaced; a generic one hands over the baselines it has followed since.
    """
    if isinstance(model, GenericModel):
        if cal is None or cal.params is None:
            return None
        scorer = model.scorer(cal.params)
        if isinstance(previous, GenericScorer):
            scorer.adopt(previous)
        return scorer
    if cal is not None and cal.mean is not None and cal.std is not None:
        return Scorer(model, Normaliser(np.asarray(cal.mean), np.asarray(cal.std)))
    return Scorer(model, sidecar_normaliser(model))  # type: ignore[arg-type]


class Calibrator:
    """Collects normal readings (a count, a duration or both), then fits and persists a Calibration; reloads it
    after a restart; folds in and out the readings of alerts that operators called false."""

    def __init__(self, model: Detector, samples: int, state_dir: Path, duration_s: float | None = None):
        self.model = model
        self.samples = samples
        self.duration_s = duration_s or None
        self.state_dir = Path(state_dir)
        self._json = self.state_dir / "calibration.json"
        self._npz = self.state_dir / "calibration.npz"
        self._fold_npz = self.state_dir / "calibration-feedback.npz"
        self._rows: list[np.ndarray] = []
        self._seen = 0  # readings taken (more than kept when a long teach-in is thinned)
        self._first_ts: float | None = None
        self._last_ts: float | None = None
        self.result: Calibration | None = None
        if self.enabled:
            self.result = self._load()

    @property
    def enabled(self) -> bool:
        return self.samples > 0 or self.duration_s is not None

    @property
    def active(self) -> bool:
        """True while teach-in is collecting readings (no alert may be raised)."""
        return self.enabled and self.result is None

    @property
    def progress(self) -> float:
        if not self.active:
            return 1.0
        parts = []
        if self.samples > 0:
            parts.append(self._seen / self.samples)
        if self.duration_s is not None:
            span = 0.0 if self._first_ts is None or self._last_ts is None else self._last_ts - self._first_ts
            parts.append(span / self.duration_s)
        return max(0.0, min(1.0, min(parts)))

    @property
    def collected(self) -> int:
        return self._seen

    @property
    def elapsed_s(self) -> float:
        """Data time covered by the teach-in so far."""
        return 0.0 if self._first_ts is None or self._last_ts is None else self._last_ts - self._first_ts

    def add(self, values: np.ndarray, ts: float = math.nan) -> Calibration | None:
        """Take one normal vector; returns the Calibration when this one completed teach-in."""
        if not self.active:
            return None
        self._rows.append(np.asarray(values, dtype=np.float64))
        self._seen += 1
        if math.isfinite(ts):
            if self._first_ts is None:
                self._first_ts = ts
            self._last_ts = ts
        if len(self._rows) > MAX_ROWS:
            self._rows = [r for i, r in enumerate(self._rows) if (i // CHUNK) % 2 == 0]
        if self.progress < 1.0:
            return None
        normal = np.vstack(self._rows)
        self._rows = []
        self.result = fit(self.model, normal)
        self._save(normal)
        return self.result

    def reset(self) -> None:
        """Start teach-in again (``edge-agent calibrate --reset``, the calibrate command)."""
        self._rows, self._seen, self._first_ts, self._last_ts = [], 0, None, None
        self.result = None
        for p in (self._json, self._npz, self._fold_npz):
            p.unlink(missing_ok=True)

    # -- feedback --------------------------------------------------------------------------------------------

    def fold(self, alert_id: str, rows: np.ndarray) -> Calibration | None:
        """Take an alert's readings as normal: refit on teach-in + every folded alert; None without a teach-in."""
        folds = self._read_folds()
        folds.pop(alert_id, None)
        folds[alert_id] = np.asarray(rows, dtype=np.float64)[-MAX_FOLD_ROWS:]
        while len(folds) > MAX_FOLDED:
            folds.pop(next(iter(folds)))
        return self._refit(folds)

    def unfold(self, alert_id: str) -> Calibration | None:
        """Undo ``fold``; None when that alert was not folded in."""
        folds = self._read_folds()
        if folds.pop(alert_id, None) is None:
            return None
        return self._refit(folds)

    def _refit(self, folds: dict[str, np.ndarray]) -> Calibration | None:
        normal = self._read_normal()
        if normal is None or self.result is None:
            return None
        parts = [normal, *folds.values()]
        self.result = fit(self.model, np.vstack(parts), folded=list(folds))
        self._write_folds(folds)
        self.result.write(self._json)
        return self.result

    def _read_normal(self) -> np.ndarray | None:
        try:
            with np.load(self._npz, allow_pickle=False) as z:
                normal = np.asarray(z["normal"], dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file
            log.warning("teach-in readings in %s unreadable (%s): feedback cannot refit", self._npz, clip(e))
            return None
        if normal.ndim != 2 or normal.shape[1] != len(self.model.sidecar.channels) or not np.isfinite(normal).all():
            log.warning("teach-in readings in %s have the wrong shape: feedback cannot refit", self._npz)
            return None
        return normal

    def _read_folds(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self._fold_npz, allow_pickle=False) as z:
                ids = [str(i) for i in z["ids"]]
                lengths = [int(n) for n in z["lengths"]]
                rows = np.asarray(z["rows"], dtype=np.float64)
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file
            set_aside(self._fold_npz, f"{clip(e, 200)}; the readings feedback folded in are forgotten")
            return {}
        width = len(self.model.sidecar.channels)
        if (rows.ndim != 2 or rows.shape[1] != width or not np.isfinite(rows).all() or len(ids) != len(lengths)
                or sum(lengths) != len(rows) or any(n < 0 for n in lengths)):
            set_aside(self._fold_npz, "wrong shape or not finite; the readings feedback folded in are forgotten")
            return {}
        out, start = {}, 0
        for i, n in zip(ids, lengths):
            out[i] = rows[start:start + n]
            start += n
        return out

    def _write_folds(self, folds: dict[str, np.ndarray]) -> None:
        if not folds:
            self._fold_npz.unlink(missing_ok=True)
            return
        buf = io.BytesIO()
        width = len(self.model.sidecar.channels)
        np.savez(buf, ids=np.asarray(list(folds)), lengths=np.asarray([len(r) for r in folds.values()]),
                 rows=np.vstack([r.reshape(-1, width) for r in folds.values()]))
        atomic_write(self._fold_npz, buf.getvalue())

    # -- persistence -----------------------------------------------------------------------------------------

    def _save(self, normal: np.ndarray) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, normal=normal, channels=np.asarray(self.model.sidecar.channels))
            atomic_write(self._npz, buf.getvalue())
            self._fold_npz.unlink(missing_ok=True)
            assert self.result is not None
            self.result.write(self._json)
        except OSError as e:
            log.warning("could not persist calibration in %s (%s): teach-in repeats after a restart", self.state_dir, e)

    def stored_channels(self) -> list[str] | None:
        """The channels of the stored calibration, if any (a generic detector learns its channels from them)."""
        try:
            data = json.loads(self._json.read_text())
        except (OSError, ValueError):
            return None
        ch = data.get("channels") if isinstance(data, dict) else None
        return [str(c) for c in ch] if isinstance(ch, list) and ch else None

    def _load(self) -> Calibration | None:
        channels = list(self.model.sidecar.channels)
        try:
            cal = parse_calibration(self._json.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("ignoring unreadable %s (%s): teach-in starts again", self._json, e.strerror)
            return None
        except ValueError as e:
            set_aside(self._json, f"{clip(e, 200)}; teach-in starts again")
            return None
        if cal.model_sha256 == self.model.sha256 and cal.channels == channels:
            return cal
        # Another model: refit from the stored normal readings when they have the same channels.
        try:
            with np.load(self._npz, allow_pickle=False) as z:
                stored = [str(c) for c in z["channels"]]
                normal = np.asarray(z["normal"], dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file (zipfile, pickle, EOF)
            log.info("calibration was for another model and its readings are unreadable (%s): teach-in again", clip(e))
            return None
        if stored != channels:
            log.info("calibration was for other channels: teach-in starts again")
            return None
        if normal.ndim != 2 or normal.shape[1] != len(channels) or not np.isfinite(normal).all():
            set_aside(self._npz, "stored normal readings of the wrong shape or not finite")
            return None
        folds = self._read_folds()
        parts = [normal, *(f for f in folds.values() if f.ndim == 2 and f.shape[1] == len(channels))]
        cal = fit(self.model, np.vstack(parts), folded=list(folds))
        cal.write(self._json)
        log.info("calibrated model %s from %d stored normal readings", self.model.name, len(normal))
        return cal
