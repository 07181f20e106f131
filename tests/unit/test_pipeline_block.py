"""``Pipeline.process_block`` gives what ``Pipeline.process`` gives reading by reading: the same events (alerts,
summaries, advice), the same counters and the same per-window scores, on the pinned SKAB files (against the pin)
and on dirty data (NaN, missing and non-numeric channels, duplicate and out-of-order timestamps, gaps, values out
of range, interleaved sensors, Blocks), whatever the block sizes."""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.counters import Counters
from agent.evaluate import Evaluation, model_channels
from agent.records import AlertEvent, Block, Reading
from agent.sources.replay import read_recording
from tests.evaluate_pin import CONFIGS, FILES, FIXTURE, digest, source

import json

PINNED = json.loads(FIXTURE.read_text())


def _readings(path: Path, sensor: str = "evaluate") -> list[Reading]:
    return list(read_recording(path, Counters(), sensor=sensor))


def _blocks(readings: list[Reading], sizes: list[int], channels: list[str], as_blocks: bool) -> list[list[Any]]:
    """The readings cut into consecutive blocks of the given sizes (cycled); ``as_blocks``: each run of one
    sensor's readings inside a block as a Block (NaN where a value is not a float)."""
    out, i, k = [], 0, 0
    while i < len(readings):
        chunk = readings[i:i + sizes[k % len(sizes)]]
        i += len(chunk)
        k += 1
        if not as_blocks:
            out.append(chunk)
            continue
        items: list[Any] = []
        j = 0
        while j < len(chunk):
            e = j
            while e < len(chunk) and chunk[e].sensor == chunk[j].sensor:
                e += 1
            run = chunk[j:e]
            values = np.array([[v if isinstance(v := r.values.get(c), float) else math.nan for c in channels]
                               for r in run])
            items.append(Block(np.array([r.ts for r in run]), tuple(channels), values, run[0].sensor))
            j = e
        out.append(items)
    return out


def _norm(e: Any) -> Any:
    """An event without its random ids (uuid alert ids)."""
    if isinstance(e, AlertEvent):
        return dataclasses.replace(e, alert_id="", evidence_id=None)
    if hasattr(e, "alert_id"):
        return dataclasses.replace(e, alert_id="")
    return e


def _run(ev: Evaluation, channels: list[str] | None, blocks: list[list[Any]] | None,
         readings: list[Reading] | None) -> dict[str, Any]:
    counters = Counters()
    with tempfile.TemporaryDirectory() as state:
        p = ev.make_pipeline(counters, Path(state), channels)
        events: list[Any] = []
        if blocks is not None:
            for b in blocks:
                events.extend(p.process_block(b))
        else:
            for r in readings or []:
                events.extend(p.process(r))
        scores = p.summaries.summariser.scores.tolist()  # the period's window scores, in order
        events.extend(p.finish())
    return {"events": [_norm(e) for e in events], "counters": counters.snapshot(), "scores": scores}


def _evaluation(model: str, runtime: str = "tflite_runtime", **overrides: Any) -> Evaluation:
    return Evaluation.create({"model.path": model, "model.runtime": runtime, **overrides})


@pytest.mark.parametrize("model,runtime", CONFIGS)
def test_blocks_give_the_pinned_scores_and_the_per_reading_events(model, runtime):
    ev = _evaluation(model, runtime, summary_interval_s=1e9)  # one summary period: every score kept, in order
    for name in FILES:
        path = source(name)
        channels = model_channels(ev.model, path)
        readings = _readings(path)
        ref = _run(ev, channels, None, readings)
        pin = PINNED[f"{model}/{runtime}"][name]
        assert len(ref["scores"]) == pin["windows"]
        assert digest(np.asarray(ref["scores"], dtype=np.float64)) == pin["scores_sha256"], name
        for sizes, as_blocks in (([512], False), ([1, 7, 64, 3], False), ([100], True), ([13, 512, 2], True)):
            got = _run(ev, channels, _blocks(readings, sizes, channels, as_blocks), None)
            assert digest(np.asarray(got["scores"], dtype=np.float64)) == pin["scores_sha256"], (name, sizes, as_blocks)
            assert got["events"] == ref["events"], (name, sizes, as_blocks)
            assert got["counters"] == ref["counters"], (name, sizes, as_blocks)


