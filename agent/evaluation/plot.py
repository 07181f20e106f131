"""The per-file plot of ``edge-agent evaluate`` (matplotlib is optional: ``pip install matplotlib``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agent.evaluation.runner import FileRun
from agent.evaluation.scoring import label_segments

MATPLOTLIB_HINT = "plots need matplotlib: pip install matplotlib"


def plot_name(rel: str) -> str:
    """``valve1/3.csv`` → ``valve1_3.png``."""
    stem = rel[:-4] if rel.lower().endswith(".csv") else rel
    return re.sub(r"[\\/]+", "_", stem) + ".png"



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
