"""Turn recordings of the Numenta Anomaly Benchmark (NAB, MIT licence) into labelled CSVs ``edge-agent evaluate``
reads: ``timestamp,value,anomaly`` with ``anomaly`` 1 inside NAB's labelled anomaly windows.

    git clone https://github.com/numenta/NAB /tmp/NAB
    python models/nab_to_csv.py --nab /tmp/NAB --out /tmp/nab realKnownCause/ambient_temperature_system_failure.csv
    edge-agent evaluate --model generic --data /tmp/nab --calibration-samples 2000 --out eval-nab

Used for the generic detector's "another domain" check (models/README.md). NAB's data is not bundled.
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import datetime
from pathlib import Path


def convert(nab: Path, name: str, out: Path) -> tuple[int, int]:
    """One NAB recording → ``out/<stem>.csv``; (rows, labelled windows)."""
    windows = json.loads((nab / "labels" / "combined_windows.json").read_text())[name]
    spans = [(datetime.fromisoformat(a[:19]), datetime.fromisoformat(b[:19])) for a, b in windows]
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(nab / "data" / name, newline="") as src, open(out / Path(name).name, "w", newline="") as dst:
        r, w = csv.reader(src), csv.writer(dst)
        next(r)
        w.writerow(["timestamp", "value", "anomaly"])
        for ts, value in r:
            t = datetime.fromisoformat(ts)
            w.writerow([ts, value, int(any(a <= t <= b for a, b in spans))])
            rows += 1
    return rows, len(spans)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nab", type=Path, required=True, help="a NAB checkout")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("names", nargs="+", help="recordings under NAB's data/, e.g. realKnownCause/nyc_taxi.csv")
    args = ap.parse_args()
    for name in args.names:
        rows, n = convert(args.nab, name, args.out)
        print(f"{name}: {rows} rows, {n} labelled windows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
