"""Parameter advice: batched invokes, the bounded search on the real int8 model, the advisor's message and limit."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from agent.advice import AdviceSpec, Advisor, check_advice, parse_adjustable, search
from agent.bundled import bundled_dir, bundled_model
from agent.calibrate import sidecar_normaliser
from agent.counters import Counters
from agent.infer import Model, ModelError, Scorer
from agent.records import Window
from tests.helpers import outgoing

MF = bundled_dir() / "machine-failure.tflite"
RPM, TQ, WEAR = "Rotational speed [rpm]", "Torque [Nm]", "Tool wear [min]"


def rules(row: np.ndarray) -> set[str]:
    """AI4I's published rules for HDF/PWF/OSF on one raw row (Type_L, Type_M, Type_H, air, process, rpm, torque, wear)."""
    limit = 11000 if row[0] else 12000 if row[1] else 13000
    power = row[6] * row[5] * 2 * math.pi / 60
    out = set()
    if row[4] - row[3] < 8.6 and row[5] < 1380:
        out.add("HDF")
    if power < 3500 or power > 9000:
        out.add("PWF")
    if row[7] * row[6] > limit:
        out.add("OSF")
    return out


@pytest.fixture(scope="module")
def mf() -> Model:
    return Model(MF)


@pytest.fixture(scope="module")
def scorer(mf) -> Scorer:
    return Scorer(mf, sidecar_normaliser(mf))


@pytest.mark.parametrize("path", [bundled_model("pump-anomaly"), MF], ids=lambda p: p.stem)
@pytest.mark.parametrize("runtime", ["ai_edge_litert", "tflite_runtime"])
def test_batched_invoke_gives_the_single_invoke_results(path, runtime):
    m = Model(path, runtime=runtime, batch=64)
    size = int(np.prod(m.sidecar.input.shape))
    xs = np.random.default_rng(1).normal(size=(150, size))  # three batches, the last one padded
    single = np.stack([m.invoke(x) for x in xs])
    assert m.batched  # a real batch on a second interpreter, not the row-by-row fallback
    np.testing.assert_array_equal(m.invoke_batch(xs), single)
    np.testing.assert_array_equal(m.invoke(xs[0]), single[0])  # the single-window interpreter was not resized
    assert m.invoke_batch(xs[:0]).shape[0] == 0


def test_batched_scores_equal_single_scores(scorer):
    rng = np.random.default_rng(2)
    sc = scorer.model.sidecar
    c = len(sc.channels)
    mean, std = np.asarray(sc.normalisation.mean[:c]), np.asarray(sc.normalisation.std[:c])
    wins = (mean + std * rng.normal(size=(40, 1, c)))
    assert list(scorer.scores(wins)) == [scorer.score(w)[0] for w in wins]


HDF_CYCLE = np.array([[1, 0, 0, 302.0, 310.5, 1350, 45.0, 100]])  # dT 8.5 K at 1350 rpm: heat dissipation


def test_hdf_cycle_gets_the_smallest_speed_change_that_the_rules_confirm(scorer):
    sc = scorer.model.sidecar
    p0 = scorer.score(HDF_CYCLE)[0]
    assert p0 > sc.threshold and rules(HDF_CYCLE[0]) == {"HDF"}
    r = search(scorer, HDF_CYCLE, sc.advice, sc.threshold, p0)
    assert r.found and list(r.changes) == [RPM] and r.actions == ()
    old, new = r.changes[RPM]
    assert old == 1350 and 1380 <= new <= 1450 and (new - 1200) % 10 == 0  # just past the boundary, on the grid
    assert r.p_after <= sc.threshold - sc.advice.margin
    advised = HDF_CYCLE[0].copy()
    advised[5] = new
    assert rules(advised) == set()  # the data's own physics agrees
    # smallest: one grid step less is not enough for the model (with the clearance, a few steps)
    less = HDF_CYCLE.copy()
    less[0, 5] = new - 10 - 10 * math.ceil(sc.advice.clearance_z * 178 / 10)
    assert scorer.score(less)[0] > sc.threshold - sc.advice.margin


def test_two_failure_modes_need_two_levers_and_get_them(scorer):
    sc = scorer.model.sidecar
    both = np.array([[1, 0, 0, 302.0, 310.5, 1300, 62.0, 200]])  # HDF and OSF (strain 12400 > 11000 for L)
    assert rules(both[0]) == {"HDF", "OSF"}
    r = search(scorer, both, sc.advice, sc.threshold, scorer.score(both)[0])
    assert r.found and len(r.changes) == 2 and RPM in r.changes
    advised = both[0].copy()
    for name, (_, new) in r.changes.items():
        advised[sc.channels.index(name)] = new
    assert rules(advised) == set()


