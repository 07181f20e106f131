"""Turn the Tennessee Eastman process benchmark (Braatz's data files, as in
github.com/camaramm/tennessee-eastman-profBraatz) into labelled CSVs ``edge-agent evaluate`` reads.

The process: a simulated chemical plant, 52 channels (41 measurements ``XMEAS1``..``XMEAS41`` and 11 manipulated
variables ``XMV1``..``XMV11``), a reading every 3 minutes. ``d00.dat`` is 25 h of normal operation (500 readings,
stored channel-major), ``d00_te.dat`` another 48 h (960), ``dNN_te.dat`` 48 h with fault NN (1..21) introduced
after the first 160 readings (8 h).

One CSV per fault: the 500 readings of ``d00.dat`` (the teach-in: ``--calibration-samples 500``), then the 960 of
``dNN_te.dat``, anomaly 1 from its reading 160 on; and ``normal.csv``: ``d00.dat`` then ``d00_te.dat``, all 0 (48 h
of normal operation after the teach-in). Timestamps are made up, 180 s apart, continuous across the join (the two
files are separate runs of the simulator at the same operating point).

    git clone https://github.com/camaramm/tennessee-eastman-profBraatz /tmp/tep-src
    python models/tep_to_csv.py --src /tmp/tep-src --out /tmp/tep
    edge-agent evaluate --model generic --data /tmp/tep/faults --calibration-samples 500 --no-plots --out /tmp/eval-tep
    edge-agent evaluate --model generic --normal /tmp/tep/normal.csv --calibration-samples 500 --no-plots --out /tmp/eval-tep-normal

Used for the generic detector's "another machine" check (models/README.md). The data is not bundled.
"""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

CHANNELS = [f"XMEAS{i}" for i in range(1, 42)] + [f"XMV{i}" for i in range(1, 12)]
FAULT_AT = 160  # readings of a test file before its fault
STEP_S = 180
START = datetime(2000, 1, 1, tzinfo=timezone.utc)


def load(path: Path) -> np.ndarray:
    """A data file as readings × 52 (``d00.dat`` is stored the other way round)."""
    a = np.loadtxt(path)
    return a.T if a.shape[0] == len(CHANNELS) and a.shape[1] != len(CHANNELS) else a


def write(path: Path, teach: np.ndarray, test: np.ndarray, fault_at: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", *CHANNELS, "anomaly"])
        rows = np.vstack([teach, test])
        for i, row in enumerate(rows):
            j = i - len(teach)
            label = int(fault_at is not None and j >= fault_at)
            ts = (START + timedelta(seconds=STEP_S * i)).strftime("%Y-%m-%d %H:%M:%S")
            w.writerow([ts, *(f"{v:.6g}" for v in row), label])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="a folder with d00.dat, d00_te.dat, d01_te.dat .. d21_te.dat")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    teach = load(args.src / "d00.dat")
    write(args.out / "normal.csv", teach, load(args.src / "d00_te.dat"), None)
    for k in range(1, 22):
        write(args.out / "faults" / f"fault{k:02d}.csv", teach, load(args.src / f"d{k:02d}_te.dat"), FAULT_AT)
    print(f"{args.out}: normal.csv and faults/fault01..21.csv, {len(teach)} teach-in readings each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
