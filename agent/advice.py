"""Parameter advice: when a classifier raises an alert, the smallest change within the engineer's bounds that the
same int8 model predicts to be safe, for a person to decide on. The agent writes to no device.

The sidecar's ``advice`` section (models/README.md) declares the adjustable channels (bounds and step) and the
maintenance actions (e.g. a tool change sets tool wear to 0). :func:`search` tries candidates from one lever
(an adjustable channel or an action) up to ``max_channels`` levers, in batched invokes of the model, and keeps
the passing candidate (probability ≤ threshold − margin) nearest to the current values in normalised units.
:class:`Advisor` adds the rate limit and turns a search into the ``advice`` message.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.parse import iso
from agent.records import AdviceEvent, Window

log = logging.getLogger(__name__)

MAX_GRID = 100_000  # values per adjustable channel: more is a typo in min/max/step
COMBO_BUDGET = 1024  # candidates per combination of levers before the grid is coarsened (then refined)
NOTE = "advisory only: for a person to decide; edge-agent writes to no device"


class AdjustableSpec(BaseModel):
    """A channel the engineer may change, within ``min``..``max`` in steps of ``step``."""

    model_config = ConfigDict(extra="forbid")
    channel: str = Field(min_length=1)
    min: float
    max: float
    step: float = Field(gt=0)


class ActionSpec(BaseModel):
    """A maintenance action: sets channels to fixed values (e.g. a tool change sets tool wear to 0)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    set: dict[str, float] = Field(min_length=1)


class AdviceSpec(BaseModel):
    """The sidecar's ``advice`` section."""

    model_config = ConfigDict(extra="forbid")
    adjustable: list[AdjustableSpec] = Field(default_factory=list)
    actions: list[ActionSpec] = Field(default_factory=list)
    margin: float = Field(0.1, ge=0, lt=1)
    clearance_z: float = Field(0.0, ge=0, le=10)
    max_channels: int = Field(2, ge=1, le=3)


def check_advice(channels: Sequence[str], spec: AdviceSpec) -> list[str]:
    """Every problem with ``spec`` for a model reading ``channels``; empty when it can be searched."""
    problems: list[str] = []
    known = set(channels)
    seen: set[str] = set()
    for a in spec.adjustable:
        if a.channel not in known:
            problems.append(f"advice: adjustable channel {a.channel!r} is not one of the model's channels")
        if a.channel in seen:
            problems.append(f"advice: adjustable channel {a.channel!r} given twice")
        seen.add(a.channel)
        if not all(math.isfinite(v) for v in (a.min, a.max, a.step)):
            problems.append(f"advice: {a.channel!r}: min, max and step must be finite numbers")
        elif a.min > a.max:
            problems.append(f"advice: {a.channel!r}: min {a.min:g} exceeds max {a.max:g}")
        elif (a.max - a.min) / a.step > MAX_GRID:
            problems.append(f"advice: {a.channel!r}: more than {MAX_GRID} steps between min and max")
    names: set[str] = set()
    for act in spec.actions:
        if act.name in names:
            problems.append(f"advice: action {act.name!r} given twice")
        names.add(act.name)
        for ch, v in act.set.items():
            if ch not in known:
                problems.append(f"advice: action {act.name!r} sets unknown channel {ch!r}")
            if not math.isfinite(v):
                problems.append(f"advice: action {act.name!r}: value for {ch!r} must be a finite number")
    return problems


def parse_adjustable(text: str) -> list[AdjustableSpec]:
    """``Rotational speed [rpm]:1200:2800:10,Torque [Nm]:10:70:0.5`` → specs; ValueError naming the bad item."""
    out: list[AdjustableSpec] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        parts = item.rsplit(":", 3)  # the channel name may hold colons
        if len(parts) != 4 or not parts[0].strip():
            raise ValueError(f"{item!r}: expected channel:min:max:step")
        try:
            lo, hi, step = (float(p) for p in parts[1:])
        except ValueError:
            raise ValueError(f"{item!r}: min, max and step must be numbers") from None
        if not all(math.isfinite(v) for v in (lo, hi, step)) or lo > hi or step <= 0:
            raise ValueError(f"{item!r}: need finite min <= max and step > 0")
        out.append(AdjustableSpec(channel=parts[0].strip(), min=lo, max=hi, step=step))
    return out


@dataclass(frozen=True)
class Lever:
    """One way to change the machine: an adjustable channel (many values) or an action (one set of values)."""

    name: str
    columns: tuple[int, ...]
    values: np.ndarray  # (n, len(columns)) candidate raw values, on the step grid
    step: float = 0.0  # adjustable only: the grid step (for refinement)
    action: bool = False


