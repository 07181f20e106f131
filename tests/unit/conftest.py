"""Fixtures shared by the unit tests that run the pipeline on the real bundled model and demo recording."""

from __future__ import annotations

import pytest

from agent.bundled import bundled_model, demo_recording_path
from agent.counters import Counters
from agent.infer import Model
from agent.records import Reading
from agent.sources.replay import read_recording


@pytest.fixture(scope="module")
def model() -> Model:
    """The bundled pump-anomaly model (the daemon's default)."""
    return Model(bundled_model("pump-anomaly"))


@pytest.fixture(scope="module")
def recording() -> list[Reading]:
    """The bundled demo recording (SKAB valve1/1), every reading."""
    return list(read_recording(demo_recording_path(), Counters()))
