"""SKAB's reference detectors and two trivial ones, scored by edge-agent's own scorer (``agent.evaluate``).

For each labelled recording (SKAB format) every method is fitted on the first 400 rows (SKAB protocol) and
predicts every row after them; the alert spans are the runs of predicted rows, scored point-wise and by event
with the same functions ``edge-agent evaluate`` uses (``score_file``: Confusion, segments, delays, false
alerts), per file, per fault family (``agent.families``) and pooled.

Methods (numpy only; our own code, written after reading github.com/waico/SKAB at commit b2c0d46):

* ``t2q``: Hotelling T² + Q (SPE) on PCA, as SKAB's ``notebooks/t2_with_q_SKAB.ipynb`` runs ``core/t2.py``.
* ``mset``: MSET, as SKAB's ``notebooks/MSET.ipynb`` runs ``core/MSET.py``.
* ``robust-z``: per channel, robust z-score of the trailing 30 s mean (median and MAD of the training rows'
  30 s means); a row is flagged when any channel's |z| exceeds ``--z-threshold`` (default 5, fixed before any
  result was seen; a sweep and a leave-one-family-out choice are reported beside it).
* ``all``: flag every row. ``none``: never flag.
* ``t2q-sorted`` (not run by default): T²+Q with the residual eigenvalues taken as the smallest ones, to show
  how much SKAB's unsorted ``eig`` order matters.

Run from the repository root (numpy is the only dependency besides the agent)::

    .venv/bin/python models/skab_baselines.py --data ../shared/data/skab [--out DIR] [--per-file]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the agent package is one level up
    sys.path.insert(0, str(ROOT))

from agent.counters import Counters  # noqa: E402
from agent.evaluate import LABEL_COLUMN, FileMetrics, Span, find_csvs, group_totals, score_file, totals  # noqa: E402
from agent.families import Grouping, group_table, load_families  # noqa: E402
from agent.sources.replay import read_recording  # noqa: E402

CHANNELS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS")
TRAIN_ROWS = 400
Z_THRESHOLD = 5.0  # fixed a priori (a robust 5-sigma rule); see --z-sweep for what other values give
Z_SWEEP = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0)
Z_WINDOW_S = 30.0


# ================================================================================================ data


@dataclass(frozen=True)
class Recording:
    rel: str
    ts: np.ndarray  # epoch s per row
    x: np.ndarray  # rows x channels
    labels: np.ndarray  # 1 = anomalous


def load(path: Path, rel: str, channels: Sequence[str] | None = CHANNELS) -> Recording:
    """A labelled recording read by the agent's replay reader (the same rows ``edge-agent evaluate`` sees);
    ``channels`` None: every column of the file but the labels (another machine's recording)."""
    rows = list(read_recording(path, Counters(), sensor="baselines"))
    if channels is None:
        channels = [c for c in (rows[0].values if rows else ()) if c not in (LABEL_COLUMN, "changepoint")]
    missing = [c for c in channels if rows and c not in rows[0].values]
    if missing:
        raise ValueError(f"{rel}: no column {', '.join(missing)}")
    x = np.array([[float(r.values[c]) for c in channels] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    labels = np.array([1 if r.values.get(LABEL_COLUMN) == 1.0 else 0 for r in rows], dtype=np.int8)
    return Recording(rel, np.array([r.ts for r in rows], dtype=np.float64), x, labels)


def spans_of(predicted: np.ndarray) -> list[Span]:
    """Runs of predicted rows as [start, end) spans: the alerts of a row-wise detector."""
    p = np.concatenate([[False], np.asarray(predicted, dtype=bool), [False]])
    edges = np.flatnonzero(p[1:] != p[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


# ================================================================================================ distributions


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (continued fraction, modified Lentz; Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, eps: float = 1e-15, tiny: float = 1e-300) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a} b={b} x={x}")


def f_cdf(x: float, d1: float, d2: float) -> float:
    """CDF of Fisher's F distribution with (d1, d2) degrees of freedom."""
    return 0.0 if x <= 0 else betainc(d1 / 2.0, d2 / 2.0, d1 * x / (d1 * x + d2))


def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def grid_quantile(cdf: Callable[[float], float], p: float, hi: float = 15.0, points: int = 10_000) -> float:
    """The largest point of ``linspace(0, hi, points)`` whose CDF is below ``p`` — SKAB's ``core/t2.py`` takes
    its critical values this way (``linspace[cdf(linspace) < p][-1]``); found by bisection (the CDF rises)."""
    grid = np.linspace(0.0, hi, points)
    lo, up = 0, points - 1  # cdf(grid[lo]) < p is kept true
    if cdf(float(grid[up])) < p:
        return float(grid[up])
    while up - lo > 1:
        mid = (lo + up) // 2
        if cdf(float(grid[mid])) < p:
            lo = mid
        else:
            up = mid
    return float(grid[lo])


# ================================================================================================ (a) T² + Q


class T2Q:
    """Hotelling T² on the principal components plus Q (SPE) on the residual, as SKAB's ``core/t2.py`` class
    ``T2(scaling=True, using_pca=True)`` with its defaults (explained variance 0.85, p 0.999) and the notebook's
    ``predict(window_size=5)``. Kept from SKAB on purpose, so the numbers are SKAB's method:

    * standard scaling (population std) of the training rows; constant training columns dropped;
    * PCA components: the fewest whose cumulative explained variance ratio exceeds 0.85 (sklearn's rule);
    * T² UCL = m(n−1)(n+1) / (n(n−m)) · F⁻¹(0.999; m, n−m), the quantile read off linspace(0, 15, 10000);
    * Q UCL: SKAB's formula, in which θ1, θ2, θ3 are the residual eigenvalue sum to the powers 1, 2, 3 (not the
      sums of the eigenvalues' powers of Jackson & Mudholkar), so h0 = 1/3 and Q UCL ≈ 11.2 × the sum; the
      residual eigenvalues are those after the first m in ``np.linalg.eig``'s (unsorted) order, as in SKAB;
    * Q is computed on the scaled row without subtracting the PCA mean (≈ 0 after scaling), T² with it;
    * both statistics are smoothed by a rolling median of 5 rows over the test rows only (the first 4 test rows
      are never flagged); a row is flagged when T² > UCL or Q > UCL.
    """

    def __init__(self, explained_variance: float = 0.85, p_value: float = 0.999, window: int = 5,
                 sorted_residual: bool = False):
        self.explained_variance, self.p_value, self.window = explained_variance, p_value, window
        self.sorted_residual = sorted_residual  # True: the residual eigenvalues really are the smallest ones

    def fit(self, x: np.ndarray) -> "T2Q":
        self.keep = ~(x == x[0]).all(axis=0)
        x = x[:, self.keep]
        self.mean, std = x.mean(axis=0), x.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        xs = (x - self.mean) / self.std
        n, p = xs.shape
        self.pca_mean = xs.mean(axis=0)
        _, sv, vt = np.linalg.svd(xs - self.pca_mean, full_matrices=False)
        var = sv ** 2 / (n - 1)
        m = int(np.searchsorted(np.cumsum(var / var.sum()), self.explained_variance, side="right") + 1)
        self.m = m = min(m, p)
        self.components = vt[:m]  # m x p
        if m == p:  # no residual space: T² on the scaled data, no Q (as SKAB)
            self.inv_cov = np.linalg.inv(np.cov(xs.T))
        else:
            self.inv_cov = np.linalg.inv(np.atleast_2d(np.cov((xs - self.pca_mean) @ self.components.T, rowvar=False)))
            self.residual = np.eye(p) - self.components.T @ self.components
        c = grid_quantile(lambda v: f_cdf(v, m, n - m), self.p_value)
        self.t2_ucl = m * (n - 1) * (n + 1) / (n * (n - m)) * c
        self.q_ucl = math.inf
        if m < p:
            w = np.linalg.eig(np.cov(xs.T))[0].real  # SKAB: LA.eig, in the order LAPACK returns them
            if self.sorted_residual:
                w = np.sort(w)[::-1]
            self.eigenvalues = w
            s = float(w[m:].sum())
            theta = [s ** i for i in (1, 2, 3)]  # SKAB's θ_i (see the class docstring)
            h0 = 1 - 2 * theta[0] * theta[2] / (3 * theta[1] ** 2)
            ca = grid_quantile(norm_cdf, self.p_value)
            self.q_ucl = theta[0] * (1 + ca * h0 * math.sqrt(2 * theta[1]) / theta[0]
                                     + theta[1] * h0 * (h0 - 1) / theta[0] ** 2) ** (1 / h0)
        return self

    def statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: T² and Q (Q all 0 without a residual space), before smoothing."""
        xs = (x[:, self.keep] - self.mean) / self.std
        if self.m == xs.shape[1]:
            d = xs
            return np.einsum("ij,jk,ik->i", d, self.inv_cov, d), np.zeros(len(xs))
        pc = (xs - self.pca_mean) @ self.components.T
        t2 = np.einsum("ij,jk,ik->i", pc, self.inv_cov, pc)
        q = np.einsum("ij,jk,ik->i", xs, self.residual, xs)
        return t2, q

    def predict(self, x: np.ndarray) -> np.ndarray:
        t2, q = self.statistics(x)
        t2m, qm = rolling_median(t2, self.window), rolling_median(q, self.window)
        with np.errstate(invalid="ignore"):
            return (t2m > self.t2_ucl) | (qm > self.q_ucl)


def rolling_median(v: np.ndarray, window: int) -> np.ndarray:
    """pandas' ``rolling(window).median()``: NaN for the first window-1 rows."""
    out = np.full(len(v), np.nan)
    if len(v) >= window:
        out[window - 1:] = np.median(np.lib.stride_tricks.sliding_window_view(v, window), axis=1)
    return out


# ================================================================================================ (b) MSET


def mset_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SKAB's MSET similarity s(x, y) = 1 − ‖x − y‖ / (‖x‖ + ‖y‖) between the rows of a and b (1 when equal)."""
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    norms = np.linalg.norm(a, axis=1)[:, None] + np.linalg.norm(b, axis=1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        k = 1.0 - dist / norms
    return np.where(dist == 0.0, 1.0, k)


class MSET:
    """MSET as SKAB's ``notebooks/MSET.ipynb`` runs ``core/MSET.py``: the training rows, standard-scaled
    (population std), are the memory D; a row x is estimated as D·W with W = (D⊗D)⁻¹(D⊗x) under the kernel
    above, then scaled back; the residual is ‖x − x̂‖ / ‖x̂‖ in raw units, averaged by the notebook's ``movmean``
    (a centred 60-row mean: rows i−30..i+29, so it looks 29 rows ahead — an on-line detector could not), and a
    row is flagged when it exceeds 0.01 (the notebook's UCL)."""

    def __init__(self, ucl: float = 0.01, window: int = 60):
        self.ucl, self.window = ucl, window

    def fit(self, x: np.ndarray) -> "MSET":
        self.mean, std = x.mean(axis=0), x.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        self.memory = (x - self.mean) / self.std
        self.dxd = mset_kernel(self.memory, self.memory)
        return self

    def estimate(self, x: np.ndarray) -> np.ndarray:
        w = np.linalg.solve(self.dxd, mset_kernel(self.memory, (x - self.mean) / self.std))
        return (w.T @ self.memory) * self.std + self.mean

    def residual(self, x: np.ndarray) -> np.ndarray:
        est = self.estimate(x)
        return np.linalg.norm(x - est, axis=1) / np.linalg.norm(est, axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return centred_mean(self.residual(x), self.window) > self.ucl


def centred_mean(v: np.ndarray, window: int) -> np.ndarray:
    """SKAB's ``movmean``: row i gets the mean of rows i + h − w .. i + h − 1 (h = ceil(w/2); for w = 60: i − 30 ..
    i + 29), clipped at the ends of the series."""
    half = math.ceil(window / 2)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(len(v))
    lo, hi = np.maximum(0, i + half - window), np.minimum(len(v), i + half)
    return (c[hi] - c[lo]) / (hi - lo)


# ================================================================================================ (c) robust z


def trailing_mean(ts: np.ndarray, x: np.ndarray, window_s: float) -> np.ndarray:
    """Per row, the mean of the rows in (t − window_s, t] of data time up to and including it (causal)."""
    envelope = np.maximum.accumulate(ts)
    lo = np.minimum(np.searchsorted(envelope, ts - window_s, side="right"), np.arange(len(ts)))
    c = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    hi = np.arange(1, len(ts) + 1)
    return (c[hi] - c[lo]) / (hi - lo)[:, None]


class RobustZ:
    """Per channel, z = (m − median) / (1.4826 · MAD) of the trailing 30 s mean m, with median and MAD over the
    training rows whose window is full (≥ 30 s of data before them); a row is flagged when any |z| > threshold.
    A MAD of 0 is floored like the agent floors a std: 1e-6 · max(1, |median|)."""

    def __init__(self, threshold: float = Z_THRESHOLD, window_s: float = Z_WINDOW_S):
        self.threshold, self.window_s = threshold, window_s

    def zmax(self, ts: np.ndarray, x: np.ndarray, train_rows: int) -> np.ndarray:
        """Per row, the largest |z| over the channels (training statistics from rows < train_rows)."""
        m = trailing_mean(ts, x, self.window_s)
        full = (ts[:train_rows] - ts[0]) >= self.window_s - 1.0
        ref = m[:train_rows][full] if full.any() else m[:train_rows]
        med = np.median(ref, axis=0)
        mad = 1.4826 * np.median(np.abs(ref - med), axis=0)
        scale = np.maximum(mad, 1e-6 * np.maximum(1.0, np.abs(med)))
        return np.abs((m - med) / scale).max(axis=1)

    def predict_rows(self, ts: np.ndarray, x: np.ndarray, train_rows: int) -> np.ndarray:
        return self.zmax(ts, x, train_rows) > self.threshold


# ================================================================================================ running


def predict(method: str, rec: Recording, train_rows: int = TRAIN_ROWS, z_threshold: float = Z_THRESHOLD,
            z_window_s: float = Z_WINDOW_S) -> np.ndarray:
    """Predicted rows of one method on one recording: fitted on rows < train_rows, never flags them."""
    pred = np.zeros(len(rec.ts), dtype=bool)
    train, test = rec.x[:train_rows], rec.x[train_rows:]
    if not len(test):
        return pred
    if method == "t2q":
        pred[train_rows:] = T2Q().fit(train).predict(test)
    elif method == "t2q-sorted":
        pred[train_rows:] = T2Q(sorted_residual=True).fit(train).predict(test)
    elif method == "mset":
        pred[train_rows:] = MSET().fit(train).predict(test)
    elif method == "robust-z":
        pred[train_rows:] = RobustZ(z_threshold, z_window_s).predict_rows(rec.ts, rec.x, train_rows)[train_rows:]
    elif method == "all":
        pred[train_rows:] = True
    elif method != "none":
        raise ValueError(f"unknown method {method!r}")
    return pred


METHODS = {
    "t2q": "SKAB T²+Q (PCA)",
    "mset": "SKAB MSET",
    "robust-z": "robust z of the trailing mean, |z| >",
    "all": "flag every row",
    "none": "never flag",
    "t2q-sorted": "T²+Q, residual = smallest eigenvalues",  # variant: SKAB sums eig's unsorted tail
}
DEFAULT_METHODS = ("t2q", "mset", "robust-z", "all", "none")


def score(rec: Recording, pred: np.ndarray, train_rows: int = TRAIN_ROWS) -> FileMetrics:
    """The agent's scorer on a row-wise prediction (alert spans = runs of predicted rows)."""
    return score_file(rec.labels, rec.ts, spans_of(pred), train_rows)


def pooled(results: Sequence[FileMetrics]) -> dict[str, Any]:
    t = totals(results)
    return {**t, "files": len(results), "false_alerts_per_file": t["false_alerts"] / len(results) if results else None}


def choose_lofo(zmax: dict[str, np.ndarray], recs: Sequence[Recording], groups: Sequence[str],
                thresholds: Sequence[float], train_rows: int = TRAIN_ROWS) -> tuple[list[FileMetrics], dict[str, float]]:
    """Leave one family out: for each family, the threshold with the best pooled F1 on the other families
    (ties: the higher threshold), applied to that family. Returns per-file metrics and the choice per family."""
    by_thr = {}
    for thr in thresholds:
        res = []
        for r in recs:
            p = np.zeros(len(r.ts), dtype=bool)
            p[train_rows:] = zmax[r.rel][train_rows:] > thr
            res.append(score(r, p, train_rows))
        by_thr[thr] = res
    out: list[FileMetrics | None] = [None] * len(recs)
    chosen = {}
    for fam in dict.fromkeys(groups):
        others = [i for i, g in enumerate(groups) if g != fam]
        best = max(thresholds, key=lambda t: ((totals([by_thr[t][i] for i in others])["f1"] or 0.0), t))
        chosen[fam] = best
        for i, g in enumerate(groups):
            if g == fam:
                out[i] = by_thr[best][i]
    return [m for m in out if m is not None], chosen


# ================================================================================================ report


SUMMARY_COLUMNS = ("method", "F1", "FAR%", "MAR%", "alerted", "delay_s", "false", "false/file")


def summary_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    def f(v: float | None, spec: str, scale: float = 1.0) -> str:
        return "-" if v is None else format(v * scale, spec)

    lines = [list(SUMMARY_COLUMNS)] + [[
        name, f(m["f1"], ".3f"), f(m["far"], ".1f", 100), f(m["mar"], ".1f", 100),
        f"{m['segments_alerted']}/{m['segments']}", f(m["median_delay_s"], ".1f"), str(m["false_alerts"]),
        f(m["false_alerts_per_file"], ".1f"),
    ] for name, m in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(SUMMARY_COLUMNS))]
    render = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    ]
    return "\n".join([render[0], "  ".join("-" * w for w in widths), *render[1:]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="labelled SKAB CSV or folder (unlabelled CSVs are skipped)")
    ap.add_argument("--families", default=None, help="family mapping (JSON/TOML glob = family); default: SKAB's")
    ap.add_argument("--train-rows", type=int, default=TRAIN_ROWS, help="rows fitted on per file (SKAB: 400)")
    ap.add_argument("--z-threshold", type=float, default=Z_THRESHOLD, help=f"robust-z threshold (default {Z_THRESHOLD:g})")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help="comma-separated, of " + ", ".join(METHODS) + " (default: " + ",".join(DEFAULT_METHODS) + ")")
    ap.add_argument("--per-file", action="store_true", help="also print a per-file table for each method")
    ap.add_argument("--channels", choices=("skab", "header"), default="skab",
                    help="skab: SKAB's 8 channels (default); header: every column of each file but the labels")
    ap.add_argument("--z-window-s", type=float, default=Z_WINDOW_S,
                    help=f"robust-z: the trailing mean's span of data time (default {Z_WINDOW_S:g} s: 30 readings at 1 Hz)")
    ap.add_argument("--out", default=None, metavar="FILE", help="write every number as JSON here")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not data.exists():
        print(f"skab_baselines: --data {data}: no such file or directory", file=sys.stderr)
        return 2
    grouping = Grouping("family", tuple(load_families(Path(args.families)))) if args.families else Grouping("family")
    base = data if data.is_dir() else data.parent
    recs: list[Recording] = []
    groups: list[str] = []
    for f in find_csvs(data):
        rel = f.relative_to(base).as_posix()
        with open(f, encoding="utf-8", errors="replace") as fh:
            if LABEL_COLUMN not in fh.readline():
                print(f"skipping {rel}: no '{LABEL_COLUMN}' column", file=sys.stderr)
                continue
        recs.append(load(f, rel, CHANNELS if args.channels == "skab" else None))
        groups.append(grouping.group(rel, f, lambda m: print(f"warning: {m}", file=sys.stderr)))
    if not recs:
        print(f"skab_baselines: no labelled CSV in {data}", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"skab_baselines: unknown method(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    tr = args.train_rows
    names = [r.rel for r in recs]
    report: dict[str, Any] = {"data": str(data), "train_rows": tr, "files": names, "families": groups, "methods": {}}
    summary: list[tuple[str, dict[str, Any]]] = []
    out_text = [f"{len(recs)} labelled file(s) in {data}; fitted on the first {tr} rows of each, rows >= {tr} scored; "
                "alerts = runs of predicted rows\n"]
    for method in methods:
        preds = [predict(method, r, tr, args.z_threshold, args.z_window_s) for r in recs]
        results = [score(r, p, tr) for r, p in zip(recs, preds)]
        label = METHODS.get(method, method) + (f" {args.z_threshold:g}" if method == "robust-z" else "")
        fam = group_totals(groups, results, names)
        tot = pooled(results)
        summary.append((label, tot))
        out_text.append(f"\n== {label}\n" + group_table(fam, tot))
        if args.per_file:
            per = group_totals(names, results, names)
            out_text.append(group_table(per, tot, "ALL FILES"))
        report["methods"][method] = {
            "label": label, "pooled": tot, "families": fam,
            "per_file": [{"file": r.rel, "family": g, "spans": spans_of(p), **_file_dict(m)}
                         for r, g, p, m in zip(recs, groups, preds, results)],
        }
    if "robust-z" in methods:
        zmax = {r.rel: RobustZ(window_s=args.z_window_s).zmax(r.ts, r.x, tr) for r in recs}
        sweep = []
        for thr in Z_SWEEP:
            res = []
            for r in recs:
                p = np.zeros(len(r.ts), dtype=bool)
                p[tr:] = zmax[r.rel][tr:] > thr
                res.append(score(r, p, tr))
            sweep.append((f"robust z > {thr:g} (all files, not a choice)", pooled(res)))
        lofo, chosen = choose_lofo(zmax, recs, groups, Z_SWEEP, tr)
        order = [i for fam in dict.fromkeys(groups) for i, g in enumerate(groups) if g == fam]
        lofo_names, lofo_groups = [names[i] for i in order], [groups[i] for i in order]
        fam = group_totals(lofo_groups, lofo, lofo_names)
        tot = pooled(lofo)
        summary.append(("robust z, threshold by leave-one-family-out", tot))
        out_text.append("\n== robust z, threshold chosen per held-out family on the others' pooled F1: "
                        + ", ".join(f"{k} {v:g}" for k, v in chosen.items()) + "\n" + group_table(fam, tot))
        out_text.append("\n== robust z threshold sweep (pooled over all files; picking the best is tuning on them)\n"
                        + summary_table(sweep))
        report["robust_z_sweep"] = [{"threshold": thr, **m} for thr, (_, m) in zip(Z_SWEEP, sweep)]
        report["robust_z_lofo"] = {"chosen": chosen, "pooled": tot, "families": fam}
    out_text.append("\n== all methods, pooled over every file\n" + summary_table(summary))
    sys.stdout.write("".join(out_text))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"written: {args.out}")
    return 0


def _file_dict(m: FileMetrics) -> dict[str, Any]:
    c = m.counts
    return {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn, "f1": c.f1, "far": c.far, "mar": c.mar,
            "segments": len(m.segments), "segments_alerted": m.segments_alerted, "median_delay_s": m.median_delay_s,
            "false_alerts": m.false_alerts, "alerts": m.alerts}


if __name__ == "__main__":
    sys.exit(main())
