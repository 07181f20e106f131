"""The "same numbers out" pin of ``edge-agent evaluate`` (issue #15): alert events and per-window scores of a few
SKAB recordings, for the bundled pump-anomaly model and the generic detector, on both TFLite runtimes.

``python -m tests.evaluate_pin`` (re)writes ``tests/data/evaluate_pin.json`` from the code as it is; the test
(``tests/unit/test_evaluate_pin.py``) recomputes everything and compares. Regenerate only when a change of the
numbers is intended, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SKAB = ROOT.parent / "shared" / "data" / "skab"  # ../shared/data beside the checkout (as CI has it)
FIXTURE = ROOT / "tests" / "data" / "evaluate_pin.json"
# other/1, other/3 (leak/addition), other/9 (rotor imbalance), other/14 (hot water), valve1/1 and valve1/12 (valve),
# pinned under these names
FILES = ("other-1.csv", "other-3.csv", "other-9.csv", "other-14.csv", "valve1-1.csv", "valve1-12.csv")


def source(name: str) -> Path:
    """The SKAB recording a pinned name stands for (``other-14.csv`` -> ``../shared/data/skab/other/14.csv``)."""
    folder, n = name.rsplit("-", 1)
    path = SKAB / folder / n
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the SKAB recordings are expected in ../shared/data/skab beside the checkout")
    return path


def data_dir(where: Path) -> Path:
    """A folder holding exactly the pinned recordings under their pinned names (symlinks), for the command."""
    where.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (where / name).symlink_to(source(name))
    return where
CONFIGS = (("pump-anomaly", "ai_edge_litert"), ("pump-anomaly", "tflite_runtime"),
           ("generic", "ai_edge_litert"), ("generic", "tflite_runtime"))


def digest(a: np.ndarray) -> str:
    """sha256 of the exact bytes (float64 scores, int64 rows): any change of any bit shows."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def file_pin(res: Any) -> dict[str, Any]:
    r = res.run
    return {
        "rows": int(len(r.ts)),
        "teach_in_rows": r.teach_in_rows,
        "threshold": float(r.threshold),
        "rejected": dict(r.rejected),
        "windows": int(len(r.scores)),
        "score_rows_sha256": digest(r.score_rows.astype(np.int64)),
        "scores_sha256": digest(r.scores.astype(np.float64)),
        "scores_head": [float(s) for s in r.scores[:3]],
        "alerts": [
            {"raise_row": a.raise_row, "raise_window_end": a.raise_window_end, "clear_row": a.clear_row,
             "clear_window_end": a.clear_window_end, "score": a.score, "peak_score": a.peak_score,
             "top_channels": a.top_channels}
            for a in r.alerts
        ],
    }


def evaluate_config(model: str, runtime: str) -> dict[str, Any]:
    """Every pinned file through ``Evaluation`` (the code path of ``edge-agent evaluate``) with this model."""
    from agent.evaluate import Evaluation

    ev = Evaluation.create({"model.path": model, "model.runtime": runtime})
    assert ev.model.name == model and ev.model.runtime in (runtime, "numpy"), (ev.model.name, ev.model.runtime)
    return {name: file_pin(ev.run(source(name), name)) for name in FILES}


def compute() -> dict[str, Any]:
    return {f"{m}/{rt}": evaluate_config(m, rt) for m, rt in CONFIGS}


def main() -> int:
    FIXTURE.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"written {FIXTURE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
