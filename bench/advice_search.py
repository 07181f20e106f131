"""Advice cost: ``Model.invoke_batch`` per sample vs the single-window ``Model.invoke`` loop, and one whole
advice search (``agent.advice.search``) on the bundled machine-failure model.

Run from the repository root:
    nice -n 5 .venv/bin/python bench/advice_search.py [--repeat 300] [--json out.json]

Both runtimes when installed. The batch row: N = 512 normalised feature vectors scored by one ``invoke_batch``
(quantise, one resized invoke, dequantise) against the same N through ``invoke`` one by one on the same model in
the same run (the baseline); the ratio is batch / single per sample. The search row: the advice for a cycle with a
heat-dissipation failure (one lever suffices: ~280 candidates in one batch) and for one with two modes (two levers:
~1,400 candidates, coarse grid then refined), median over ``--repeat`` searches, against the time of the same
number of single invokes. Goal from the issue: a few hundred candidates in about a millisecond.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from agent.advice import search  # noqa: E402
from agent.bundled import bundled_dir  # noqa: E402
from agent.calibrate import sidecar_normaliser  # noqa: E402
from agent.infer import Model, Scorer  # noqa: E402
from bench._common import print_rows, result, runtimes, write_json  # noqa: E402

MODEL = bundled_dir() / "machine-failure.tflite"
N = 512
CYCLES = {  # Type_L, Type_M, Type_H, air, process, rpm, torque, wear
    "one lever (HDF)": np.array([[1, 0, 0, 302.0, 310.5, 1350, 45.0, 100]]),
    "two levers (HDF+OSF)": np.array([[1, 0, 0, 302.0, 310.5, 1300, 62.0, 200]]),
}


def median_s(fn: Any, repeat: int) -> float:
    for _ in range(max(3, repeat // 10)):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(repeat: int = 300) -> list[dict[str, Any]]:
    out = []
    for rt in runtimes():
        m = Model(MODEL, runtime=rt)
        xs = np.random.default_rng(0).normal(size=(N, int(np.prod(m.sidecar.input.shape))))
        if not m.batched:
            raise RuntimeError(f"{rt}: invoke_batch fell back to row by row")
        assert np.array_equal(m.invoke_batch(xs), np.stack([m.invoke(x) for x in xs]))
        batch = median_s(lambda: m.invoke_batch(xs), repeat) / N
        single = median_s(lambda: [m.invoke(x) for x in xs], max(10, repeat // 10)) / N
        ratio = batch / single
        out.append(result(f"batch invoke ({rt} {m.runtime_version})", round(batch * 1e6, 3), "µs/sample",
                          round(single * 1e6, 3), "µs single invoke", round(ratio, 3), "< 1 (cheaper)", ratio < 1,
                          batch_rows=N))
        scorer = Scorer(m, sidecar_normaliser(m))
        spec, thr = m.sidecar.advice, m.sidecar.threshold
        for label, cycle in CYCLES.items():
            res = search(scorer, cycle, spec, thr, 1.0)
            assert res.found, label
            t = median_s(lambda: search(scorer, cycle, spec, thr, 1.0), repeat)
            base = single * res.candidates
            out.append(result(f"advice search, {label} ({rt})", round(t * 1e3, 3), "ms/search", round(base * 1e3, 3),
                              f"ms {res.candidates} invokes", round(t / base, 3), "~1 ms for ~300", None,
                              candidates=res.candidates))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = run(args.repeat)
    print_rows(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