@dataclass(frozen=True)
class Advice:
    """The result of one search."""

    found: bool
    p_before: float
    p_after: float | None
    changes: dict[str, tuple[float, float]]  # channel -> (current, advised)
    actions: tuple[str, ...]
    distance_z: float | None
    candidates: int
    search_s: float
    closest: dict[str, Any] = field(default_factory=dict)  # no advice: the lowest probability seen, and where


def _levers(spec: AdviceSpec, channels: Sequence[str], current: np.ndarray) -> list[Lever]:
    idx = {c: i for i, c in enumerate(channels)}
    levers = []
    for a in spec.adjustable:
        i = idx[a.channel]
        n = int(math.floor((a.max - a.min) / a.step + 1e-9)) + 1
        grid = a.min + a.step * np.arange(n)
        grid = grid[np.abs(grid - current[i]) > 1e-9 * max(1.0, abs(current[i]))]  # no change is no candidate
        if len(grid):
            levers.append(Lever(a.channel, (i,), grid[:, None], a.step))
    for act in spec.actions:
        cols = tuple(idx[c] for c in act.set)
        vals = np.array([[act.set[c] for c in act.set]])
        if np.any(np.abs(vals[0] - current[list(cols)]) > 1e-9):
            levers.append(Lever(act.name, cols, vals, action=True))
    return levers


def _grid(levers: Sequence[Lever], strides: Sequence[int]) -> np.ndarray:
    """Cartesian product of the levers' values (every ``stride``-th), as (n, sum of columns)."""
    parts = [lv.values[::s] for lv, s in zip(levers, strides)]
    idx = np.array(list(itertools.product(*[range(len(p)) for p in parts])))
    return np.concatenate([p[idx[:, k]] for k, p in enumerate(parts)], axis=1)


def _strides(levers: Sequence[Lever]) -> list[int]:
    sizes = [len(lv.values) for lv in levers]
    total = float(np.prod(sizes))
    if total <= COMBO_BUDGET:
        return [1] * len(levers)
    shrink = (total / COMBO_BUDGET) ** (1.0 / len(levers))
    return [1 if lv.action else max(1, math.ceil(shrink)) for lv in levers]


