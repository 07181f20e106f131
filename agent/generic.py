"""The generic detector: learns normal on site for any channels, numpy only (no network, no TensorFlow).

``EDGE_AGENT_MODEL__PATH=generic`` (the bundled ``models/generic.json``) or a copy of that JSON file with other
settings. Its channels come from the source (CSV header, JSON keys, the configured list) unless the spec names
them. Method (models/README.md, "generic", has the numbers and the ablation):

* **level** — each channel's mean over the last ``window.length`` readings, against a per-channel baseline, in
  units of a per-channel scale, so one threshold fits channels of any unit and noise;
* **scale learned at teach-in** — the larger of the spread of those means during teach-in and ``tolerance`` x
  their range there: a channel that wanders during teach-in (a vibration level, a temperature) is given room to
  wander, a steady one (a flow) stays sensitive;
* **slow drift versus a real change** — the baseline follows the level, but each window it moves at most
  ``adapt x clip`` scales towards it: a drift slower than that is followed and never alerts, a step is not
  absorbed for a long time (``clip/adapt`` windows per scale of step) and alerts;
* **a daily profile** — with a teach-in of three days or more, each channel's shape over the clock day is taken
  out first where it holds from day to day (agent/season.py);
* the score is the largest channel's deviation (in scales, a z-score an engineer can read), the top channels are
  the shares of the squared deviations; the decision (k-of-n, hysteresis, "receded" clear) is the alert machine's.

Runs on the pipeline thread; the per-sensor baselines are the only state that changes while scoring.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import glitch, season
from agent.model_spec import CalibrationSpec, DecisionSpec, ModelError, WindowSpec
from agent.records import Contributions
from agent.window import Normaliser

log = logging.getLogger(__name__)



class GenericParams(BaseModel):
    """The detector's own knobs (``detector`` in the JSON spec)."""

    model_config = ConfigDict(extra="forbid")
    tolerance: float = Field(0.5, ge=0, le=10, description="Scale floor as a fraction of the teach-in range of the window means.")
    adapt: float = Field(1 / 600, ge=0, lt=1, description="Baseline step per window, as a fraction of the clipped deviation.")
    clip: float = Field(3.0, gt=0, le=100, description="Deviation (in scales) at which the baseline step is clipped.")
    threshold_factor: float = Field(1.0, gt=0, le=100, description="Threshold = max(threshold, factor x the largest teach-in score).")
    cross_channel: float = Field(0.0, ge=0, le=1000, description="Relations between channels (PCA residual, SPE): it reaches the threshold at this many times its largest teach-in value; 0 = off.")
    season: float = Field(86_400.0, ge=0, le=31_622_400, description="Period (s) of the daily profile taken out before scoring when the teach-in spans three of them and it holds from one to the next (agent/season.py); 0 = off.")


