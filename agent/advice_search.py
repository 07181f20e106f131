"""The advice search: candidates from one lever (an adjustable channel or an action) up to ``max_channels``
levers, scored in batched invokes of the same model, keeping the passing candidate (probability <= threshold -
margin) nearest to the current values in normalised units; a coarse grid is refined around what passed."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from agent.advice_spec import AdviceSpec

COMBO_BUDGET = 1024  # candidates per combination of levers before the grid is coarsened (then refined)


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
        combos: list[tuple[tuple[Lever, ...], list[int], np.ndarray, int]] = []  # (levers, strides, grid, first row)
        wins: list[np.ndarray] = []
        dists: list[np.ndarray] = []
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
