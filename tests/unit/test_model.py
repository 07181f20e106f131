"""The bundled model under both runtimes, and the sidecar checks that refuse a bad model."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.bundled import bundled_dir, bundled_model, demo_recording_path
from agent.calibrate import sidecar_normaliser
from agent.infer import Model, ModelError, Scorer, interpreter_class

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = [bundled_model("pump-anomaly"), bundled_dir() / "machine-failure.tflite"]


def _copy(tmp_path: Path, src: Path = bundled_model("pump-anomaly")) -> Path:
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _edit(path: Path, **changes) -> None:
    sc = json.loads(path.with_suffix(".json").read_text())
    for k, v in changes.items():
        if v is None:
            sc.pop(k, None)
        else:
            sc[k] = v
    path.with_suffix(".json").write_text(json.dumps(sc))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
@pytest.mark.parametrize("runtime", ["ai_edge_litert", "tflite_runtime"])
def test_bundled_models_load_on_both_runtimes(path, runtime):
    m = Model(path, runtime=runtime)
    assert m.runtime == runtime
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.zeros(int(np.prod(m.sidecar.input.shape)))
    out = m.invoke(x)
    assert out.shape == (int(np.prod(m.sidecar.output.shape)),) and np.all(np.isfinite(out))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_both_runtimes_give_the_same_scores(path):
    a, b = Model(path, runtime="ai_edge_litert"), Model(path, runtime="tflite_runtime")
    rng = np.random.default_rng(0)
    sc = a.sidecar
    scorer_a, scorer_b = Scorer(a, sidecar_normaliser(a)), Scorer(b, sidecar_normaliser(b))
    c = len(sc.channels)  # the raw channels (derived features, when the sidecar has any, follow them)
    mean = np.asarray(sc.normalisation.mean or np.zeros(c))[:c]
    std = np.asarray(sc.normalisation.std or np.ones(c))[:c]
    out_scale = a.tensor_details()["output"]["scale"]
    for _ in range(50):
        win = mean + std * rng.normal(size=(sc.window.length, len(sc.channels)))
        sa, sb = scorer_a.score(win)[0], scorer_b.score(win)[0]
        # XNNPACK (litert) and the reference int8 kernels may round one step apart
        assert abs(sa - sb) <= max(4 * out_scale * (1 + abs(sa)) ** 0.5, 1e-6), (sa, sb)


def test_auto_prefers_ai_edge_litert():
    assert interpreter_class("auto")[1] == "ai_edge_litert"


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"sha256": "0" * 64}, "does not match the sidecar"),
        ({"input": {"shape": [1, 81], "dtype": "int8"}}, "input shape"),
        ({"output": {"shape": [1, 80], "dtype": "float32"}}, "output dtype"),
        ({"channels": ["a", "b"]}, "normalisation mean/std must have one value per channel"),
        ({"window": {"length": 11, "hop": 1}}, "features 'raw'"),
        ({"kind": "classifier"}, "kind classifier needs score 'output'"),
        ({"name": None}, "name: Field required"),
        ({"threshold": None}, "threshold: Field required"),
        ({"features": "fft"}, "features must be one of"),
        ({"schema": 2}, "schema"),
        ({"valid_ranges": {"Nope": [0, 1]}}, "unknown channels"),
        # issue 12 item 9: every number finite and sane
        ({"threshold": float("nan")}, "threshold: Input should be a finite number"),
        ({"threshold": float("inf")}, "threshold: Input should be a finite number"),
        ({"threshold": 0}, "threshold: Input should be greater than 0"),
        ({"normalisation": {"method": "zscore", "mean": [0.0] * 8, "std": [float("nan")] * 8}}, "finite number"),
        ({"normalisation": {"method": "zscore", "mean": [0.0] * 8, "std": [-1.0] * 8}}, "must not be negative"),
        ({"decision": {"k": 3, "n": 5, "clear_ratio": float("nan")}}, "finite number"),
        ({"valid_ranges": {"Current": [5, 1]}}, "min 5.0 exceeds max 1.0"),
        ({"window": {"length": 10, "hop": 11}}, "hop (11) must not exceed length (10)"),
        ({"window": {"length": 2_000_000_000, "hop": 1}}, "less than or equal to 65536"),
        # the configuration's bound of decision.k / decision.n (1 to 10000) holds for the sidecar's own too
        ({"decision": {"k": 3, "n": 10_001}}, "decision.n: Input should be less than or equal to 10000"),
        ({"decision": {"k": 20_000, "n": 20_000}}, "decision.k: Input should be less than or equal to 10000"),
        ({"decision": {"k": 0, "n": 5}}, "decision.k: Input should be greater than or equal to 1"),
    ],
)
def test_sidecar_mismatch_is_refused_with_the_reason(tmp_path, change, reason):
    p = _copy(tmp_path)
    _edit(p, **change)
    with pytest.raises(ModelError) as e:
        Model(p)
    assert reason in str(e.value)


def test_a_sha256_mismatch_names_the_sidecar_json_that_holds_the_expected_hash(tmp_path):
    p = _copy(tmp_path)
    _edit(p, sha256="0" * 64)
    with pytest.raises(ModelError) as e:
        Model(p)
    reason = str(e.value)
    assert str(p.with_suffix(".json")) in reason and "0" * 64 in reason, reason  # the file to fix, and its value
    assert hashlib.sha256(p.read_bytes()).hexdigest() in reason, reason  # and the model file's actual hash


def test_missing_sidecar_and_corrupt_model(tmp_path):
    p = _copy(tmp_path)
    p.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="sidecar pump-anomaly.json not found"):
        Model(p)
    p = _copy(tmp_path)
    p.write_bytes(b"garbage" * 100)
    _edit(p, sha256=hashlib.sha256(p.read_bytes()).hexdigest())
    with pytest.raises(ModelError, match="interpreter refused the file"):
        Model(p)
    p.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        Model(p)


def test_bad_model_at_start_exits_78_with_the_reason(tmp_path):
    p = _copy(tmp_path)
    _edit(p, sha256="1" * 64)
    env = {"EDGE_AGENT_MODEL__PATH": str(p), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "agent", "run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert "does not match the sidecar" in r.stderr


def test_a_sidecar_decision_n_over_10000_at_start_exits_78_with_the_reason(tmp_path):
    p = _copy(tmp_path)
    _edit(p, decision={"k": 3, "n": 10_001})
    env = {"EDGE_AGENT_MODEL__PATH": str(p), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "agent", "run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "decision.n: Input should be less than or equal to 10000" in r.stderr and str(p.with_suffix(".json")) in r.stderr
    assert "Traceback" not in r.stderr


def test_model_info_prints_sidecar_tensors_and_checks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agent", "model", "info", str(bundled_model("pump-anomaly"))],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["sidecar"]["name"] == "pump-anomaly"
    assert info["tensors"]["input"]["dtype"] == "int8" and info["tensors"]["input"]["scale"] > 0
    assert set(info["checks"].values()) == {"ok"}
    p = _copy(tmp_path)
    _edit(p, sha256="2" * 64)
    r = subprocess.run([sys.executable, "-m", "agent", "model", "info", str(p)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "does not match" in json.loads(r.stdout)["error"]


def test_demo_recording_is_bundled():
    assert demo_recording_path().is_file()
    assert (demo_recording_path().parent / "LICENSE-SKAB").is_file()


def test_model_info_refuses_a_window_too_large_to_allocate(tmp_path):
    """Issue 12 item 9: a sidecar whose window would allocate 119 GiB passed `model info` and died at start."""
    p = _copy(tmp_path, bundled_dir() / "machine-failure.tflite")
    sc = json.loads(p.with_suffix(".json").read_text())
    assert sc["features"] == "last"  # the input size does not depend on the window length: only the cap refuses it
    _edit(p, window={"length": 60_000, "hop": 1}, calibration={"samples": 0})
    r = subprocess.run([sys.executable, "-m", "agent", "model", "info", str(p)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 78, r.stdout
    assert "window.length x channels" in json.loads(r.stdout)["error"]


@pytest.mark.parametrize("runtime", ["ai_edge_litert", "tflite_runtime"])
@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_one_window_invoke_equals_the_batched_invoke(path, runtime):
    """``invoke`` quantises into buffers kept for one window; ``invoke_batch`` quantises a block: same outputs,
    including inputs far outside the quantised range (clamped) and the previous window's buffer reused."""
    m = Model(path, runtime=runtime)
    size = int(np.prod(m.tensor_details()["input"]["shape"]))
    rng = np.random.default_rng(11)
    xs = rng.normal(size=(300, size)) * rng.choice([0.01, 1.0, 4.0, 1e6], size=(300, 1))
    batch = m.invoke_batch(xs)
    one = np.stack([m.invoke(x) for x in xs])
    assert np.array_equal(one, batch)
    assert len(np.unique(one, axis=0)) > 1  # the outputs really differ (a classifier has few levels)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_invoke_takes_a_window_of_any_shape_and_number_type_and_refuses_a_wrong_size(path):
    m = Model(path, runtime="ai_edge_litert")
    shape = tuple(m.tensor_details()["input"]["shape"])
    size = int(np.prod(shape))
    x = np.random.default_rng(5).normal(size=size) * 3
    want = m.invoke_batch(x[None])[0]
    for form in (x, x.reshape(shape), x.reshape(-1, 1), list(x), x[::-1].copy()[::-1]):  # any shape of its size
        assert np.array_equal(m.invoke(form), want)
    assert np.array_equal(m.invoke(x.astype(np.float32)), m.invoke_batch(x.astype(np.float32)[None])[0])
    for bad in (np.ones(1), np.ones(size + 1)):
        with pytest.raises(ValueError):
            m.invoke(bad)


