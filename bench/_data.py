"""Benchmark input: realistic readings from the bundled demo recording (no ../shared needed at run time)."""

from __future__ import annotations

import random
from pathlib import Path

from agent.bundled import demo_recording_path
from agent.counters import Counters
from agent.sources.replay import read_recording

CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]
NORMAL_ROWS = 560  # the demo's valve fault starts at row 572 (README): rows before it are normal operation


def demo_rows() -> list[dict[str, float]]:
    """Every row of the bundled recording: the 8 model channels only (no labels)."""
    return [{c: float(r.values[c]) for c in CHANNELS} for r in read_recording(demo_recording_path(), Counters())]


def normal_stream(n: int, seed: int = 0, period: int = 400, seamless: bool = False) -> list[dict[str, float]]:
    """``n`` rows of normal operation: the demo's first ``period`` rows (its fault-free start, exactly what
    teach-in learns) played in a loop, starting at a seed-dependent offset; ``seamless``: played forward, then
    backward, and so on (no jump anywhere).

    Tried and rejected (in-process pipeline, 60k readings, bundled model, default decision): resampling random
    blocks of the normal part puts a jump at every seam and raises ~4 false alerts per 60k readings, all 4-6
    readings after a seam; a nearest-neighbour walk between blocks made teach-in unrepresentative (148 alerts).
    The loop's single seam (row 399 -> row 0) raised none with the pump-anomaly model of the time; with
    pump-anomaly 1.2.0 and evidence kept (``bench/window_cost.py``) it raises one alert at every pass (152 in
    60k windows), so that bench plays the stream ``seamless`` (none in 60k). For scale, SKAB's real anomaly-free
    recording (9,405 rows, not bundled) raises 2 alerts after a teach-in on its first 400 rows.
    """
    rows = demo_rows()[: min(period, NORMAL_ROWS)]
    if seamless:
        rows = rows + rows[-2:0:-1]  # 0 .. 399, 398 .. 1, then 0 again
    start = random.Random(seed).randrange(0, len(rows)) if seed else 0
    return [rows[(start + i) % len(rows)] for i in range(n)]


def write_csv(path: Path, rows: list[dict[str, float]], t0: float, period_s: float = 1.0) -> None:
    """Rows as a replayable CSV (``datetime`` as epoch seconds, ``;``-separated like SKAB)."""
    with open(path, "w") as f:
        f.write("datetime;" + ";".join(CHANNELS) + "\n")
        for i, r in enumerate(rows):
            f.write(f"{t0 + i * period_s:.3f};" + ";".join(repr(r[c]) for c in CHANNELS) + "\n")
