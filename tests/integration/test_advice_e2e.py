"""End to end: AI4I test cycles replayed through the real agent publish ``advice`` for the flagged cycles.

The recording is written by the test from ``../shared/data/ai4i`` (tests may read it; the product never does):
cycles of the model's test split in production order, one per second of synthetic time, the product type as the
model's one-hot channels. The advice is checked against the sidecar's bounds and step grid and, where AI4I's
published rules say a heat-dissipation, power or overstrain failure happens, against those rules.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

from agent.bundled import bundled_dir
from agent.infer import read_sidecar
from agent.parse import iso, timestamp
from tests.conftest import ROOT, SHARED_DATA, agent_env, run_agent, wait_for

sys.path.insert(0, str(ROOT / "models"))
from train_machine_failure import rule_modes, stratified_split  # noqa: E402

MODEL = bundled_dir() / "machine-failure.tflite"
SENSORS = ["Air temperature [K]", "Process temperature [K]", "Rotational speed [rpm]", "Torque [Nm]", "Tool wear [min]"]
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ADVICE_FIELDS = {"id", "alert_id", "device_id", "sensor", "state", "model", "probability", "threshold", "target",
                 "advised_probability", "current", "advised", "changes", "actions", "distance", "bounds",
                 "available_actions", "candidates", "search_ms", "window_end", "created_at", "note"}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, dict[float, dict[str, str]]]:
    src = SHARED_DATA / "ai4i" / "ai4i2020.csv"
    if not src.is_file():
        pytest.fail(f"{src} not found: the end-to-end advice test replays AI4I cycles from ../shared/data")
    with open(src, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["UDI"]))
    _, _, test = stratified_split([int(r["Machine failure"]) for r in rows], 0)
    chosen = [rows[i] for i in test if 4000 <= int(rows[i]["UDI"]) < 4800]  # a hot spell: many HDF cycles
    path = tmp_path_factory.mktemp("ai4i") / "ai4i-test-cycles.csv"
    by_ts: dict[float, dict[str, str]] = {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "Type_L", "Type_M", "Type_H", *SENSORS])
        for k, r in enumerate(chosen):
            ts = T0 + k
            by_ts[ts] = r
            w.writerow([iso(ts), *(1.0 if r["Type"] == t else 0.0 for t in "LMH"), *(r[s] for s in SENSORS)])
    return path, by_ts


def modes(r: dict[str, str], **override: float) -> set[str]:
    v = {s: float(r[s]) for s in SENSORS} | override
    m = rule_modes([r["Type"]], *([v[s]] for s in SENSORS))
    return {k for k in ("HDF", "PWF", "OSF") if m[k][0]}


def test_flagged_cycles_get_advice_within_bounds_that_the_rules_confirm(tmp_path, live_broker, recorder, recording):
    path, by_ts = recording
    sidecar = read_sidecar(MODEL)
    rec = recorder("edge/#")
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_MODEL__PATH=MODEL, EDGE_AGENT_SOURCE__PATH=path,
                    EDGE_AGENT_SOURCE__SENSOR="mill-7", EDGE_AGENT_SUMMARY_INTERVAL_S=3600)
    r = run_agent(env)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "offline", what="status offline")

    raised = {a["alert_id"]: a for a in rec.on("alerts") if a["state"] == "raised"}
    advice = list({a["id"]: a for a in rec.on("advice")}.values())  # at-least-once: a resend is a duplicate id
    assert len(raised) >= 10, f"expected a hot spell of failures, got {len(raised)} alerts"
    assert sorted(a["alert_id"] for a in advice) == sorted(raised)  # one advice per raised alert, none without
    bounds = {a.channel: a for a in sidecar.advice.adjustable}
    fixed = steerable = 0
    for a in advice:
        assert ADVICE_FIELDS <= set(a), ADVICE_FIELDS - set(a)
        assert a["device_id"] == "test-gw" and a["sensor"] == "mill-7"
        assert a["model"] == {"name": "machine-failure", "version": sidecar.version}
        assert a["window_end"] == raised[a["alert_id"]]["window_end"]
        cycle = by_ts[timestamp(a["window_end"])]
        assert a["current"] == {**{f"Type_{t}": 1.0 if cycle["Type"] == t else 0.0 for t in "LMH"},
                                **{s: float(cycle[s]) for s in SENSORS}}
        assert a["probability"] > a["threshold"] == sidecar.threshold
        assert a["state"] == "advised", a
        assert a["advised_probability"] <= a["target"] == pytest.approx(sidecar.threshold - sidecar.advice.margin)
        for ch, v in a["advised"].items():
            b = bounds[ch]
            assert b.min <= v <= b.max, (ch, v)
            k = (v - b.min) / b.step
            assert abs(k - round(k)) < 1e-6, f"{ch} {v} is not on the {b.step} grid from {b.min}"
            assert v != a["current"][ch]  # only what changes
        assert [c["channel"] for c in a["changes"]] == list(a["advised"])
        before = modes(cycle)
        after = modes(cycle, **a["advised"])
        assert not after - before, f"advice creates a failure mode: {a}"
        if before:
            steerable += 1
            fixed += not after
    assert steerable >= 10 and fixed == steerable
    # the log explains each advice in one line
    assert r.stderr.count("ADVICE sensor=mill-7") == len(advice)
    summary = rec.on("summary")[-1]
    assert summary["alerts_raised"] == len(raised)


def test_advice_payload_pinned(tmp_path, live_broker, recorder, recording):
    """One heat-dissipation cycle, its advice message field by field."""
    path, by_ts = recording
    ts, cycle = next((t, c) for t, c in by_ts.items() if c["UDI"] == "4141")  # dT 8.5 K at 1331 rpm: HDF
    assert modes(cycle) == {"HDF"}
    one = tmp_path / "one.csv"
    lines = path.read_text().splitlines()
    k = int(ts - T0)
    one.write_text("\n".join([lines[0], lines[1 + k]]) + "\n")
    rec = recorder("edge/#")
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_MODEL__PATH=MODEL, EDGE_AGENT_SOURCE__PATH=one)
    r = run_agent(env)
    assert r.returncode == 0, r.stderr
    msg = wait_for(lambda: rec.on("advice"), what="the advice message")[0]
    topics = [t for t, p, _ in rec.messages if isinstance(p, dict) and p.get("id") == msg["id"]]
    assert topics == ["edge/test-gw/advice"]
    rpm = float(cycle["Rotational speed [rpm]"])
    assert msg["state"] == "advised" and msg["actions"] == []
    assert msg["advised"] == {"Rotational speed [rpm]": 1390.0}  # just past the learnt 1381 rpm, on the 10 rpm grid
    assert msg["changes"] == [{"channel": "Rotational speed [rpm]", "from": rpm, "to": 1390.0, "delta": 1390.0 - rpm}]
    assert msg["probability"] == pytest.approx(0.996, abs=0.002) and msg["advised_probability"] < 0.01
    assert msg["threshold"] == 0.5 and msg["target"] == 0.05
    assert msg["bounds"] == {"Rotational speed [rpm]": {"min": 1200.0, "max": 2800.0, "step": 10.0},
                             "Torque [Nm]": {"min": 10.0, "max": 70.0, "step": 0.5}}
    assert msg["available_actions"] == [{"name": "tool change", "set": {"Tool wear [min]": 0.0}}]
    assert msg["distance"] == pytest.approx((1390.0 - rpm) / read_sidecar(MODEL).normalisation.std[5], abs=1e-3)
    assert msg["window_end"] == iso(ts) and msg["alert_id"] == rec.on("alerts")[0]["alert_id"]
    assert msg["note"] == "advisory only: for a person to decide; edge-agent writes to no device"
    assert math.isfinite(msg["search_ms"]) and 0 < msg["candidates"] < 2000
    assert f"Rotational speed [rpm] {rpm:g}->1390" in r.stderr
