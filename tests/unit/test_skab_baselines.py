"""models/skab_baselines.py: SKAB's reference detectors re-written in numpy, on tiny data with known answers."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from agent.evaluate import score_file
from tests.unit.test_evaluate import _write_recording

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sb():
    spec = importlib.util.spec_from_file_location("skab_baselines", ROOT / "models" / "skab_baselines.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["skab_baselines"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_spans_are_runs_of_predicted_rows(sb):
    assert sb.spans_of(np.array([0, 1, 1, 0, 1], dtype=bool)) == [(1, 3), (4, 5)]
    assert sb.spans_of(np.array([1, 1], dtype=bool)) == [(0, 2)]
    assert sb.spans_of(np.zeros(3, dtype=bool)) == []


def test_incomplete_beta_and_skab_critical_values(sb):
    for x in (0.01, 0.3, 0.5, 0.9, 0.999):
        assert sb.betainc(2.5, 1.0, x) == pytest.approx(x ** 2.5, rel=1e-12)  # I_x(a, 1) = x^a
        assert sb.betainc(1.0, 7.0, x) == pytest.approx(1 - (1 - x) ** 7, rel=1e-12)  # I_x(1, b)
        f = x * 10
        assert sb.f_cdf(f, 2, 2) == pytest.approx(f / (1 + f), rel=1e-12)  # F(2, 2) CDF
    assert sb.norm_cdf(1.959963984540054) == pytest.approx(0.975, rel=1e-12)
    # SKAB's grid quantiles (linspace(0, 15, 10000) below p = 0.999), as scipy gives them
    assert sb.grid_quantile(sb.norm_cdf, 0.999) == pytest.approx(3.0888088808880885, abs=1e-12)
    assert sb.grid_quantile(lambda v: sb.f_cdf(v, 3, 397), 0.999) == pytest.approx(5.526552655265526, abs=1e-12)
    assert sb.grid_quantile(lambda v: sb.f_cdf(v, 1, 399), 0.999) == pytest.approx(10.988598859885988, abs=1e-12)


def _step_recording(sb, rows=800, step_row=600, channels=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, channels)) + np.array([10.0, -3.0, 50.0])[:channels]
    x[step_row:, 1] += 10.0  # ten sigmas on one channel
    labels = np.zeros(rows, dtype=np.int8)
    labels[step_row:] = 1
    return sb.Recording("step.csv", 1000.0 + np.arange(rows, dtype=np.float64), x, labels)


def test_robust_z_flags_a_step_within_seconds_and_nothing_before(sb):
    rec = _step_recording(sb)
    pred = sb.predict("robust-z", rec, 400, 5.0)
    assert not pred[:600].any()  # teach-in rows never, and the 200 normal rows after them stay quiet
    first = int(np.flatnonzero(pred)[0])
    # the 30 s mean moves by 10 sigma / 30 per second; its spread over teach-in is about sigma / sqrt(30)
    assert 600 <= first <= 605 and pred[first:].all()
    m = sb.score(rec, pred, 400)
    assert (m.counts.tp, m.counts.fp, m.counts.fn) == (800 - first, 0, first - 600)
    assert m.segments_alerted == 1 and m.false_alerts == 0 and m.segments[0].delay_s == first - 600


def test_robust_z_uses_training_median_and_mad(sb):
    ts = np.arange(100, dtype=np.float64)
    x = np.zeros((100, 1))
    x[::2] = 1.0  # trailing 2 s mean of 0,1,0,1: always 0.5 -> MAD 0 -> floored scale
    z = sb.RobustZ(threshold=5, window_s=2).zmax(ts, x, 50)
    assert z[1:50].max() == 0.0
    x[80:] = 3.0
    z = sb.RobustZ(threshold=5, window_s=2).zmax(ts, x, 50)
    assert z[81] == pytest.approx(2.5 / 1e-6)  # (3 - 0.5) / (1e-6 * max(1, 0.5))


Q_FACTOR = (1 + 3.0888088808880885 * math.sqrt(2) / 3 - 2 / 9) ** 3  # SKAB's Q limit / eigenvalue sum (h0 = 1/3)


def test_t2_and_q_on_a_correlated_pair(sb):
    rng = np.random.default_rng(0)
    a = rng.normal(size=400)
    train = np.column_stack([a, a + 0.05 * rng.normal(size=400)])
    model = sb.T2Q(sorted_residual=True).fit(train)  # residual = the smallest eigenvalue, whatever LAPACK's order
    assert model.m == 1  # the first component explains > 85 % of a correlated pair
    assert model.t2_ucl == pytest.approx(1 * 399 * 401 / (400 * 399) * 10.988598859885988)
    xs = (train - train.mean(0)) / train.std(0)
    small = np.linalg.eigvalsh(np.cov(xs.T))[0]
    assert model.q_ucl == pytest.approx(small * Q_FACTOR, rel=1e-9)
    along = np.array([[2.0, 2.0]])  # 2 sigma along the correlation: normal
    across = np.array([[2.0, -2.0]])  # each channel at 2 sigma, but the relation is broken
    far = np.array([[6.0, 6.0]])  # far out along the correlation
    t2, q = model.statistics(np.vstack([along, across, far]))
    assert t2[0] < model.t2_ucl and q[0] < model.q_ucl
    assert t2[1] < model.t2_ucl and q[1] > model.q_ucl  # Q catches the broken relation
    assert t2[2] > model.t2_ucl and q[2] < model.q_ucl  # T² catches the far excursion
    test = np.vstack([np.repeat(along, 20, 0), np.repeat(across, 20, 0), np.repeat(far, 20, 0)])
    pred = model.predict(test)
    # a rolling median of 5: each run is flagged from its 3rd row, the first 4 test rows never
    assert not pred[:22].any() and pred[22:40].all() and pred[42:].all()


def test_t2q_q_limit_sums_eigs_tail_in_lapacks_order_like_skab(sb):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(400, 2))
    train = np.column_stack([base, base @ [[1.0], [0.5]] + 0.1 * rng.normal(size=(400, 1)), rng.normal(size=400)])
    model = sb.T2Q().fit(train)
    xs = (train[:, model.keep] - model.mean) / model.std  # bit for bit the model's scaling: eig's order is fragile
    w = np.linalg.eig(np.cov(xs.T))[0].real
    assert model.eigenvalues.tolist() == pytest.approx(w.tolist())  # as returned, not sorted
    assert model.q_ucl == pytest.approx(w[model.m:].sum() * Q_FACTOR, rel=1e-9)
    assert sb.T2Q(sorted_residual=True).fit(train).q_ucl == pytest.approx(
        np.sort(w)[::-1][model.m:].sum() * Q_FACTOR, rel=1e-9)


def test_rolling_median_is_pandas_rolling(sb):
    out = sb.rolling_median(np.array([5.0, 1, 4, 2, 3, 9, 0]), 5)
    assert np.isnan(out[:4]).all() and out[4:].tolist() == [3.0, 3.0, 3.0]


def test_mset_reproduces_its_memory_and_flags_a_new_state(sb):
    rng = np.random.default_rng(3)
    train = rng.normal(size=(60, 3)) * [1.0, 2.0, 0.5] + [10.0, 20.0, 5.0]
    model = sb.MSET().fit(train)
    assert np.allclose(model.estimate(train[:10]), train[:10], atol=1e-6)  # W is a unit vector for a memory row
    assert model.residual(train[:10]).max() < 1e-6
    away = train[:5] + [0.0, 8.0, 0.0]  # four sigmas on one channel
    assert (model.residual(away) > 0.01).all()


def test_centred_mean_is_skab_movmean(sb):
    def movmean(array, window):  # the notebook's definition, literally
        n = np.size(array)
        y = [np.roll(array.tolist() + [np.nan] * window, i) for i in range(window)]
        with warnings.catch_warnings():  # the padding's last columns are all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            y = np.nanmean(y, axis=0)
        c = math.ceil(window / 2)
        return y[c - 1:n + c - 1]

    v = np.random.default_rng(5).normal(size=150)
    for w in (60, 7, 4):
        assert np.allclose(sb.centred_mean(v, w), movmean(v, w))


def test_trivial_methods_and_the_scorer(sb):
    rec = _step_recording(sb)
    every = sb.predict("all", rec, 400)
    assert not every[:400].any() and every[400:].all()
    m = sb.score(rec, every, 400)
    assert (m.counts.tp, m.counts.fp, m.counts.fn, m.counts.tn) == (200, 200, 0, 0) and m.false_alerts == 0
    assert m == score_file(rec.labels, rec.ts, [(400, 800)], 400)
    nothing = sb.score(rec, sb.predict("none", rec, 400), 400)
    assert nothing.counts.fn == 200 and nothing.alerts == 0
    with pytest.raises(ValueError, match="unknown method"):
        sb.predict("nope", rec, 400)


def test_script_reports_families_and_pooled(sb, tmp_path, capsys):
    data = tmp_path / "data"
    for rel in ("valve1/1.csv", "valve1/2.csv", "other/1.csv"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_recording(data / rel)
    out = tmp_path / "b.json"
    assert sb.main(["--data", str(data), "--train-rows", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "== SKAB T²+Q (PCA)" in text and "leave-one-family-out" in text
    r = json.loads(out.read_text())
    assert r["families"] == ["leak-addition", "valve1", "valve1"]
    for name in ("t2q", "mset", "robust-z", "all", "none"):
        m = r["methods"][name]
        for key in ("tp", "fp", "fn", "tn", "false_alerts", "segments_alerted"):
            assert sum(f[key] for f in m["families"]) == m["pooled"][key] == sum(f[key] for f in m["per_file"])
    assert r["methods"]["all"]["pooled"]["far"] == 1.0 and r["methods"]["none"]["pooled"]["tp"] == 0
    assert set(r["robust_z_lofo"]["chosen"]) == {"leak-addition", "valve1"}


def test_script_on_another_machine_takes_the_channels_from_the_header(sb, tmp_path, capsys):
    """--channels header: a recording with other channels (models/tep_to_csv.py's 52) is scored, not refused;
    --z-window-s sets the robust z's trailing mean in data time (a reading every 3 minutes: 30 readings = 90 min)."""
    data = tmp_path / "tep"
    data.mkdir()
    rng = np.random.default_rng(0)
    n, cols = 600, ["XMEAS1", "XMEAS2", "XMV1"]
    x = rng.normal(0.0, 1.0, (n, len(cols)))
    x[400:, 1] += 20.0  # a step in one channel from row 400
    lines = ["timestamp," + ",".join(cols) + ",anomaly"]
    lines += [f"{1_000_000 + 180 * i}," + ",".join(f"{v:.5f}" for v in x[i]) + f",{int(i >= 400)}" for i in range(n)]
    (data / "fault.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="no column Accelerometer1RMS"):
        sb.main(["--data", str(data), "--train-rows", "300"])
    out = tmp_path / "b.json"
    assert sb.main(["--data", str(data), "--train-rows", "300", "--channels", "header", "--z-window-s", "5400",
                    "--methods", "robust-z,none", "--out", str(out)]) == 0
    capsys.readouterr()
    rz = json.loads(out.read_text())["methods"]["robust-z"]["per_file"][0]
    assert rz["segments_alerted"] == 1 and rz["fp"] == 0
    spans = rz["spans"]
    assert spans[0][0] >= 400 and spans[-1][1] == n  # raised after the step, not before it
