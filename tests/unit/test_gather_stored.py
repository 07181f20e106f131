"""The gathered channels' sensors (``sources``) in the teach-in's state files, beyond the plain restart
(tests/unit/test_gather.py): a model change refits from the stored readings and keeps them; a file whose ``sources``
cannot be used is set aside with a warning and its channels are gathered again, not taken without their sensors.
Real pipelines on real files in a temporary state directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from agent.bundled import bundled_model
from agent.calibrate import Calibrator
from agent.clean import CleaningPolicy
from agent.counters import Counters
from agent.detectors import open_model
from agent.pipeline import Pipeline
from tests.unit.test_gather import _Clock, _machine, _pipeline

GATHERED = {"x": ["M"], "y": ["M"], "value": ["F"]}


def _updated_model(tmp_path: Path) -> Path:
    """The bundled generic detector in another version: another sha256, the same detector."""
    spec = json.loads(Path(bundled_model("generic")).read_text())
    spec["version"] = "1.1.1"
    path = tmp_path / "generic-1.1.1.json"
    path.write_text(json.dumps(spec))
    return path


def _on(model: Path, state: Path, c: Counters, clock: _Clock, samples: int = 50) -> Pipeline:
    return Pipeline(open_model(model), c, state, calibration_samples=samples, summary_interval_s=1e9, clock=clock,
                    live=True, cleaning=CleaningPolicy(align_period_s=1.0, align_sensor="pump-1"))


@pytest.mark.parametrize("how", ["restart", "reload-model", "calibrator"])
def test_a_model_change_keeps_the_gathered_sensors(tmp_path, how):
    """The model changes (a new version at a restart, or the reload-model command): the calibration is refitted from
    the stored readings and written again, with the sensors of each channel still in it; after the next restart
    T's bare number is counted, not written into F's ``value`` (it used to fill it: the refit dropped them). A
    Calibrator told no sensors (``calibrator``) keeps those of the file it refits."""
    state = tmp_path / "state"
    state.mkdir()
    clock = _Clock()
    p = _pipeline(state, 50, Counters(), clock)
    _machine(p, clock, 0, 120)
    assert json.loads((state / "calibration.json").read_text())["sources"] == GATHERED
    model = _updated_model(tmp_path)
    if how == "restart":
        p = _on(model, state, Counters(), clock)
    elif how == "reload-model":
        p.swap_model(open_model(model))
    else:
        assert Calibrator(open_model(model).with_channels(list(GATHERED)), 50, state).result is not None
    stored = json.loads((state / "calibration.json").read_text())
    assert stored["model_sha256"] == open_model(model).sha256  # refitted for the new model
    assert stored["sources"] == GATHERED
    c = Counters()
    p = _on(model, state, c, clock)
    assert p.gather.sources == GATHERED and p.calibrator.result is not None
    _machine(p, clock, 1000, 30, late=True)
    assert c.get("reject.not_a_channel") == 30


def test_a_calibration_with_unusable_sources_is_set_aside_and_its_channels_gathered_again(tmp_path, caplog):
    """calibration.json whose ``sources`` is no channel -> sensors map: set aside with a warning (as before) and its
    channels are not taken without their sensors (they were, for good: T then filled F's ``value``); they are
    gathered again, T heard in the gathering gets a channel of its own, and the new map is stored."""
    clock = _Clock()
    p = _pipeline(tmp_path, 50, Counters(), clock)
    _machine(p, clock, 0, 120)
    path = tmp_path / "calibration.json"
    data = json.loads(path.read_text())
    data["sources"] = {"x": "M"}
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        p = _pipeline(tmp_path, 50, Counters(), clock)
        assert list(p.model.sidecar.channels) == [] and p.gather.sources is None  # gathering again
        _machine(p, clock, 1000, 120, late=True)
    assert any("calibration.json is unusable (sources must map" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("calibration.json.corrupt-*"))
    assert list(p.model.sidecar.channels) == ["x", "y", "F", "T"]
    assert json.loads(path.read_text())["sources"] == {"x": ["M"], "y": ["M"], "F": ["F"], "T": ["T"]}


@pytest.mark.parametrize("bad", ["{not json", '{"x": "M"}'])
def test_a_running_teach_in_with_unusable_sources_is_set_aside_and_its_channels_gathered_again(tmp_path, caplog, bad):
    """teach-in.npz whose ``sources`` is not JSON or no channel -> sensors map: its channels are gathered again (they
    were taken, and the teach-in resumed without the sensors, silently); the checkpoint is set aside with a warning
    when the new teach-in would resume it, like the other unusable state files, and the teach-in starts again."""
    clock = _Clock()
    p = _pipeline(tmp_path, 10**6, Counters(), clock)
    _machine(p, clock, 0, 120)
    assert p.calibrator.checkpoint()
    path = tmp_path / "teach-in.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["sources"] = np.asarray(bad)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with caplog.at_level(logging.WARNING):
        p = _pipeline(tmp_path, 10**6, Counters(), clock)
        assert list(p.model.sidecar.channels) == [] and p.gather.sources is None  # gathering again
        _machine(p, clock, 1000, 120)
    assert list(p.model.sidecar.channels) == ["x", "y", "value"] and p.gather.sources == GATHERED
    assert p.calibrator.active and not p.calibrator.resumed  # the teach-in starts again
    assert any("teach-in.npz is unusable" in r.getMessage() and "sources" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("teach-in.npz.corrupt-*"))
