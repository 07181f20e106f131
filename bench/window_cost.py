"""Per-window cost of the pipeline (clean → window → features → score → decide) against the bare scoring of the
same model in the same run, for the bundled models and the generic detector, on both runtimes, by both paths:

* ``reading``: ``Pipeline.process`` reading by reading (a sensor at 1 reading/s, one reading per block);
* ``block``: ``Pipeline.process_block`` on blocks of 512 readings (what the pipeline thread takes from a busy
  queue: cleaned, windowed and scored at once, one batched invoke per block).

Run from the repository root:
    nice -n 5 .venv/bin/python bench/window_cost.py [--windows 20000] [--repeat 3] [--profile] [--json out.json]

Each model is driven by the daemon's own pipeline (``agent.assets.build_pipeline`` with default settings, evidence
store included) on a stream of normal readings: pump-anomaly and the generic detector on the bundled recording's
normal part played forward and backward in turn (teach-in first, not timed; a plain loop's seam raised an alert
at every pass with pump-anomaly 1.2.0, the cost of alerts, not of windows: ``bench/_data.normal_stream``),
machine-failure (no teach-in, window 1, advice on) on readings drawn around its sidecar's normal (the classifier
flags some of them: their alerts and advice are in its cost). The cost per window is the loop's wall time over the windows it made.
The baseline ("bare") is the model's own scoring of one window, in a loop on a fixed input: ``set_tensor`` +
``invoke`` + ``get_tensor`` on the same interpreter for a TFLite model, ``GenericScorer.score`` (window mean,
deviation, baseline step) for the generic detector (it has no interpreter; its "bare" is its numpy scoring).
Ratio = pipeline / bare, goal <= 10x. Both are the best of ``--repeat`` timed runs (3; the shared VM's other load
only ever adds time), the pipeline's on consecutive stretches of the stream. ``--profile`` adds a cProfile of each
block-path loop.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from agent.assets import build_pipeline  # noqa: E402
from agent.bundled import bundled_model  # noqa: E402
from agent.counters import Counters  # noqa: E402
from agent.detectors import open_model  # noqa: E402
from agent.evidence import EvidenceStore  # noqa: E402
from agent.infer import Model  # noqa: E402
from agent.records import Reading  # noqa: E402
from agent.settings import Settings  # noqa: E402
from bench._common import print_rows, result, runtimes, write_json  # noqa: E402
from bench._data import normal_stream  # noqa: E402

GOAL = 10.0
BLOCK = 512


def machine_failure_stream(n: int, seed: int = 0) -> list[dict[str, float]]:
    """Readings of a healthy milling machine around the sidecar's normal (type L, low tool wear)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append({"Type_L": 1.0, "Type_M": 0.0, "Type_H": 0.0,
                    "Air temperature [K]": float(300 + rng.normal(0, 1)),
                    "Process temperature [K]": float(310 + rng.normal(0, 0.8)),
                    "Rotational speed [rpm]": float(1540 + rng.normal(0, 60)),
                    "Torque [Nm]": float(40 + rng.normal(0, 4)),
                    "Tool wear [min]": float((i // 10) % 120)})
    return out


def bare_tflite(model: Model, n: int, repeat: int = 1) -> float:
    """µs per set_tensor + invoke + get_tensor on the model's own interpreter, a fixed realistic int8 input (the
    best of ``repeat`` loops)."""
    interp = model._interp  # noqa: SLF001 - the same interpreter the pipeline uses
    inp, out = model._in_idx, model._out_idx  # noqa: SLF001
    det = interp.get_input_details()[0]
    q = np.random.default_rng(0).integers(-20, 20, size=det["shape"], dtype=np.int8)
    set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
    for _ in range(1000):
        set_tensor(inp, q); invoke(); get_tensor(out)  # noqa: E702
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            set_tensor(inp, q)
            invoke()
            get_tensor(out)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def bare_generic(scorer: Any, window: np.ndarray, n: int, repeat: int = 1) -> float:
    """µs per ``GenericScorer.score`` of one window (its baseline keeps following, as in the pipeline; the best of
    ``repeat`` loops)."""
    score = scorer.score
    for _ in range(1000):
        score(window, "bare")
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            score(window, "bare")
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def _settings(state: Path) -> Settings:
    env_backup = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("EDGE_AGENT_")}
    try:
        return Settings(state_dir=state)
    finally:
        os.environ.update(env_backup)


def pipeline_cost(model: Any, rows: list[dict[str, float]], windows: int, path: str,
                  profile: bool = False, repeat: int = 1) -> tuple[float, dict[str, Any], Any, str | None]:
    """µs per window of ``path`` (reading | block) over ``windows`` readings after teach-in and a warm-up, the best
    of ``repeat`` consecutive stretches of ``windows`` readings; the run's counts, the pipeline, and the profile
    text if asked (of the first stretch)."""
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp:
        state = Path(tmp)
        counters = Counters()
        settings = _settings(state)
        evidence = EvidenceStore(state / "evidence.db", settings.alerts.evidence_max_bytes)
        p = build_pipeline(settings, model, counters, evidence, state)
        readings = [Reading(ts=1.7e9 + i, values=r, sensor="pump1") for i, r in enumerate(rows)]
        i = 0
        while p.calibrating:  # teach-in: not timed
            p.process(readings[i])
            i += 1
        for r in readings[i:i + 500]:  # warm caches
            p.process(r)
        i += 500
        best, made_total, timed_total = float("inf"), 0, 0
        prof = cProfile.Profile() if profile else None
        for k_run in range(repeat):
            timed = readings[i:i + windows]
            i += windows
            w0 = counters.get("pipeline.windows")
            t0 = time.perf_counter()
            if prof is not None and k_run == 0:
                prof.enable()
            if path == "reading":
                process = p.process
                for r in timed:
                    process(r)
            else:
                process_block = p.process_block
                for k in range(0, len(timed), BLOCK):
                    process_block(timed[k:k + BLOCK])
            if prof is not None and k_run == 0:
                prof.disable()
            dt = time.perf_counter() - t0
            made = counters.get("pipeline.windows") - w0
            if made != len(timed):
                raise RuntimeError(f"{len(timed)} readings made {made} windows (expected one each: hop 1)")
            best = min(best, dt / made)
            made_total, timed_total = made_total + made, timed_total + len(timed)
        evidence.close()
    text = None
    if prof is not None:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
        text = s.getvalue()
    info = {"windows": made_total, "alerts": counters.get("alerts.raised"), "readings_per_s": round(1 / best)}
    return best * 1e6, info, p, text


def run(windows: int = 20_000, profile: bool = False, repeat: int = 3) -> list[dict[str, Any]]:
    skab = normal_stream(windows * repeat + 1500, seed=0, seamless=True)
    mf = machine_failure_stream(windows * repeat + 1500)
    out = []
    cases: list[tuple[str, str, Any]] = []
    for rt in runtimes():
        cases.append(("pump-anomaly", rt, lambda rt=rt: Model(bundled_model("pump-anomaly"), runtime=rt)))
        cases.append(("machine-failure", rt, lambda rt=rt: Model(bundled_model("machine-failure"), runtime=rt)))
    cases.append(("generic", "numpy", lambda: open_model("generic").with_channels(list(skab[0]))))  # type: ignore[union-attr]
    for name, rt, load in cases:
        rows = mf if name == "machine-failure" else skab
        for path in ("reading", "block"):
            model = load()
            cost, info, p, prof = pipeline_cost(model, rows, windows, path, profile and path == "block", repeat)
            if name == "generic":
                bare = bare_generic(p.scorer, np.asarray([list(r.values()) for r in rows[:10]]), windows, repeat)
                version = f"numpy {np.__version__}"
            else:
                bare = bare_tflite(model, windows, repeat)
                version = f"{rt} {model.runtime_version}"
            ratio = cost / bare
            out.append(result(f"per-window cost, {name}, {path} ({version})", round(cost, 2), "µs/window",
                              round(bare, 2), "µs bare", round(ratio, 1), "<= 10x", ratio <= GOAL,
                              info=info, profile=prof))
    return out


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=20_000)
    ap.add_argument("--repeat", type=_positive, default=3, help="timed runs of each loop; the best counts (default 3)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of each block-path loop")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = run(args.windows, args.profile, args.repeat)
    for r in rows:
        print(f"{r['name']}: {r['info']}")
        if r.get("profile"):
            print(r["profile"])
    print_rows(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