@pytest.mark.parametrize("runtime", ["ai_edge_litert", "tflite_runtime"])
@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_the_per_window_kernel_scores_bit_for_bit_as_the_general_path(path, runtime):
    """``Scorer`` binds a kernel for windows of the sidecar's shape (what the pipeline calls per reading): score
    and contributions equal the general method's bit for bit, derived features included (machine-failure), far
    outside the normal range too; another shape goes to the general method."""
    m = Model(path, runtime=runtime)
    scorer = Scorer(m, sidecar_normaliser(m))
    assert "score" in vars(scorer)  # the kernel is bound on the instance
    sc = m.sidecar
    shape = (sc.window.length, len(sc.channels))
    rng = np.random.default_rng(3)
    norm = sidecar_normaliser(m)
    mean, std = norm.mean[: shape[1]], norm.std[: shape[1]]
    scores = set()
    for k in range(200):
        w = mean + std * rng.normal(size=shape) * [0.5, 1.0, 3.0, 50.0][k % 4]
        got, want = scorer.score(w, "s"), Scorer.score(scorer, w, "s")
        assert got[0] == want[0]
        assert dict(got[1]) == dict(want[1])
        scores.add(got[0])
    assert len(scores) > 2  # the windows really score differently (a classifier has few levels)
    longer = mean + std * rng.normal(size=(shape[0] + 1, shape[1]))
    if sc.features == "raw":  # not the model's input size: refused by the general path, as before
        with pytest.raises(ValueError):
            scorer.score(longer)
    else:  # ``last``: the general path scores the newest row
        assert scorer.score(longer)[0] == Scorer.score(scorer, longer)[0] == scorer.score(longer[-1:])[0]


