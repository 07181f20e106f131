"""State files as a power cut, a full disk or an attacker leave them: the agent starts, sets a bad file aside as
``<name>.corrupt-<time>`` with a warning, and never reads NaN into its decisions (issue 12 items 9 and 10)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from agent.app import Agent
from agent.calibrate import Calibrator, parse_calibration
from agent.control import load_overrides
from agent.counters import Counters
from agent.evidence import EvidenceStore
from agent.files import StateDirError
from agent.outbox import Outbox
from agent.records import Outgoing, message_bytes
from agent.settings import load_settings

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
