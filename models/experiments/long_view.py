"""Tried for issue 11, not built (models/README.md, "Another domain"): a second, longer level view beside the
generic detector's means of ``window.length`` readings. Patches the generic detector in this process only.

    .venv/bin/python models/experiments/long_view.py FACTOR[,MULT] DATA_DIR TEACH_IN [-v]
    .venv/bin/python models/experiments/long_view.py 1 ../shared/data/skab 400      # off: the shipped numbers
    .venv/bin/python models/experiments/long_view.py 6 ../shared/data/skab 400
    .venv/bin/python models/experiments/long_view.py 6,2 /tmp/nab-sb 2000

The long view: means of FACTOR x window.length readings, fitted at teach-in as the short one is (its own baseline
following drift, its own scale; the threshold is the larger teach-in peak of the two, floor 6). A window's score is
the larger of the two views; with MULT > 0 the long view counts only up to MULT x the short view's score (a
sustained shift the short view also sees). Prints all-files F1/FAR/MAR, faults alerted, false alerts (files with
more than one) and, for SKAB, the false alerts on anomaly-free.csv after a teach-in on its first TEACH_IN rows.
"""
from __future__ import annotations
import sys
from collections import deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import agent.generic as G  # noqa: E402
from agent.records import Contributions  # noqa: E402
from models.experiments.tally import tally  # noqa: E402

FACTOR, MULT = int(sys.argv[1].split(',')[0]), float((sys.argv[1].split(',') + ['0'])[1])
DATA, TEACH_IN = Path(sys.argv[2]), int(sys.argv[3])
_fit0, _init0, _score0 = G._fit, G.GenericScorer.__init__, G.GenericScorer.score

def fit(normal, length, p, floor):
    out = _fit0(normal, length, p, floor)
    if FACTOR > 1 and len(normal) > FACTOR * length + 1:
        lo = _fit0(normal, FACTOR * length, p, floor)
        out['long'] = {'baseline': lo['baseline'], 'scale': lo['scale'], 'peak': lo['teach_in_peak']}
        out['threshold'] = max(out['threshold'], lo['threshold'])
    return out

def init(self, model, params):
    _init0(self, model, params)
    lo = params.get('long')
    self._lw = FACTOR * model.sidecar.window.length if lo else 0
    if lo:
        self._lbase = np.asarray(lo['baseline'])
        self._lscale = np.asarray(lo['scale'])
        self._llimit = model.sidecar.detector.clip * self._lscale
    self._lstate = {}

def score(self, window_raw, sensor='', start=None, end=None):
    s, c, t = _score0(self, window_raw, sensor, start, end)
    if not self._lw:
        return s, c, t
    st = self._lstate.get(sensor)
    if st is None:
        st = self._lstate[sensor] = {'buf': deque(window_raw[:-1], maxlen=self._lw), 'b': self._lbase.copy()}
    st['buf'].append(window_raw[-1])
    if len(st['buf']) < self._lw:
        return s, c, t
    d = np.mean(st['buf'], axis=0) - st['b']
    z = d / self._lscale
    sl = float(np.abs(z).max())
    st['b'] += self._adapt * np.clip(d, -self._llimit, self._llimit)
    if MULT > 0:
        sl = min(sl, MULT * s)
    if sl > s:
        return sl, Contributions(self._channels, z * z), t
    return s, c, t

def score_windows(self, windows, sensor='', starts=None, ends=None):
    out = [score(self, w, sensor, None if starts is None else starts[i], None if ends is None else ends[i]) for i, w in enumerate(windows)]
    return np.array([o[0] for o in out]), (lambda i: out[i][1])

def main():
    G._fit = fit
    G.GenericScorer.__init__ = init
    G.GenericScorer.score = score
    G.GenericScorer.score_windows = score_windows
    def each(rel, m):
        print(f'  {rel}: {m.segments_alerted}/{len(m.segments)} false {m.false_alerts}')

    print(f'factor {FACTOR}: {tally(DATA, TEACH_IN, each if "-v" in sys.argv else None)}')

if __name__ == '__main__':
    main()
