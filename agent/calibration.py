"""What teach-in fits: the :class:`Calibration` record (``STATE_DIR/calibration.json``) and its strict parser,
:func:`fit` (normalisation, threshold, or the generic detector's parameters, after the check of the two halves
of the teach-in) and the scorer a calibration gives. No state, no files but the record's own atomic write; the
collecting and the store of the readings are agent/calibrate.py's :class:`Calibrator`."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from agent import season
from agent.derive import Deriver
from agent.files import atomic_write
from agent.contamination import contamination
from agent.generic import GenericModel, GenericScorer
from agent.infer import Model, Scorer
from agent.window import Normaliser, Windower

log = logging.getLogger("agent.calibrate")  # the teach-in's log lines keep one logger name (evaluate quiets it)


# What teach-in fits: a TFLite model or a generic detector (``fit`` and ``make_scorer`` treat every model that is not
# a GenericModel as a TFLite one).
Detector: TypeAlias = Model | GenericModel


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
    # a generic detector's gathered channels: the sensors that fill each (agent.gather); None when not gathered (or
    # a file of before it was kept: a reading of any sensor then fills a channel named like its value)
    sources: dict[str, list[str]] | None = None

    def to_json(self) -> dict[str, Any]:
        out = self.__dict__.copy()
        if out["sources"] is None:
            del out["sources"]  # the file as before
        return out

    def alert_levels(self, threshold: float | None = None) -> dict[str, dict[str, float]] | None:
        """The generic detector's learnt normal in each channel's own units: the level taught (``level``), the scale,
        and the window means that alert at ``threshold`` (default: the calibrated one) — before the level follows
        any slow drift, and around the daily profile where the teach-in found one. None for other models."""
        p = self.params or {}
        thr = threshold if threshold is not None else self.threshold
        if "baseline" not in p or "scale" not in p or thr is None:
            return None
        return {ch: {"level": float(b), "scale": float(sc), "alerts_below": float(b - thr * sc),
                     "alerts_above": float(b + thr * sc)}
                for ch, b, sc in zip(self.channels, p["baseline"], p["scale"])}

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
    sea = (cal.params or {}).get("season")
    if isinstance(sea, dict) and "timezone" in sea:  # a zone this gateway's time zone database lacks
        if not isinstance(sea["timezone"], str):
            raise ValueError("the daily profile's timezone must be text")
        season.zone(sea["timezone"])  # ValueError naming it
    if cal.warning is not None and not isinstance(cal.warning, str):
        raise ValueError("warning must be text")
    if not isinstance(cal.folded, list) or not all(isinstance(a, str) for a in cal.folded):
        raise ValueError("folded must be a list of alert ids")
    if cal.sources is not None and not valid_sources(cal.sources):
        raise ValueError("sources must map channels to lists of sensor ids")
    return cal


def valid_sources(sources: Any) -> bool:
    """Whether ``sources`` is a gathered channel -> sensor ids map, as stored."""
    return isinstance(sources, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v) for k, v in sources.items())


def _finite(v: Any) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def fit(model: Detector, normal: np.ndarray, folded: list[str] | None = None,
        ts: np.ndarray | None = None, clock: str = "UTC") -> Calibration:
    """Fit what the model asks for on ``normal`` (rows of raw vectors, oldest first; ``ts``: their data times, when
    known, for the generic detector's daily profile, whose days are those of the time zone ``clock``)."""
    channels = list(model.sidecar.channels)
    warning = None
    if isinstance(model, GenericModel):
        r = model.fit(normal, check=not folded, ts=ts, clock=clock)  # checks the halves itself (with its own window)
        return Calibration(
            model_sha256=model.sha256, channels=channels, mean=r["baseline"], std=r["scale"],
            threshold=float(r["threshold"]), samples=int(len(normal)), fitted_at=time.time(), params=r,
            warning=r.get("warning"), folded=list(folded or []),
        )
    sc = model.sidecar  # a TFLite model's
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


def daily_channels(cal: Calibration | None, channels: list[str]) -> tuple[str, ...]:
    """The channels ``cal`` holds a daily profile for (the generic detector's, agent/season.py); () for none."""
    sea = (cal.params or {}).get("season") if cal is not None else None
    if not isinstance(sea, dict) or not isinstance(sea.get("profile"), list):
        return ()
    return tuple(c for c, col in zip(channels, zip(*sea["profile"])) if any(col))


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
    return Scorer(model, sidecar_normaliser(model))
