"""Derived features: the fixed operations, their load-time checks, and that the agent feeds them to the model."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.bundled import bundled_dir
from agent.calibrate import fit, sidecar_normaliser
from agent.derive import DerivedSpec, Deriver, check_derived
from agent.infer import Model, ModelError, Scorer

ROOT = Path(__file__).resolve().parents[2]
MF = bundled_dir() / "machine-failure.tflite"
CH = ["a", "b", "c"]


def spec(**kw) -> DerivedSpec:
    return DerivedSpec(**{"name": "d", "op": "product", "a": "a", "b": "b", **kw})


def test_operations_with_scale_and_offset():
    raw = np.array([[2.0, 4.0, -1.0], [3.0, 0.5, 2.0]])
    d = Deriver(CH, [spec(name="p", scale=0.5), spec(name="diff", op="difference", b="c", offset=1.0),
                     spec(name="r", op="ratio", a="a", b="b")])
    out = d(raw)
    assert out.shape == (2, 6)
    np.testing.assert_array_equal(out[:, :3], raw)  # channels first, unchanged
    np.testing.assert_allclose(out[:, 3], 0.5 * raw[:, 0] * raw[:, 1])
    np.testing.assert_allclose(out[:, 4], raw[:, 0] - raw[:, 2] + 1.0)
    np.testing.assert_allclose(out[:, 5], raw[:, 0] / raw[:, 1])
    assert d(raw[None]).shape == (1, 2, 6)  # windows of windows (batched scoring)
    assert Deriver(CH, [])(raw) is raw


def test_ratio_denominator_is_guarded_at_run_time():
    d = Deriver(CH, [spec(op="ratio")])
    out = d(np.array([[1.0, 0.0, 0.0], [1.0, -0.0, 0.0]]))
    assert np.all(np.isfinite(out))  # a cleaning override that admits 0 gives a huge value, never inf/NaN


@pytest.mark.parametrize("derived, ranges, reason", [
    ([spec(a="nope")], {}, "unknown channel 'nope'"),
    ([spec(name="a")], {}, "name already used by a channel"),
    ([spec(), spec()], {}, "name given twice"),
    ([spec(scale=0.0)], {}, "scale 0"),
    ([spec(scale=math.inf)], {}, "finite"),
    ([spec(op="ratio")], {}, "exclude 0"),
    ([spec(op="ratio")], {"b": (-1.0, 1.0)}, "exclude 0"),
])
def test_check_derived_names_the_problem(derived, ranges, reason):
    problems = check_derived(CH, derived, ranges)
    assert any(reason in p for p in problems), problems


def test_check_derived_accepts_a_safe_ratio():
    assert check_derived(CH, [spec(op="ratio")], {"b": (0.5, 10.0)}) == []
    assert check_derived(CH, [spec(op="ratio")], {"b": (-10.0, -0.1)}) == []


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / MF.name
    shutil.copy(MF, dst)
    shutil.copy(MF.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_a_sidecar_with_a_bad_derived_feature_is_refused(tmp_path):
    p = _copy(tmp_path)
    sc = json.loads(p.with_suffix(".json").read_text())
    sc["derived"][1]["b"] = "Speed"
    p.with_suffix(".json").write_text(json.dumps(sc))
    with pytest.raises(ModelError, match="unknown channel 'Speed'"):
        Model(p)
    sc["derived"][1]["b"] = "Rotational speed [rpm]"
    sc["derived"] = sc["derived"][:2]  # one value too many in mean/std, and the input size differs
    p.with_suffix(".json").write_text(json.dumps(sc))
    with pytest.raises(ModelError, match="one value per channel and derived feature"):
        Model(p)


def test_the_scorer_appends_the_derived_features_before_normalising():
    m = Model(MF)
    sc = m.sidecar
    assert [d.name for d in sc.derived] == ["dT [K]", "power [W]", "strain [min Nm]"]
    raw = np.array([[0.0, 1.0, 0.0, 300.1, 309.9, 1500.0, 42.0, 120.0]])
    air, proc, rpm, tq, wear = raw[0, 3:]
    by_hand = np.concatenate([raw[0], [proc - air, tq * rpm * 2 * math.pi / 60, wear * tq]])
    z = (by_hand - np.asarray(sc.normalisation.mean)) / np.asarray(sc.normalisation.std)
    score, contributions, _ = Scorer(m, sidecar_normaliser(m)).score(raw)
    assert score == m.invoke(z)[0]
    assert list(contributions) == sc.columns  # contributions name the derived features too


def test_teach_in_normalises_the_derived_features(tmp_path):
    p = _copy(tmp_path)
    sc = json.loads(p.with_suffix(".json").read_text())
    sc["calibration"] = {"samples": 50, "fit": ["normalisation"]}
    p.with_suffix(".json").write_text(json.dumps(sc))
    m = Model(p)
    rng = np.random.default_rng(0)
    normal = np.column_stack([np.ones(60), np.zeros(60), np.zeros(60), rng.normal(300, 2, 60), rng.normal(310, 1.5, 60),
                              rng.normal(1500, 100, 60), rng.normal(40, 5, 60), rng.uniform(0, 200, 60)])
    cal = fit(m, normal)
    full = Deriver(m.sidecar.channels, m.sidecar.derived)(normal)
    assert len(cal.mean) == 11
    np.testing.assert_allclose(cal.mean, full.mean(axis=0))
    np.testing.assert_allclose(cal.std[8:], full.std(axis=0)[8:])


def test_model_info_shows_and_checks_the_derived_features():
    r = subprocess.run([sys.executable, "-m", "agent", "model", "info", str(MF)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["checks"]["derived"] == "ok" and info["checks"]["advice"] == "ok"
    power = next(d for d in info["derived"] if d["name"] == "power [W]")
    assert power["formula"] == "power [W] = 0.10472 × (Torque [Nm] × Rotational speed [rpm])"
    # the feature at the channels' means is close to the training mean of the feature: units and constant right
    assert abs(power["at_channel_means"] - power["sidecar_mean"]) / power["sidecar_mean"] < 0.05


def test_one_row_gives_the_numbers_of_the_array_path():
    """A window of one reading is derived with Python floats: bit-for-bit what the numpy path gives a block."""
    d = Deriver(CH, [spec(op="product", scale=0.1047, offset=-3.0), spec(name="e", op="difference", a="c", b="a"),
                     spec(name="f", op="ratio"), spec(name="g", op="ratio", a="c", b="b", scale=-2.0)])
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(400, 3)) * rng.choice([1e-15, 1e-3, 1.0, 1e9], size=(400, 1))
    rows[::7, 1] = 0.0
    rows[3::7, 1] = -0.0
    rows[5::11, 1] = np.nan  # the cleaner never passes one, but the two paths must still agree
    rows[6::11, 0] = np.inf
    with np.errstate(invalid="ignore"):  # inf x 0 in the array path
        block = d(rows)
    for k, row in enumerate(rows):
        for one in (row, row[None, :]):
            got = d(one)
            assert got.shape == one.shape[:-1] + (7,)
            assert np.array_equal(got.reshape(-1), block[k], equal_nan=True), k
            assert np.array_equal(np.signbit(got.reshape(-1)), np.signbit(block[k])), k
