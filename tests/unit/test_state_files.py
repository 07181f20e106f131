"""State files as a power cut, a full disk or an attacker leave them: the agent starts, sets a bad file aside as
``<name>.corrupt-<time>`` with a warning, and never reads NaN into its decisions (issue 12 items 9 and 10)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from agent.app import Agent
from agent.calibrate import Calibrator, parse_calibration
from agent.control import load_overrides
from agent.detectors import open_model, resolve
from agent.counters import Counters
from agent.evidence import EvidenceStore
from agent.files import StateDirError
from agent.outbox import Outbox
from agent.records import Outgoing, message_bytes
from agent.settings import load_settings
from tests.conftest import ROOT

NASTY = [
    b"", b"[]", b"null", b"42", b'"x"', b"{", b"\x00\xff" * 100, b'{"threshold": NaN}', b'{"threshold": -1}',
    b'{"threshold": 1e999}', b'{"threshold": 1' + b'0' * 400 + b'}', b'{"threshold": true}', b'{"threshold": "2"}', b'{"other": 1}', b"[" * 10000,
]


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


# -- overrides.json ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", NASTY)
def test_a_bad_overrides_file_is_set_aside_with_a_warning(tmp_path: Path, content: bytes, caplog) -> None:
    caplog.set_level(logging.WARNING)
    path = tmp_path / "overrides.json"
    path.write_bytes(content)
    assert load_overrides(path) == {}
    assert not path.exists() and len(_aside(path)) == 1
    assert "moved aside" in caplog.text


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=200), st.dictionaries(st.text(max_size=12), st.one_of(
    st.floats(), st.integers(), st.none(), st.text(max_size=5))).map(lambda d: json.dumps(d).encode())))
def test_overrides_from_any_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "overrides.json"
    path.write_bytes(content)
    got = load_overrides(path)
    assert got == {} or (set(got) == {"threshold"} and math.isfinite(got["threshold"]) and got["threshold"] > 0)
    if path.exists():  # kept only when it was usable as it stands
        assert got or json.loads(content) == {}
    for f in _aside(path):
        f.unlink()
    path.unlink(missing_ok=True)


# -- calibration.json -------------------------------------------------------------------------------------------


def _calibration(model, **changes) -> bytes:
    data = {"model_sha256": model.sha256, "channels": list(model.sidecar.channels), "mean": [1.0] * 8,
            "std": [0.5] * 8, "threshold": 1.2, "samples": 400, "fitted_at": 1.0, **changes}
    return json.dumps(data).encode()


@pytest.mark.parametrize("changes", [
    {"threshold": float("nan")}, {"threshold": float("inf")}, {"threshold": 0}, {"std": [float("nan")] * 8},
    {"mean": [1.0] * 7}, {"std": [-1.0] * 8}, {"channels": "abc"}, {"samples": "many"}, {"extra": 1},
    {"threshold": 10**400}, {"mean": [10**400] * 8},
])
def test_a_calibration_with_nan_or_wrong_shapes_is_set_aside_and_teach_in_starts_again(tmp_path, model, changes, caplog):
    caplog.set_level(logging.WARNING)
    (tmp_path / "calibration.json").write_bytes(_calibration(model, **changes))
    cal = Calibrator(model, 400, tmp_path)
    assert cal.result is None and cal.active
    assert len(_aside(tmp_path / "calibration.json")) == 1 and "moved aside" in caplog.text


def test_a_good_calibration_loads(tmp_path, model):
    (tmp_path / "calibration.json").write_bytes(_calibration(model))
    cal = Calibrator(model, 400, tmp_path)
    assert cal.result is not None and cal.result.threshold == 1.2 and not _aside(tmp_path / "calibration.json")


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), st.fixed_dictionaries({}, optional={
    k: st.one_of(st.floats(), st.integers(), st.none(), st.text(max_size=4), st.lists(st.floats(), max_size=9))
    for k in ("model_sha256", "channels", "mean", "std", "threshold", "samples", "fitted_at")
}).map(lambda d: json.dumps(d).encode())))
def test_calibration_from_any_bytes_never_stops_the_start(tmp_path, model, content):
    d = tmp_path / "cal"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    (d / "calibration.json").write_bytes(content)
    cal = Calibrator(model, 400, d)
    if cal.result is not None:
        r = cal.result
        assert r.threshold is None or (math.isfinite(r.threshold) and r.threshold > 0)
        assert all(math.isfinite(v) for v in (r.mean or []) + (r.std or []))
    elif (d / "calibration.json").exists():
        parse_calibration(content)  # kept only when well formed (a calibration of another model)


# -- edge-agent calibrate only reads ----------------------------------------------------------------------------


def test_calibrate_reports_an_unusable_calibration_and_checkpoint_and_leaves_them_in_place(tmp_path):
    """``edge-agent calibrate`` (no --reset) may run beside an agent: a damaged calibration.json and teach-in.npz
    are named with the reason on stderr and stay where they are (the agent's own start sets them aside)."""
    state = tmp_path / "state"
    state.mkdir()
    files = {state / "calibration.json": b"{not json", state / "teach-in.npz": b"not a zip"}
    for path, content in files.items():
        path.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(EDGE_AGENT_STATE_DIR=str(state), EDGE_AGENT_MODEL__PATH="pump-anomaly")
    r = subprocess.run([sys.executable, "-m", "agent", "calibrate"], capture_output=True, text=True, env=env,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"calibrated": False}
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, r.stderr
    assert f"warning: {state / 'calibration.json'} is unusable (Expecting property name" in warnings[0]
    assert f"warning: {state / 'teach-in.npz'} is unusable (the running teach-in is unreadable:" in warnings[1]
    assert all("left in place" in w for w in warnings) and "moved aside" not in r.stderr
    assert {p: p.read_bytes() for p in files} == files  # both still there, untouched
    assert sorted(p.name for p in state.iterdir()) == ["calibration.json", "teach-in.npz"]  # nothing set aside


def test_a_read_only_calibrator_refits_another_model_but_writes_and_sets_aside_nothing(tmp_path, caplog):
    """The other path that used to write while showing: a calibration of another model is refitted from the stored
    readings (shown), not saved; a damaged calibration-feedback.npz read on the way is reported, not moved."""
    caplog.set_level(logging.WARNING)
    spec = json.loads(resolve("generic").read_text())
    first = open_model("generic").with_channels(["a", "b"])
    taught = Calibrator(first, 300, tmp_path)
    rng = np.random.default_rng(3)
    for i, row in enumerate(np.c_[20 + rng.normal(0, 0.1, 300), 3 + rng.normal(0, 0.2, 300)]):
        taught.add(row, 1.7e9 + i)
    assert taught.result is not None
    (tmp_path / "calibration-feedback.npz").write_bytes(b"not a zip")
    spec["version"] = "9.9.9"
    (tmp_path / "g2.json").write_text(json.dumps(spec))
    other = open_model(tmp_path / "g2.json").with_channels(["a", "b"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    shown = Calibrator(other, 300, tmp_path, read_only=True)
    assert shown.result is not None and shown.result.model_sha256 == other.sha256  # refitted for the other model
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing moved
    [(path, why)] = shown.unusable.found
    assert path == tmp_path / "calibration-feedback.npz" and "the readings feedback folded in are forgotten" in why
    assert "moved aside" not in caplog.text

    agent_side = Calibrator(other, 300, tmp_path)  # the agent: sets it aside and saves the refit
    assert agent_side.unusable.found == [] and _aside(tmp_path / "calibration-feedback.npz")
    assert json.loads((tmp_path / "calibration.json").read_text())["model_sha256"] == other.sha256


# -- evidence.db and outbox.db ------------------------------------------------------------------------------------


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(min_size=1, max_size=2000), st.just(b"SQLite format 3\x00" + b"\x00" * 200)))
def test_evidence_and_outbox_from_any_bytes(tmp_path, content):
    d = tmp_path / "db"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    (d / "evidence.db").write_bytes(content)
    (d / "outbox.db").write_bytes(content)
    store = EvidenceStore(d / "evidence.db")
    assert store.add("a1", "s", {"channels": ["x"], "ts": [1.0], "values": [[1.0]]}) > 0
    assert store.counts()["true_positive"] == 0
    store.close()
    box = Outbox(d / "outbox.db", Counters())
    assert box.put(Outgoing("summary", "summary", {"x": 1})) > 0
    box.close()


def test_the_evidence_store_does_not_claim_corruption_when_it_cannot_open_the_file(tmp_path, caplog):
    """SQLite cannot open it (here: a directory where the file should be; on a gateway: permissions, a read-only or
    full disk): that is not the file's fault, and moving it aside would help nothing."""
    caplog.set_level(logging.WARNING)
    (tmp_path / "evidence.db").mkdir()
    with pytest.raises(StateDirError) as e:
        EvidenceStore(tmp_path / "evidence.db")
    assert "cannot open evidence.db" in str(e.value)
    assert "corrupt" not in caplog.text and (tmp_path / "evidence.db").is_dir() and not _aside(tmp_path / "evidence.db")
    (tmp_path / "outbox.db").mkdir()
    with pytest.raises(StateDirError):
        Outbox(tmp_path / "outbox.db", Counters())
    assert "corrupt" not in caplog.text


# -- the whole agent: it starts with any of them --------------------------------------------------------------


@pytest.mark.parametrize("name", ["overrides.json", "calibration.json", "evidence.db", "outbox.db", "calibration.npz"])
@pytest.mark.parametrize("content", [b"[]", b"\x00garbage\xff" * 50, b'{"threshold": NaN}'])
def test_the_agent_starts_with_a_bad_state_file_and_sets_it_aside(tmp_path, name, content, caplog):
    caplog.set_level(logging.WARNING)
    state = tmp_path / "state"
    state.mkdir()
    (state / name).write_bytes(content)
    a = Agent(load_settings(None, {"EDGE_AGENT_STATE_DIR": str(state), "EDGE_AGENT_DEVICE_ID": "gw"}))
    try:
        st = a.status()
        assert st["threshold"] > 0 and math.isfinite(st["threshold"]) and st["overrides"] == {}
        if name != "calibration.npz":  # only read when the calibration is for another model
            assert _aside(state / name), f"{name} was not set aside"
            assert "corrupt" in caplog.text or "moved aside" in caplog.text
    finally:
        a.outbox.close()
        a.evidence.close()


def test_no_message_ever_carries_nan():
    body = message_bytes({"score": float("nan"), "p": [1.0, float("inf")], "n": {"x": -float("inf")}, "ok": 1.5})
    assert json.loads(body) == {"score": None, "p": [1.0, None], "n": {"x": None}, "ok": 1.5}
    import numpy as np

    assert json.loads(message_bytes({"v": np.float32("nan"), "w": np.float64(2.0)})) == {"v": None, "w": 2.0}


def test_a_summary_with_nan_is_stored_and_sent_as_valid_json(tmp_path):
    """NaN in a summary (a NaN calibration once gave `"drift": NaN`) must never reach the broker as invalid JSON."""
    box = Outbox(tmp_path / "outbox.db", Counters())
    box.put(Outgoing("summary", "summary", {"drift": {"Current": float("nan")}, "score": {"max": float("inf")}}))
    row = box.pending(1)[0]

    def strict(name):
        raise ValueError(name)

    assert json.loads(row.payload, parse_constant=strict) == {"drift": {"Current": None}, "score": {"max": None}}
    box.close()