def _dirty(readings: list[Reading], channels: list[str], seed: int) -> list[Reading]:
    """Every kind of bad reading, sprinkled; two sensors interleaved in runs; a gap and a clock step back."""
    rng = random.Random(seed)
    out: list[Reading] = []
    shift = 0.0
    for i, r in enumerate(readings):
        values = dict(r.values)
        ts = r.ts + shift
        roll = rng.random()
        c = rng.choice(channels)
        if roll < 0.02:
            values[c] = math.nan
        elif roll < 0.03:
            values.pop(c, None)
        elif roll < 0.04:
            values[c] = "n/a"
        elif roll < 0.05:
            values[c] = 1e9  # out of the configured range
        elif roll < 0.06 and out:
            ts = out[-1].ts  # duplicate timestamp
        elif roll < 0.065 and out:
            ts = out[-1].ts - 3  # out of order
        if i == 600:
            shift += 120.0  # a gap: windows start again
        sensor = "a" if (i // 50) % 3 else "b"
        out.append(Reading(ts + (0.0 if sensor == "a" else 0.25), values, sensor))
    return out


@pytest.mark.parametrize("model", ["pump-anomaly", "generic"])
@pytest.mark.parametrize("seed", [1, 2])
def test_blocks_of_dirty_data_give_the_per_reading_events_and_counters(model, seed):
    ranges = "Current:0:1000,Pressure::1000"
    ev = _evaluation(model, summary_interval_s=60.0, **{"cleaning.ranges": ranges})
    for name in ("valve1-1.csv", "other-3.csv"):
        path = source(name)
        channels = model_channels(ev.model, path)
        readings = _dirty(_readings(path), channels, seed)
        ref = _run(ev, channels, None, readings)
        assert ref["counters"].get("reject.not_finite") and ref["counters"].get("gap.time_gap")
        assert any(isinstance(e, AlertEvent) for e in ref["events"]) or model == "generic"
        for sizes in ([512], [5, 1, 64, 200]):
            got = _run(ev, channels, _blocks(readings, sizes, channels, False), None)
            assert got["events"] == ref["events"], (name, sizes)
            assert got["counters"] == ref["counters"], (name, sizes)
            assert got["scores"] == ref["scores"], (name, sizes)


@pytest.mark.parametrize("model", ["pump-anomaly", "generic"])
def test_a_block_is_its_rows_as_readings_with_nan_for_a_missing_number(model):
    ev = _evaluation(model, summary_interval_s=60.0)
    path = source("other-9.csv")
    channels = model_channels(ev.model, path)
    readings = _dirty(_readings(path), channels, 3)
    blocks = _blocks(readings, [64, 3, 300], channels, True)
    ref = _run(ev, channels, None, [r for b in blocks for item in b for r in item.rows()])
    got = _run(ev, channels, blocks, None)
    assert got["events"] == ref["events"] and got["counters"] == ref["counters"] and got["scores"] == ref["scores"]
    assert ref["counters"].get("reject.not_finite")


def test_the_generic_detector_with_cross_channel_relations_scores_blocks_the_same(tmp_path):
    spec = json.loads((Path(__file__).resolve().parents[2] / "models" / "generic.json").read_text())
    spec["detector"]["cross_channel"] = 2.0
    path = tmp_path / "generic-cross.json"
    path.write_text(json.dumps(spec))
    ev = Evaluation.create({"model.path": str(path), "summary_interval_s": 120.0})
    data = source("valve1-12.csv")
    channels = model_channels(ev.model, data)
    readings = _readings(data)
    ref = _run(ev, channels, None, readings)
    assert ref["counters"]["pipeline.windows"] > 500
    got = _run(ev, channels, _blocks(readings, [512, 17], channels, False), None)
    assert got == ref


def test_a_malformed_block_is_counted_and_dropped_not_a_crash():
    ev = _evaluation("pump-anomaly")
    path = source("valve1-1.csv")
    channels = model_channels(ev.model, path)
    readings = _readings(path)[:700]
    good = _blocks(readings, [350], channels, True)
    ts = np.arange(5, dtype=np.float64)
    bad = [Block(ts, tuple(channels), np.zeros((4, len(channels)))),  # 5 timestamps, 4 rows
           Block(ts, tuple(channels[:3]), np.zeros((5, len(channels)))),  # 3 names, 8 columns
           Block(ts, tuple(channels), np.full((5, len(channels)), "x", dtype=object))]  # not numbers
    counters = Counters()
    with tempfile.TemporaryDirectory() as state:
        p = ev.make_pipeline(counters, Path(state), channels)
        p.process_block(good[0])
        p.process_block(bad + good[1])
        assert not p.calibrating
    assert counters.get("reject.bad_block") == 15
    assert counters.get("pipeline.windows") == 700 - 400


@pytest.mark.parametrize("profile", [False, True])
def test_a_single_channel_stream_scores_blocks_the_same_bit_for_bit(profile):
    """One channel: a window's mean must be summed in the same order in blocks as one window at a time (numpy sums
    a contiguous axis pairwise). With ``profile``: five days of a daily rhythm, so the daily profile is in play."""
    rng = np.random.default_rng(11)
    step = 300.0 if profile else 1.0
    n = 5 * 288 if profile else 3000
    t = 1_700_006_400.0 + step * np.arange(n)
    x = 50.0 + (20.0 * np.cos(2 * math.pi * (t % 86_400) / 86_400) if profile else 0.0) + rng.normal(0, 1.0, n)
    x[n - 200:n - 120] += 9.0  # an event, so that decisions are compared too
    readings = [Reading(float(a), {"temperature": float(b)}, "s1") for a, b in zip(t, x)]
    ev = Evaluation.create({"model.path": "generic", "summary_interval_s": 1e9, "calibration.samples": n // 2 + 100})
    ref = _run(ev, ["temperature"], None, readings)
    assert ref["counters"]["pipeline.windows"] > n // 3
    for sizes in ([512, 17], [3]):
        assert _run(ev, ["temperature"], _blocks(readings, sizes, ["temperature"], False), None) == ref, sizes