class _Arithmetic:
    """A stand-in for a model with a recipe and kind no bundled model has (``last`` windows of 5 readings into an
    autoencoder or a regressor): its output is arithmetic on its input, the same for both of the scorer's paths, so
    that the test checks the scorer's own arithmetic (the runtimes are covered above with the bundled models)."""

    def __init__(self, sidecar):
        self.sidecar = sidecar
        self.run_one = lambda x: np.tanh(x * 0.7)  # a fresh array per call, as get_tensor's

    def invoke(self, x):
        return self.run_one(np.asarray(x, dtype=np.float64).reshape(-1))


@pytest.mark.parametrize("kind", ["autoencoder", "regressor"])
def test_the_per_window_kernel_takes_the_recipe_and_kind_of_the_sidecar(kind):
    from agent.model_spec import WindowSpec
    from agent.window import Normaliser

    sc = Model(bundled_model("pump-anomaly"), runtime="ai_edge_litert").sidecar
    sc = sc.model_copy(update={"features": "last", "window": WindowSpec(length=5, hop=1), "kind": kind,
                               "target": sc.channels[2] if kind == "regressor" else None})
    rng = np.random.default_rng(8)
    scorer = Scorer(_Arithmetic(sc), Normaliser(rng.normal(size=8), rng.uniform(0.5, 2.0, size=8)))
    assert "score" in vars(scorer)
    for _ in range(50):
        w = rng.normal(size=(5, 8)) * 3
        got, want = scorer.score(w), Scorer.score(scorer, w)
        assert got[0] == want[0] and dict(got[1]) == dict(want[1])