class GenericSpec(BaseModel):
    """The JSON spec of a generic detector (schema 1, ``kind: generic``)."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal[1] = Field(alias="schema")
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    kind: Literal["generic"]
    channels: list[str] = Field(default_factory=list)  # empty: from the source
    window: WindowSpec
    threshold: float = Field(gt=0, allow_inf_nan=False)
    decision: DecisionSpec = Field(default_factory=DecisionSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    detector: GenericParams = Field(default_factory=GenericParams)
    valid_ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


def rolling_means(rows: np.ndarray, length: int) -> np.ndarray:
    """Means of every ``length`` consecutive rows (oldest first); empty when there are fewer rows."""
    if len(rows) < length:
        return np.empty((0, rows.shape[1]))
    c = np.cumsum(np.vstack([np.zeros((1, rows.shape[1])), rows]), axis=0)
    return (c[length:] - c[:-length]) / length


class GenericModel:
    """A generic detector spec, bound to its channels; quacks like :class:`agent.infer.Model` for the pipeline."""

    runtime = "numpy"
    runtime_version = np.__version__

    def __init__(self, path: Path, spec: GenericSpec, sha256: str):
        self.path = Path(path)
        self.sidecar = spec
        self.sha256 = sha256

    @classmethod
    def load(cls, path: Path) -> "GenericModel":
        """Read and validate a spec; ModelError with every reason otherwise."""
        path = Path(path)
        try:
            content = path.read_bytes()
            raw = json.loads(content)
        except OSError as e:
            raise ModelError(f"{path}: cannot read ({e.strerror})") from e
        except ValueError as e:
            raise ModelError(f"{path}: not readable JSON ({e})") from e
        try:
            spec = GenericSpec.model_validate(raw)
        except ValidationError as e:
            reasons = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg']}" for err in e.errors())
            raise ModelError(f"{path}: {reasons}") from e
        if spec.calibration.samples and spec.calibration.samples < 2 * spec.window.length + spec.decision.n:
            raise ModelError(f"{path}: calibration.samples must cover at least 2 x window.length + decision.n readings")
        return cls(path, spec, hashlib.sha256(content).hexdigest())

    @property
    def name(self) -> str:
        return self.sidecar.name

    @property
    def version(self) -> str:
        return self.sidecar.version

    @property
    def needs_channels(self) -> bool:
        """True until the channels are known (from the spec, the source, a stored teach-in or the first reading)."""
        return not self.sidecar.channels

    def with_channels(self, channels: list[str]) -> "GenericModel":
        """The same detector bound to ``channels`` (same sha256: a calibration names its channels itself)."""
        spec = self.sidecar.model_copy(update={"channels": list(channels)})
        return GenericModel(self.path, spec, self.sha256)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def tensor_details(self) -> dict[str, Any]:
        return {}

    # -- teach-in ---------------------------------------------------------------------------------------------

    def fit(self, normal: np.ndarray, check: bool = True, ts: np.ndarray | None = None,
            clock: str = season.UTC) -> dict[str, Any]:
        """Fit baseline, scale and threshold on ``normal`` (rows of raw vectors, oldest first): the calibration's
        ``params`` with ``threshold`` and, when the two halves of the teach-in disagree (``check``), ``warning``.
        With the readings' times ``ts`` and a teach-in of several days, also the daily profile (``season``), which
        is taken out of the readings before everything else is fitted; its days are those of ``clock`` (a time
        zone's name: the machine's local time, across daylight-saving changes)."""
        normal = np.asarray(normal, dtype=np.float64)
        spec = self.sidecar
        profile = None
        if ts is not None and spec.detector.season > 0:
            ts = np.asarray(ts, dtype=np.float64).reshape(-1)
            if len(ts) == len(normal) and np.isfinite(ts).all():  # every reading placed in the day, or no profile
                ts = season.local(ts, season.zone(clock))
                profile = season.fit_profile(normal, ts, spec.detector.season)
            if profile is not None:
                normal = normal - season.fine(profile)[season.index(ts, spec.detector.season)]
        from agent.contamination import contamination  # it fits with this module's _fit: imported when used

        found = contamination(normal, spec.channels, spec.detector, spec.window.length, spec.threshold) if check else None
        out: dict[str, Any] = {}
        notes: list[str | None] = []
        if found is not None:
            notes.append(found[0])
            keep = found[1]
            if keep is not None:  # fit on the half that is consistent with itself
                normal = normal[keep[0]:keep[1]]
                out["fitted_on"] = list(keep)
        names = list(spec.channels)  # what the readings fitted hold (the consistent half, when only it is fitted)
        notes.append(glitch.check(normal, names, lambda rows: np.asarray(_fit(rows, spec.window.length, spec.detector,
                                                                              spec.threshold)["scale"])))
        notes.append(glitch.constant(normal, names))
        if any(notes):
            out["warning"] = "; ".join(n for n in notes if n)
        out.update(_fit(normal, spec.window.length, spec.detector, spec.threshold))
        if profile is not None:
            out["season"] = {"period_s": spec.detector.season, "profile": np.round(profile, 12).tolist()}
            if clock != season.UTC:
                out["season"]["timezone"] = clock
        return out

    def scorer(self, params: dict[str, Any] | None) -> "GenericScorer":
        if params is None:
            raise ModelError(f"{self.name}: the generic detector needs a teach-in (calibration.samples > 0)")
        return GenericScorer(self, params)


def _fit(normal: np.ndarray, length: int, p: GenericParams, floor: float) -> dict[str, Any]:
    """Baseline, scale and threshold from teach-in readings.

    The window means are followed through the teach-in by the same drifting baseline the scorer uses, so that the
    scale measures how far the level strays from a baseline that follows it (a long teach-in over a season must not
    widen the scale by the season's range), and the baseline starts from where the teach-in ended.
    """
    if len(normal) < length + 1:
        raise ValueError(f"teach-in needs at least {length + 1} readings")
    # A channel of huge values (a glitch of 1e300 from a bad decode, or such units) is fitted in a power of two of
    # them, so that no square overflows to inf (the scorer refused the fit and the pipeline thread died); a power
    # of two scales exactly, and every channel under 1e100 is fitted in its own units, bit for bit as before.
    big = np.abs(normal).max(axis=0)
    unit = np.where(big > 1e100, np.exp2(np.frexp(big)[1].astype(np.float64)), 1.0)
    if (unit != 1.0).any():
        normal = normal / unit
    m = rolling_means(normal, length)
    noise = normal.std(axis=0) / np.sqrt(length)
    spread = np.maximum(m.std(axis=0), noise)
    # the floor of a scale: a millionth of the level, or of 1 for a channel that did not move at all (a constant
    # channel: any change counts); a channel that moves less than 1e-6 near zero (metres, m3/s, amperes of leakage)
    # keeps its own spread, as it would in other units
    tiny = 1e-6 * np.maximum(np.where(spread > 0, 0.0, 1.0 / unit), np.abs(np.median(m, axis=0)))
    rough = np.maximum(spread, tiny)
    b = np.median(m[: max(2, min(len(m), 10 * length))], axis=0)
    resid = np.empty_like(m)
    limit = p.clip * rough
    for i, row in enumerate(m):  # the scorer's baseline, run over the teach-in
        d = row - b
        resid[i] = d
        b = b + p.adapt * np.clip(d, -limit, limit)
    base = b
    scale = np.maximum(np.sqrt(np.mean(resid * resid, axis=0)), noise)
    scale = np.maximum(scale, p.tolerance * (resid.max(axis=0) - resid.min(axis=0)))
    scale = np.maximum(scale, tiny)  # a constant channel: any change counts
    z = resid / scale
    peak = float(np.max(np.abs(z)))
    out: dict[str, Any] = {"baseline": (base * unit).tolist(), "scale": (scale * unit).tolist(), "teach_in_peak": peak}
    if p.cross_channel > 0 and m.shape[1] >= 3:
        centre = z.mean(axis=0)
        _, sv, vt = np.linalg.svd(z - centre, full_matrices=False)
        share = np.cumsum(sv ** 2) / max(float(np.sum(sv ** 2)), 1e-300)
        k = min(int(np.searchsorted(share, 0.9)) + 1, m.shape[1] - 1)  # components holding 90 % of the variance
        basis = vt[:k].T
        resid = (z - centre) - ((z - centre) @ basis) @ basis.T
        spe_max = max(float(np.max(np.sum(resid * resid, axis=1))), 1e-12)
        out.update(pca_centre=centre.tolist(), pca_basis=basis.tolist(), spe_max=spe_max)
    out["threshold"] = max(floor, peak * p.threshold_factor)
    return out


class GenericScorer:
    """Scores windows against per-sensor baselines that follow slow drift. Not thread-safe (pipeline thread)."""

    def __init__(self, model: GenericModel, params: dict[str, Any]):
        self.model = model
        self._channels = list(model.sidecar.channels)
        self._base = np.asarray(params["baseline"], dtype=np.float64)
        self._scale = np.asarray(params["scale"], dtype=np.float64)
        if self._base.shape != (len(self._channels),) or self._scale.shape != self._base.shape:
            raise ModelError(f"{model.name}: calibration has {self._base.size} channels, the detector {len(self._channels)}")
        if not (np.isfinite(self._base).all() and np.isfinite(self._scale).all() and (self._scale > 0).all()):
            raise ModelError(f"{model.name}: calibration holds non-finite or non-positive values")
        p = model.sidecar.detector
        self._adapt, self._limit = p.adapt, p.clip * self._scale
        self._neg_limit = -self._limit
        self._basis = None
        if p.cross_channel > 0 and "pca_basis" in params:
            self._centre = np.asarray(params["pca_centre"], dtype=np.float64)
            self._basis = np.asarray(params["pca_basis"], dtype=np.float64).reshape(len(self._channels), -1)
            # SPE reaches the threshold at cross_channel x its teach-in maximum: score = threshold x spe / that
            self._spe_unit = float(params["threshold"]) / (p.cross_channel * float(params["spe_max"]))
        self._season: np.ndarray | None = None  # the daily profile, one row per minute (agent/season.py)
        self._tz: Any = None  # the clock of its days: None = UTC, else a ZoneInfo (season.local)
        self._period = 0.0
        sea = params.get("season")
        if isinstance(sea, dict):
            table = np.asarray(sea.get("profile", []), dtype=np.float64)
            period = sea.get("period_s")
            if (table.shape != (season.BINS, len(self._channels)) or not np.isfinite(table).all()
                    or not isinstance(period, (int, float)) or not 0 < period < float("inf")):
                raise ModelError(f"{model.name}: calibration's daily profile does not fit the detector's channels")
            try:
                self._tz = season.zone(str(sea.get("timezone", season.UTC)))
            except ValueError as e:
                raise ModelError(f"{model.name}: calibration's daily profile: {e}") from None
            self._season, self._period = season.fine(table), float(period)
            self._cum = season.cumulative(self._season)
        self.timed = self._season is not None  # the pipeline passes each window's time
        self._baselines: dict[str, np.ndarray] = {}
        self.normaliser = Normaliser(self._base, self._scale)  # for the summaries' drift report

    def score(self, window_raw: np.ndarray, sensor: str = "", start: float | None = None,
              end: float | None = None) -> tuple[float, Contributions, float]:
        """(largest channel deviation in scales, per-channel shares, latency); moves the sensor's baseline.
        ``start``, ``end``: the window's first and last reading's data time, for the daily profile (when the
        teach-in found one)."""
        t0 = time.perf_counter()
        b = self._baselines.get(sensor)
        if b is None:
            b = self._baselines[sensor] = self._base.copy()
        d = np.add.reduce(window_raw, axis=0)  # the window mean, as ``mean(axis=0)`` computes it (same bits) ...
        d /= len(window_raw)
        if self._season is not None and start is not None and end is not None:  # ... less the time of day's share ...
            d -= season.share(self._season, self._cum, np.array([start]), np.array([end]), self._period, self._tz)[0]
        d -= b  # ... minus the baseline
        z = d / self._scale
        score = float(np.abs(z).max())
        shares = z * z
        if self._basis is not None:
            c = z - self._centre
            r = c - (c @ self._basis) @ self._basis.T
            cross = float(r @ r) * self._spe_unit
            if cross > score:
                score, shares = cross, r * r
        np.maximum(d, self._neg_limit, out=d)  # np.clip(d, -limit, limit), without its wrapper's cost
        np.minimum(d, self._limit, out=d)
        d *= self._adapt
        b += d
        return score, Contributions(self._channels, shares), time.perf_counter() - t0

    def score_windows(self, windows_raw: np.ndarray, sensor: str = "", starts: np.ndarray | None = None,
                      ends: np.ndarray | None = None) -> tuple[np.ndarray, Callable[[int], Contributions]]:
        """``score`` of each of N raw windows in turn (the baseline moves after each): (the scores, the
        contributions of window i when asked). The same numbers as ``score``, the window means in one call;
        ``starts``, ``ends``: the windows' first and last data times."""
        b = self._baselines.get(sensor)
        if b is None:
            b = self._baselines[sensor] = self._base.copy()
        # summed as ``score`` sums one window (np.add.reduce keeps numpy's order of a window's rows, pairwise where
        # they are contiguous: one channel), so that blocks give the same bits
        means = np.add.reduce(windows_raw, axis=1)
        means /= windows_raw.shape[1]
        if self._season is not None and starts is not None and ends is not None:
            means -= season.share(self._season, self._cum, starts, ends, self._period, self._tz)
        n = len(means)
        dev = np.empty_like(means)  # each window's mean minus the baseline before it
        step = np.empty_like(b)
        limit, neg, adapt = self._limit, -self._limit, self._adapt
        for i in range(n):  # the baseline follows window after window: only the recurrence is a loop
            d = np.subtract(means[i], b, out=dev[i])
            np.maximum(d, neg, out=step)  # np.clip(d, -limit, limit), without its wrapper's cost
            np.minimum(step, limit, out=step)
            step *= adapt
            b += step
        z = dev / self._scale
        scores = np.abs(z).max(axis=1)
        shares = z * z
        if self._basis is not None:  # relations between channels, window by window as ``score`` does it
            for i in range(n):
                c = z[i] - self._centre
                r = c - (c @ self._basis) @ self._basis.T
                cross = float(r @ r) * self._spe_unit
                if cross > scores[i]:
                    scores[i], shares[i] = cross, r * r
        channels = self._channels
        return scores, lambda i: Contributions(channels, shares[i])

    def forget(self, sensor: str) -> None:
        self._baselines.pop(sensor, None)

    def adopt(self, previous: "GenericScorer") -> None:
        """Keep following the baselines ``previous`` followed (a refit after feedback must not forget the drift)."""
        if previous._base.shape == self._base.shape:
            self._baselines = {s: b.copy() for s, b in previous._baselines.items()}
