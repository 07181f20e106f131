"""Teach-in: the first readings after install are normal; fit normalisation and threshold on site, persist them.

Runs on the pipeline thread. The raw normal readings are kept in ``STATE_DIR/calibration.npz`` beside the fitted
result (``calibration.json``), so that a new model with the same channels is calibrated from them at once
instead of starting another teach-in.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.files import atomic_write, set_aside
from agent.logsafe import clip
from agent.infer import Model, Scorer
from agent.window import Normaliser, Windower

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """What teach-in fitted: normalisation, threshold, and for which model."""

    model_sha256: str
    channels: list[str]
    mean: list[float] | None
    std: list[float] | None
    threshold: float | None
    samples: int
    fitted_at: float

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
    return cal


def _finite(v: Any) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def fit(model: Model, normal: np.ndarray) -> Calibration:
    """Fit what the sidecar asks for on ``normal`` (rows of raw vectors, oldest first)."""
    sc = model.sidecar
    spec = sc.calibration
    if "normalisation" in spec.fit and sc.normalisation.method == "zscore":
        norm = Normaliser.fit(normal)
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
        channels=list(sc.channels),
        mean=None if norm.mean is None else [float(v) for v in norm.mean],
        std=None if norm.std is None else [float(v) for v in norm.std],
        threshold=threshold,
        samples=int(len(normal)),
        fitted_at=time.time(),
    )


def sidecar_normaliser(model: Model) -> Normaliser:
    n = model.sidecar.normalisation
    if n.method == "none" or n.mean is None or n.std is None:
        return Normaliser(None, None)
    return Normaliser(np.asarray(n.mean), np.asarray(n.std))


class Calibrator:
    """Collects ``samples`` normal readings, then fits and persists a Calibration; reloads it after a restart."""

    def __init__(self, model: Model, samples: int, state_dir: Path):
        self.model = model
        self.samples = samples
        self.state_dir = Path(state_dir)
        self._json = self.state_dir / "calibration.json"
        self._npz = self.state_dir / "calibration.npz"
        self._rows: list[np.ndarray] = []
        self.result: Calibration | None = None
        if samples > 0:
            self.result = self._load()

    @property
    def active(self) -> bool:
        """True while teach-in is collecting readings (no alert may be raised)."""
        return self.samples > 0 and self.result is None

    @property
    def progress(self) -> float:
        return 1.0 if not self.active else len(self._rows) / self.samples

    @property
    def collected(self) -> int:
        return len(self._rows)

    def add(self, values: np.ndarray) -> Calibration | None:
        """Take one normal vector; returns the Calibration when this one completed teach-in."""
        if not self.active:
            return None
        self._rows.append(np.asarray(values, dtype=np.float64))
        if len(self._rows) < self.samples:
            return None
        normal = np.vstack(self._rows)
        self._rows = []
        self.result = fit(self.model, normal)
        self._save(normal)
        return self.result

    def reset(self) -> None:
        """Start teach-in again (``edge-agent calibrate --reset``, the calibrate command)."""
        self._rows = []
        self.result = None
        for p in (self._json, self._npz):
            p.unlink(missing_ok=True)

    def _save(self, normal: np.ndarray) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, normal=normal, channels=np.asarray(self.model.sidecar.channels))
            atomic_write(self._npz, buf.getvalue())
            assert self.result is not None
            self.result.write(self._json)
        except OSError as e:
            log.warning("could not persist calibration in %s (%s): teach-in repeats after a restart", self.state_dir, e)

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
        cal = fit(self.model, normal)
        cal.write(self._json)
        log.info("calibrated model %s from %d stored normal readings", self.model.name, len(normal))
        return cal
