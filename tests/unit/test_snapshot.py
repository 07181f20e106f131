"""Status and stats read the pipeline's published snapshot, never its live state from another thread.

Issue 12 item 6: with thousands of sensors, ``Cleaner.stale`` iterated the sensors dict on the health and main
threads while the pipeline thread added to it (``RuntimeError: dictionary changed size during iteration``).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from agent.app import Agent
from agent.records import PipelineSnapshot, Reading
from agent.settings import load_settings


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    settings = load_settings(None, {
        "EDGE_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_DEVICE_ID": "gw",
        "EDGE_AGENT_CALIBRATION__SAMPLES": "0", "EDGE_AGENT_CLOCK_SYNC_REQUIRED": "false",
        "EDGE_AGENT_MODEL__PATH": "pump-anomaly",
        "EDGE_AGENT_CLEANING__MAX_SENSORS": "10000",
    })
    a = Agent(settings)
    yield a
    a.outbox.close()
    a.evidence.close()


def _reading(channels: list[str], sensor: str, ts: float) -> Reading:
    return Reading(ts=ts, values={c: 1.0 for c in channels}, sensor=sensor)


def test_status_and_stats_survive_thousands_of_new_sensors(agent: Agent) -> None:
    """2,000 sensors, then 2,000 new ones while another thread builds status and stats without pause."""
    channels = list(agent.pipeline.model.sidecar.channels)
    for i in range(2000):
        agent.pipeline.process(_reading(channels, f"s{i}", 1000.0))
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                agent.status()
                agent.stats()
                agent.board.degraded_reasons()
            except BaseException as e:  # noqa: BLE001 - recorded: the test fails with it
                errors.append(e)
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for i in range(2000, 4000):
            agent.pipeline.process(_reading(channels, f"s{i}", 1001.0))
            for j in range(i - 3, i):  # and older sensors keep changing too
                agent.pipeline.process(_reading(channels, f"s{j}", 1001.0 + i))
    finally:
        done.set()
        t.join(10)
        sys.setswitchinterval(old)
    assert not errors, f"status/stats raced with the pipeline thread: {errors[0]!r}"
    snap = agent.pipeline.snapshot
    assert isinstance(snap, PipelineSnapshot)
    assert snap.sensors == 4000


def test_the_snapshot_is_immutable_and_replaced_whole(agent: Agent) -> None:
    channels = list(agent.pipeline.model.sidecar.channels)
    agent.pipeline.process(_reading(channels, "a", 1.0))
    first = agent.pipeline.snapshot
    assert isinstance(first.stale_channels, frozenset)
    with pytest.raises(AttributeError):
        first.threshold = 0.0  # type: ignore[misc]
    # a channel goes stale (missing for longer than max_hold_s): a new snapshot says so, the old one is unchanged
    agent.pipeline.process(Reading(ts=2.0, values={c: 1.0 for c in channels[1:]}, sensor="a"))
    agent.pipeline.process(Reading(ts=20.0, values={c: 1.0 for c in channels[1:]}, sensor="a"))
    second = agent.pipeline.snapshot
    assert second is not first
    assert f"a/{channels[0]}" in second.stale_channels and not first.stale_channels
    assert agent.status()["reasons"] == [f"channel stale: a/{channels[0]}"]