class _Evaluator:
    """Scores candidate value sets for one window in batches, and measures their distance in normalised units."""

    def __init__(self, scorer: Any, window: np.ndarray, std: np.ndarray):
        self.scorer, self.window, self.std = scorer, window, std
        self.current = window[-1]
        self.count = 0

    def windows(self, cols: Sequence[int], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate windows (the advised setting held over the whole window) and their distances."""
        cand = np.repeat(self.window[None, :, :], len(values), axis=0)
        cand[:, :, list(cols)] = values[:, None, :]
        dist = np.sqrt((((values - self.current[list(cols)]) / self.std[list(cols)]) ** 2).sum(axis=1))
        return cand, dist

    def __call__(self, cols: Sequence[int], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cand, dist = self.windows(cols, values)
        return self.score(cand), dist

    def score(self, cand: np.ndarray) -> np.ndarray:
        self.count += len(cand)
        return self.scorer.scores(cand)


def search(scorer: Any, window: np.ndarray, spec: AdviceSpec, threshold: float, p_before: float) -> Advice:
    """The smallest change within bounds (fewest levers first, then nearest in normalised units) that the model
    scores at or under ``threshold - spec.margin``; ``found=False`` when there is none."""
    t0 = time.perf_counter()
    channels = scorer.model.sidecar.channels
    window = np.asarray(window, dtype=np.float64)
    norm_std = getattr(scorer.normaliser, "std", None)
    std = np.ones(len(channels)) if norm_std is None else np.asarray(norm_std[: len(channels)], dtype=np.float64)
    ev = _Evaluator(scorer, window, std)
    target = threshold - spec.margin
    levers = _levers(spec, channels, ev.current)
    lowest: tuple[float, tuple[Lever, ...], np.ndarray] | None = None
    for k in range(1, spec.max_channels + 1):
        # every combination of k levers in one batched scoring: the candidates of one level, at once
        combos, wins, dists = [], [], []
        for combo in itertools.combinations(levers, k):
            cols = [c for lv in combo for c in lv.columns]
            if len(set(cols)) != len(cols):
                continue  # two levers on one channel
            strides = _strides(combo)
            values = _grid(combo, strides)
            w, d = ev.windows(cols, values)
            start = sum(len(x) for x in wins)
            combos.append((combo, strides, values, start))
            wins.append(w)
            dists.append(d)
        if not combos:
            break
        p, d = ev.score(np.concatenate(wins)), np.concatenate(dists)
        i_low = int(np.argmin(p))
        combo_low = next(c for c in reversed(combos) if c[3] <= i_low)
        if lowest is None or p[i_low] < lowest[0]:
            lowest = (float(p[i_low]), combo_low[0], combo_low[2][i_low - combo_low[3]])
        ok = np.flatnonzero(p <= target)
        if len(ok):
            j = int(ok[np.lexsort((p[ok], d[ok]))[0]])
            combo, strides, values, start = next(c for c in reversed(combos) if c[3] <= j)
            vals, p1 = _refine(ev, combo, values[j - start], float(p[j]), strides, target)
            vals, p1 = _clear(ev, combo, vals, p1, target, spec.clearance_z)
            return _result(True, p_before, p1, combo, vals, ev, channels, t0)
    closest: dict[str, Any] = {}
    if lowest is not None:
        p_low, combo, vals = lowest
        res = _result(False, p_before, p_low, combo, vals, ev, channels, t0)
        closest = {"probability": p_low, "advised": {c: v[1] for c, v in res.changes.items()},
                   "actions": list(res.actions)}
    return Advice(False, p_before, None, {}, (), None, ev.count, time.perf_counter() - t0, closest)


def _refine(ev: _Evaluator, combo: Sequence[Lever], vals: np.ndarray, p1: float, strides: Sequence[int],
            target: float) -> tuple[np.ndarray, float]:
    """A coarsened grid found ``vals``: look around it at finer steps (down to the levers' own step)."""
    cols = [c for lv in combo for c in lv.columns]
    strides = list(strides)
    while any(s > 1 for s in strides):
        axes = []
        pos = 0
        new = []
        for lv, s in zip(combo, strides):
            width = len(lv.columns)
            if lv.action or s == 1:
                axes.append(vals[None, pos:pos + width])
                new.append(1)
            else:
                fine = max(1, math.ceil(s / 4))
                lo, hi = lv.values[0, 0], lv.values[-1, 0]
                span = math.ceil(s / fine)
                v = vals[pos] + lv.step * fine * np.arange(-span, span + 1)
                v = v[(v >= lo - 1e-9) & (v <= hi + 1e-9)]
                axes.append(v[:, None])
                new.append(fine)
            pos += width
        idx = np.array(list(itertools.product(*[range(len(a)) for a in axes])))
        cand = np.concatenate([a[idx[:, k]] for k, a in enumerate(axes)], axis=1)
        p, d = ev(cols, cand)
        ok = np.flatnonzero(p <= target)
        if len(ok):
            j = ok[np.lexsort((p[ok], d[ok]))[0]]
            vals, p1 = cand[j], float(p[j])
        strides = new
    return vals, p1


def _clear(ev: _Evaluator, combo: Sequence[Lever], vals: np.ndarray, p1: float, target: float,
           clearance_z: float) -> tuple[np.ndarray, float]:
    """Go ``clearance_z`` normalised units further in the same direction (on the grid, within bounds), when the
    model still agrees: a margin against a decision boundary learnt a little off the true one."""
    cols = [c for lv in combo for c in lv.columns]
    delta = (vals - ev.current[cols]) / ev.std[cols]
    d = float(np.sqrt((delta ** 2).sum()))
    if clearance_z <= 0 or d == 0:
        return vals, p1
    out = vals.copy()
    pos = 0
    for lv in combo:
        if not lv.action:
            i = lv.columns[0]
            want = ev.current[i] + delta[pos] * (d + clearance_z) / d * ev.std[i]
            grid = lv.values[:, 0]
            out[pos] = grid[int(np.argmin(np.abs(grid - want)))]
        pos += len(lv.columns)
    p, _ = ev(cols, out[None, :])
    return (out, float(p[0])) if p[0] <= target else (vals, p1)


def _result(found: bool, p_before: float, p1: float, combo: Sequence[Lever], vals: np.ndarray, ev: _Evaluator,
            channels: Sequence[str], t0: float) -> Advice:
    changes: dict[str, tuple[float, float]] = {}
    pos = 0
    for lv in combo:
        for c in lv.columns:
            changes[channels[c]] = (float(ev.current[c]), float(vals[pos]))
            pos += 1
    cols = [c for lv in combo for c in lv.columns]
    dist = float(np.sqrt((((vals - ev.current[cols]) / ev.std[cols]) ** 2).sum()))
    actions = tuple(lv.name for lv in combo if lv.action)
    return Advice(found, p_before, p1, changes, actions, dist, ev.count, time.perf_counter() - t0)


class Advisor:
    """Runs a search when a classifier raises an alert and makes the ``advice`` message; rate-limited in data time.

    ``adjustable`` (from ``EDGE_AGENT_ADVICE__ADJUSTABLE``) replaces the sidecar's adjustable channels when given.
    Runs on the pipeline thread.
    """

    def __init__(self, device_id: str, counters: Any, *, enabled: bool = True, rate_limit_per_hour: int = 30,
                 adjustable: Sequence[AdjustableSpec] | None = None):
        self.device_id = device_id
        self.counters = counters
        self.enabled = enabled
        self.rate_limit_per_hour = rate_limit_per_hour
        self.adjustable = list(adjustable) if adjustable else None
        self._sent: deque[float] = deque()

    def spec_for(self, sidecar: Any) -> AdviceSpec | None:
        """The advice spec in force for a model: the sidecar's, with the configured adjustable channels."""
        spec = getattr(sidecar, "advice", None)
        if self.adjustable is not None:
            spec = (spec or AdviceSpec()).model_copy(update={"adjustable": self.adjustable})
        return spec

    def check(self, sidecar: Any) -> list[str]:
        """Problems of the configured override against a model's channels (empty: fine)."""
        spec = self.spec_for(sidecar)
        return check_advice(sidecar.channels, spec) if spec is not None and self.adjustable is not None else []

    def advise(self, scorer: Any, window: Window, alert_id: str, score: float, threshold: float,
               asset: str = "") -> AdviceEvent | None:
        """The advice for a raised alert on ``window``; None when the model has no advice or the rate limit hit."""
        sc = scorer.model.sidecar
        spec = self.spec_for(sc)
        if not self.enabled or sc.kind != "classifier" or spec is None or not (spec.adjustable or spec.actions):
            return None
        if self.check(sc):
            return None  # refused at start (app.py); a swapped-in model with other channels gets no advice
        now = window.end_ts
        while self._sent and self._sent[0] <= now - 3600.0:
            self._sent.popleft()
        if self.rate_limit_per_hour and len(self._sent) >= self.rate_limit_per_hour:
            self.counters.inc("advice.suppressed")
            log.warning("advice for alert %s suppressed by the rate limit (%d per hour)", alert_id,
                        self.rate_limit_per_hour)
            return None
        self._sent.append(now)
        result = search(scorer, window.data, spec, threshold, score)
        self.counters.inc("advice.advised" if result.found else "advice.none")
        fields = advice_fields(result, spec, sc, window, threshold)
        return AdviceEvent(alert_id=alert_id, sensor=window.sensor, fields=fields, asset=asset)


def advice_fields(result: Advice, spec: AdviceSpec, sidecar: Any, window: Window, threshold: float) -> dict[str, Any]:
    """The body of the ``advice`` message (README: topics and payloads; agent.messages adds id, device and times)."""
    channels = sidecar.channels
    current = {c: float(v) for c, v in zip(channels, window.data[-1])}
    payload: dict[str, Any] = {
        "state": "advised" if result.found else "no_advice",
        "model": {"name": sidecar.name, "version": sidecar.version},
        "probability": result.p_before,
        "threshold": threshold,
        "target": round(threshold - spec.margin, 6),
        "advised_probability": result.p_after,
        "current": current,
        "advised": {c: new for c, (_, new) in result.changes.items()},
        "changes": [{"channel": c, "from": old, "to": new, "delta": round(new - old, 9)}
                    for c, (old, new) in result.changes.items()],
        "actions": list(result.actions),
        "distance": None if result.distance_z is None else round(result.distance_z, 4),
        "bounds": {a.channel: {"min": a.min, "max": a.max, "step": a.step} for a in spec.adjustable},
        "available_actions": [{"name": a.name, "set": a.set} for a in spec.actions],
        "candidates": result.candidates,
        "search_ms": round(result.search_s * 1000, 3),
        "window_end": iso(window.end_ts),
        "note": NOTE,
    }
    if not result.found:
        payload["reason"] = (f"no change of at most {spec.max_channels} of the adjustable channels and actions within "
                             f"bounds brings the probability to {threshold - spec.margin:.4g} or under")
        payload["closest"] = result.closest
    return payload


def explain(payload: Mapping[str, Any]) -> str:
    """The one log line of an advice."""
    head = (f"ADVICE sensor={payload['sensor']} alert={payload['alert_id']} "
            f"p={payload['probability']:.3g}")
    if payload["state"] != "advised":
        return f"{head}: no advice within bounds ({payload['candidates']} candidates, {payload['search_ms']:.2f} ms)"
    by_action = {ch for a in payload["available_actions"] if a["name"] in payload["actions"] for ch in a["set"]}
    parts = [f"{c['channel']} {c['from']:g}->{c['to']:g}" for c in payload["changes"] if c["channel"] not in by_action]
    parts += list(payload["actions"])
    return (f"{head}->{payload['advised_probability']:.3g} (threshold {payload['threshold']:.3g}): "
            f"{'; '.join(parts)} ({payload['candidates']} candidates, {payload['search_ms']:.2f} ms; advisory only)")
