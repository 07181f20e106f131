"""Run every benchmark, print one results table (measure, baseline, ratio, goal, pass/miss), ``--json`` all of it.

Run from the repository root:

    nice -n 5 .venv/bin/python bench/run_all.py [--json bench-results.json] [--quick] [--soak-seconds N]

Each benchmark runs in its own process (as ``bench/<name>.py ... --json``), one after the other, each with its own
private mosquitto on a free port. ``--quick`` shrinks every run (minutes instead of ~1.5 h); the soak lasts
``--soak-seconds`` (default 3600, the issue's hour; 120 with ``--quick``; 0 skips it), or ``--soak-from FILE``
takes the record of a soak already run with ``bench/soak.py --json FILE`` (it is long: start it alone, early).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine, print_rows, result, versions, write_json  # noqa: E402
from bench.soak import analyse  # noqa: E402

SERIAL_GOAL = 10.0


def plan(quick: bool, soak_s: float) -> list[tuple[str, list[str]]]:
    q = quick
    steps = [
        ("serial_rate", ["--lines", "50000", "--baseline-lines", "5000"] if q else []),
        ("modbus_rate", ["--polls", "1000", "--rounds", "3"] if q else ["--polls", "3000", "--rounds", "5"]),
        # the sustained ladder (its own default: the peer rule's rates and 20 s steps); quick: three short steps
        ("mqtt_ingest", ["--rates", "1000,10000,30000", "--step-s", "5"] if q else []),
        ("window_cost", ["--windows", "5000"] if q else ["--windows", "20000", "--profile"]),
        ("advice_search", ["--repeat", "100"] if q else ["--repeat", "300"]),
        ("footprint", ["--seconds", "10", "--starts", "3"] if q else ["--seconds", "20", "--starts", "5"]),
        ("bandwidth", ["--data-minutes", "10"] if q else ["--data-minutes", "60"]),
        ("alert_latency", ["--alerts", "200"] if q else ["--alerts", "500"]),
        ("outbox_evict", ["--rows", "2000"] if q else []),
        ("sensor_memory", ["--sensors", "2000"] if q else ["--sensors", "10000"]),
        ("assets", ["--warmup", "40", "--measure", "30"] if q else []),
    ]
    if soak_s > 0:
        steps.append(("soak", ["--seconds", str(soak_s), "--interval", str(max(1.0, min(10.0, soak_s / 12)))]))
    return steps


def serial_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    r = data["lines_per_s"]
    ratio = r["serial_source"] / r["readline"]
    return [result("serial lines/s (SerialSource, pty)", r["serial_source"], "lines/s", r["readline"],
                   "lines/s readline", round(ratio, 1), ">= 10x", ratio >= SERIAL_GOAL, detail=data)]


def soak_rows(record: dict[str, Any], source: str) -> list[dict[str, Any]]:
    a = analyse(record["samples"], record["warmup_s"])
    dur = record.get("duration_s") or (record["samples"][-1]["t"] if record["samples"] else 0)
    ok = bool(a.get("rss_growth_kb") is not None and a["rss_growth_kb"] <= 2048 and a["thread_growth"] == 0
              and a["fd_growth"] == 0 and "error" not in record)
    partial = "" if record.get("done") else " PARTIAL"
    return [result(f"soak {dur / 60:.0f} min at {record['speed']:.0f}x{partial}: RSS growth", a.get("rss_growth_kb"),
                   "kB", a.get("rss_after_warmup_kb"), "kB after warm-up", None, "<= 2048 kB, no thread/fd growth",
                   ok, threads=f"{a.get('threads_after_warmup')}->{a.get('threads_max')}",
                   fds=f"{a.get('fds_after_warmup')}->{a.get('fds_max')}", analysis=a, source=source)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--soak-seconds", type=float, default=None)
    ap.add_argument("--soak-from", type=Path, help="use this soak.py --json record instead of running a soak")
    ap.add_argument("--only", nargs="*", help="run only these benchmarks (names as in bench/)")
    args = ap.parse_args(argv)
    if args.soak_from:
        soak_s = 0.0
    elif args.soak_seconds is not None:
        soak_s = args.soak_seconds
    else:
        soak_s = 120 if args.quick else 3600

    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
                              "versions": versions(), "quick": args.quick, "commands": [], "rows": [], "raw": {}}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        for name, extra in plan(args.quick, soak_s):
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, f"bench/{name}.py", *extra, "--json", str(out)]
            report["commands"].append(" ".join(cmd[1:]))
            print(f"== {name}: {' '.join(cmd[1:-2])}", flush=True)
            t0 = time.monotonic()
            load0 = os.getloadavg()[0]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            took = time.monotonic() - t0
            if proc.returncode != 0 or not out.exists():
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
                rows.append(result(name, None, "", None, "", None, "(failed)", False, error=proc.stderr[-3000:]))
                continue
            data = json.loads(out.read_text())
            report["raw"][name] = data
            if name == "serial_rate":
                got = serial_rows(data)
            elif name == "soak":
                got = soak_rows(data, "run_all")
            else:
                got = data
            load = f"{load0:.1f}->{os.getloadavg()[0]:.1f}"
            for r in got:
                r["seconds"] = round(took, 1)
                r["loadavg_1m"] = load
            print(f"   ({took:.0f} s, 1-min load average {load} on {os.cpu_count()} CPUs)")
            rows.extend(got)
            print_rows(got)
    if args.soak_from:
        record = json.loads(args.soak_from.read_text())
        report["raw"]["soak"] = record
        rows.extend(soak_rows(record, str(args.soak_from)))
    report["rows"] = rows
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print("\n== all results")
    print_rows(rows)
    misses = [r["name"] for r in rows if r["pass"] is False]
    print(f"\n{len(misses)} goal(s) missed" + (": " + "; ".join(misses) if misses else ""))
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
