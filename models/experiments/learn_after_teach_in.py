"""Tried for issue 11, not built (models/README.md, "Learning on after the teach-in"): the generic detector keeps
learning its scales from quiet windows after the teach-in. Patches ``GenericScorer`` in this process only.

    .venv/bin/python models/experiments/learn_after_teach_in.py ACCEPT,CAP,PERIOD,TOL [DATA_DIR] [TEACH_IN]
    .venv/bin/python models/experiments/learn_after_teach_in.py 0.33,2,3600,0.25      # SKAB + its long normal run
    .venv/bin/python models/experiments/learn_after_teach_in.py 0,1,0,0.25            # off: 1.0.0's numbers

A window whose score is under ACCEPT x the threshold, within the first PERIOD windows after the teach-in (0: off),
adds its deviations to the channel's scale fit (their RMS and TOL x their range, as the teach-in does); the scale
only grows, up to CAP x its teach-in value. Prints all-files F1/FAR/MAR, faults alerted, false alerts (files with
more than one) and, for SKAB, the false alerts on anomaly-free.csv after a teach-in on its first rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import agent.generic as G  # noqa: E402
from agent.records import Contributions  # noqa: E402
from models.experiments.tally import tally  # noqa: E402

ACCEPT, CAP, PERIOD, TOL = (float(a) for a in sys.argv[1].split(","))
DATA = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT.parent / "shared" / "data" / "skab"
TEACH_IN = int(sys.argv[3]) if len(sys.argv) > 3 else 400
_init = G.GenericScorer.__init__


def init(self, model, params):
    _init(self, model, params)
    self._thr = float(params["threshold"])
    self._scale0 = self._scale.copy()
    self._learn = {}


def score(self, window_raw, sensor=""):
    b = self._baselines.get(sensor)
    if b is None:
        b = self._baselines[sensor] = self._base.copy()
    st = self._learn.get(sensor)
    if st is None:
        zero = np.zeros_like(b)
        st = self._learn[sensor] = {"n": 0, "ss": zero.copy(), "lo": zero.copy(), "hi": zero.copy(),
                                    "scale": self._scale0.copy()}
    d = window_raw.mean(axis=0) - b
    z = d / st["scale"]
    s = float(np.abs(z).max())
    if PERIOD > 0 and st["n"] < PERIOD and s < ACCEPT * self._thr:
        st["n"] += 1
        st["ss"] += d * d
        st["lo"] = np.minimum(st["lo"], d)
        st["hi"] = np.maximum(st["hi"], d)
        if st["n"] >= 30:
            new = np.maximum(np.sqrt(st["ss"] / st["n"]), TOL * (st["hi"] - st["lo"]))
            st["scale"] = np.minimum(np.maximum(self._scale0, new), CAP * self._scale0)
    b += self._adapt * np.clip(d, -self._limit, self._limit)
    return s, Contributions(self._channels, z * z), 0.0


def score_windows(self, windows, sensor=""):
    out = [score(self, w, sensor) for w in windows]
    return np.array([o[0] for o in out]), (lambda i: out[i][1])


def main() -> None:
    G.GenericScorer.__init__ = init
    G.GenericScorer.score = score
    G.GenericScorer.score_windows = score_windows
    print(f"accept {ACCEPT} cap {CAP} period {PERIOD} tol {TOL}: {tally(DATA, TEACH_IN)}")

if __name__ == "__main__":
    main()