def test_the_coarse_then_fine_pair_search_is_as_good_as_the_full_grid(scorer):
    sc = scorer.model.sidecar
    both = np.array([[1, 0, 0, 302.0, 310.5, 1300, 62.0, 200]])
    spec = sc.advice.model_copy(update={"actions": [], "clearance_z": 0.0})
    r = search(scorer, both, spec, sc.threshold, 1.0)
    rpm = np.arange(1200, 2801, 10.0)
    tq = np.arange(10, 70.01, 0.5)
    grid = np.array([(a, b) for a in rpm for b in tq])
    wins = np.repeat(both[None], len(grid), axis=0)
    wins[:, 0, 5], wins[:, 0, 6] = grid[:, 0], grid[:, 1]
    p = scorer.scores(wins)
    std = np.asarray(sc.normalisation.std)
    d = np.sqrt(((grid[:, 0] - 1300) / std[5]) ** 2 + ((grid[:, 1] - 62) / std[6]) ** 2)
    best = d[p <= sc.threshold - spec.margin].min()
    assert r.found and r.distance_z <= best * 1.05  # within 5 % of the exhaustive optimum
    assert r.candidates < len(grid) / 5  # for a fraction of the work


def test_no_advice_within_bounds(scorer):
    sc = scorer.model.sidecar
    tight = AdviceSpec(adjustable=parse_adjustable(f"{RPM}:1200:1300:10"), margin=0.4)
    r = search(scorer, HDF_CYCLE, tight, sc.threshold, 1.0)
    assert not r.found and r.p_after is None and r.changes == {}
    assert r.closest and r.closest["probability"] > sc.threshold - tight.margin


def window(row: np.ndarray, ts: float) -> Window:
    return Window(sensor="mill-3", start_ts=ts, end_ts=ts, data=row.copy())


def test_advisor_message_and_rate_limit(scorer):
    counters = Counters()
    adv = Advisor("gw-1", counters, rate_limit_per_hour=1)
    ev = adv.advise(scorer, window(HDF_CYCLE, 1000.0), "a1", 0.996, 0.5)
    (msg,) = outgoing([ev], "gw-1")
    p = msg.payload
    assert msg.kind == "advice" and msg.topic_suffix == "advice" and msg.qos == 1
    assert p["state"] == "advised" and p["alert_id"] == "a1" and p["device_id"] == "gw-1" and p["sensor"] == "mill-3"
    assert list(p["advised"]) == [RPM] and len(p["current"]) == 8 and p["current"][RPM] == 1350
    assert p["changes"][0]["from"] == 1350 and p["changes"][0]["to"] == p["advised"][RPM]
    assert p["bounds"][RPM] == {"min": 1200.0, "max": 2800.0, "step": 10.0}
    assert p["model"] == {"name": "machine-failure", "version": scorer.model.version}
    assert p["advised_probability"] <= p["target"] < p["threshold"] < p["probability"]
    assert "writes to no device" in p["note"]
    json.dumps(p)  # JSON-able as it goes to the outbox
    assert adv.advise(scorer, window(HDF_CYCLE, 2000.0), "a2", 0.996, 0.5) is None  # 2nd in the hour
    assert counters.get("advice.suppressed") == 1
    assert adv.advise(scorer, window(HDF_CYCLE, 4601.0), "a3", 0.996, 0.5) is not None  # an hour later


def test_advisor_override_replaces_the_sidecar_bounds_and_is_checked(scorer):
    adv = Advisor("gw", Counters(), adjustable=parse_adjustable(f"{RPM}:1200:1300:10"))
    p = outgoing([adv.advise(scorer, window(HDF_CYCLE, 0.0), "a", 0.996, 0.5)])[0].payload
    assert p["state"] == "no_advice" and "reason" in p and p["advised"] == {}
    assert list(p["bounds"]) == [RPM]
    bad = Advisor("gw", Counters(), adjustable=parse_adjustable("Speed:1:2:1"))
    assert bad.check(scorer.model.sidecar) and "not one of the model's channels" in bad.check(scorer.model.sidecar)[0]


def test_no_advice_for_models_without_an_advice_section():
    m = Model(bundled_model("pump-anomaly"))
    s = Scorer(m, sidecar_normaliser(m))
    assert Advisor("gw", Counters()).advise(s, window(np.zeros((10, 8)), 0.0), "a", 2.0, 1.0) is None


@pytest.mark.parametrize("text, reason", [
    ("rpm:1:2", "expected channel:min:max:step"), ("rpm:a:2:1", "must be numbers"),
    ("rpm:3:2:1", "min <= max"), ("rpm:1:2:0", "step > 0"),
])
def test_parse_adjustable_names_the_bad_item(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_adjustable(text)


def test_parse_adjustable_keeps_colons_in_names():
    assert parse_adjustable("a:b:1:2:0.5")[0].channel == "a:b"


def test_check_advice_and_a_sidecar_with_bad_advice_is_refused(tmp_path):
    spec = AdviceSpec(adjustable=parse_adjustable("x:0:1e9:1e-3"), actions=[{"name": "t", "set": {"y": 0}}])
    problems = check_advice(["x"], spec)
    assert any("more than" in p for p in problems) and any("unknown channel 'y'" in p for p in problems)
    dst = tmp_path / MF.name
    shutil.copy(MF, dst)
    sc = json.loads(MF.with_suffix(".json").read_text())
    sc["advice"]["adjustable"][0]["channel"] = "Speed"
    dst.with_suffix(".json").write_text(json.dumps(sc))
    with pytest.raises(ModelError, match="adjustable channel 'Speed'"):
        Model(dst)
