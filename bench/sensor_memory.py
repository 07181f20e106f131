"""Memory per sensor: what one more sensor costs the pipeline, and that the bound and the idle eviction hold.

Run from the repository root:
    nice -n 5 .venv/bin/python bench/sensor_memory.py [--sensors 10000] [--json out.json]

The daemon's own pipeline (``agent.assets.build_pipeline``, default settings: evidence store, alert policy, bundled
pump-anomaly model, teach-in off so every window is scored) is fed readings from the bundled recording. Each
sensor gets ``window.length + evidence`` readings (15): its ring buffer is full, it has scored windows, an alert
machine and a full evidence buffer — what a sensor holds in steady state.

- measure: Python heap (``tracemalloc``, which numpy reports to) after ``--sensors`` sensors, each fed 15 readings;
- baseline, same run and same process setup: the same number of readings through ONE sensor (the heap that does
  not depend on the number of sensors: summary scores, latency ring, caches);
- per sensor = (measure - baseline) / (sensors - 1). RSS (VmRSS) is reported too: it includes the allocator's
  slack, so it is the number a gateway sees.
- bound: with ``EDGE_AGENT_CLEANING__MAX_SENSORS`` = sensors / 10, the same feed keeps at most that many sensors
  (the others are refused and counted): its heap against cap x the per-sensor cost;
- eviction: with ``SENSOR_IDLE_S`` too, every sensor goes idle and is forgotten: the share of their heap given
  back (what stays is the dicts' own tables, which Python does not shrink, and first-use caches).

Each scenario runs in a fresh process, so one does not inherit another's heap.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_rows, proc_sample, result, write_json  # noqa: E402

READINGS_PER_SENSOR = 15


def scenario(kind: str, sensors: int, state: Path) -> dict[str, Any]:
    """Run one scenario in this process; its numbers."""
    import os

    from agent.assets import build_pipeline, load_model
    from agent.counters import Counters
    from agent.evidence import EvidenceStore
    from agent.records import Reading
    from agent.settings import load_settings
    from bench._data import demo_rows

    cap = sensors // 10 if kind in ("bounded", "evicted") else 0
    env = {"EDGE_AGENT_STATE_DIR": str(state), "EDGE_AGENT_MODEL__PATH": "pump-anomaly",  # not the default any more
           "EDGE_AGENT_CALIBRATION__SAMPLES": "0",
           "EDGE_AGENT_CLEANING__MAX_SENSORS": str(cap), "EDGE_AGENT_CLEANING__SENSOR_IDLE_S": "0",
           "EDGE_AGENT_MODEL__THRESHOLD": "1e6"}  # no alert: alerts would keep sensors from being forgotten
    settings = load_settings(None, env)
    model = load_model(settings)
    counters = Counters()
    evidence = EvidenceStore(state / "evidence.db")
    rows = demo_rows()[:READINGS_PER_SENSOR]
    clock = [0.0]
    pipe = build_pipeline(settings, model, counters, evidence)
    if kind == "evicted":
        from agent.clean import CleaningPolicy
        from agent.decide import Decisions
        from agent.pipeline import Pipeline

        policy = CleaningPolicy(max_sensors=cap, sensor_idle_s=60.0)
        pipe = Pipeline(model, counters, state, calibration_samples=0, decisions=Decisions(counters, threshold=1e6),
                        evidence=evidence, cleaning=policy, clock=lambda: clock[0])
    names = ["s"] if kind == "baseline" else [f"sensor-{i:06d}" for i in range(sensors)]
    repeat = sensors if kind == "baseline" else 1
    tracemalloc.start()
    base_heap = tracemalloc.get_traced_memory()[0]
    rss0 = proc_sample(os.getpid())["VmRSS"]
    t = 1_600_000_000.0
    for _ in range(repeat):
        for i, row in enumerate(rows):
            t += 1.0
            for name in names:
                pipe.process(Reading(ts=t + i * 0, values=row, sensor=name))
    heap = tracemalloc.get_traced_memory()[0] - base_heap
    out = {"kind": kind, "sensors_fed": len(names), "readings": counters.get("pipeline.windows"),
           "tracked": pipe.snapshot.sensors, "refused": counters.get("reject.too_many_sensors"),
           "heap_bytes": heap, "rss_kb": proc_sample(os.getpid())["VmRSS"] - rss0}
    if kind == "evicted":  # everything idle: the next reading of a new sensor makes the pipeline forget them
        clock[0] += 61.0
        pipe._next_idle_check = 0.0  # noqa: SLF001 - do not wait for the once-a-minute check in a benchmark
        t += 100
        pipe.process(Reading(ts=t, values=rows[0], sensor="late"))
        out["tracked_after_idle"] = pipe.snapshot.sensors
        out["forgotten"] = counters.get("sensors.forgotten")
        out["heap_after_idle_bytes"] = tracemalloc.get_traced_memory()[0] - base_heap
    tracemalloc.stop()
    evidence.close()
    return out


def run_scenario(kind: str, sensors: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sensors-") as tmp:
        p = subprocess.run([sys.executable, __file__, "--scenario", kind, "--sensors", str(sensors), "--state", tmp],
                           capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    ap.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scenario:
        print(json.dumps(scenario(args.scenario, args.sensors, args.state)))
        return 0
    n = args.sensors
    base, many, bounded, evicted = (run_scenario(k, n) for k in ("baseline", "many", "bounded", "evicted"))
    per_heap = (many["heap_bytes"] - base["heap_bytes"]) / (n - 1)
    per_rss = (many["rss_kb"] - base["rss_kb"]) * 1024 / (n - 1)
    cap = n // 10
    bound_ok = bounded["tracked"] == cap and bounded["heap_bytes"] - base["heap_bytes"] <= 1.2 * cap * per_heap
    held = evicted["heap_bytes"] - base["heap_bytes"]
    freed = (evicted["heap_bytes"] - evicted["heap_after_idle_bytes"]) / held if held > 0 else None
    evict_ok = evicted["tracked_after_idle"] == 1 and freed is not None and freed >= 0.9
    rows = [
        result(f"heap per sensor ({n:,} sensors)", round(per_heap), "bytes", base["heap_bytes"],
               "bytes, 1 sensor same readings", None, "measured", None, detail={"many": many, "baseline": base}),
        result(f"RSS per sensor ({n:,} sensors)", round(per_rss), "bytes", base["rss_kb"] * 1024,
               "bytes RSS growth, 1 sensor", None, "measured", None),
        result(f"heap with MAX_SENSORS={cap:,}, {n:,} fed", bounded["heap_bytes"] - base["heap_bytes"], "bytes",
               round(cap * per_heap), f"bytes = {cap:,} x per sensor", round((bounded["heap_bytes"] - base["heap_bytes"]) /
               max(1, cap * per_heap), 2), "<= 1.2x (bounded)", bound_ok, detail=bounded),
        result(f"heap given back when {cap:,} idle sensors are forgotten", evicted["heap_bytes"] - evicted["heap_after_idle_bytes"],
               "bytes", held, "bytes they held", round(freed, 3) if freed is not None else None, ">= 0.9", evict_ok,
               detail=evicted),
    ]
    print_rows(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
