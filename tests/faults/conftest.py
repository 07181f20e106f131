"""Fixtures for the fault-injection tests: a broker that keeps sessions across a restart, a recorder whose session
survives it, recordings with faults, a pre-taught state dir, and read-only looks into the agent's outbox.

The session broker of ``tests/conftest.py`` keeps nothing across ``stop()``/``start()`` (persistence off), so a
recorder reconnecting after a restart could miss what the agent publishes in the first milliseconds. Here the broker
persists its sessions and the recorder uses a persistent session (QoS 1): whatever is published while the recorder
is still reconnecting is queued for it by the broker, so "every alert arrives" is a statement about the agent,
never about the test's timing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.bundled import bundled_model, demo_recording_path
from tests.conftest import Broker, Recorder, free_port, run_agent
from tests.conftest import agent_env as _agent_env

BASE = "edge/test-gw"
_FAULT_MODEL: list[Path] = []


def fault_model() -> Path:
    """A frozen alert generator for the fault tests: the pump-anomaly network with the decision settings its timings
    below were measured with (threshold factor 1.25, no receded clear), so that these tests prove the outbox, the
    broker handling and the shutdown, whatever the bundled models' settings become."""
    if not _FAULT_MODEL:
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="edge-agent-fault-model-"))
        src = bundled_model("pump-anomaly")
        shutil.copy(src, d / src.name)
        sc = json.loads(src.with_suffix(".json").read_text())
        sc["version"] = "faults"
        sc["calibration"]["threshold_factor"] = 1.25
        sc["decision"] = {"k": 3, "n": 5, "clear_ratio": 0.6}
        (d / src.with_suffix(".json").name).write_text(json.dumps(sc))
        _FAULT_MODEL.append(d / src.name)
    return _FAULT_MODEL[0]


def agent_env(state_dir: Path, port: int, **extra: Any) -> dict[str, str]:
    """``tests.conftest.agent_env`` running the fault model (above) unless a test names another."""
    return _agent_env(state_dir, port, **{"EDGE_AGENT_MODEL__PATH": str(fault_model()), **extra})


# -- a broker that survives its own restart ---------------------------------------------------------------------


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private mosquitto with persistence: sessions, subscriptions and queued messages survive stop()/start().

    ``user root`` keeps mosquitto from dropping to its own user when the tests run as root (it could not write
    the persistence file in the test's private tmp dir); as another user the line has no effect.
    """
    d = tmp_path / "durable-broker"
    d.mkdir()
    b = Broker(d, extra_conf=(
        f"persistence true\npersistence_location {d}/\nautosave_interval 1\nuser root\n"
        "queue_qos0_messages true\nmax_queued_messages 0\n"
    ))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def durable_recorder(durable_broker: Broker) -> Iterator[Recorder]:
    r = Recorder(durable_broker.port, f"{BASE}/#", durable=True)
    yield r
    r.close()


# -- recordings with faults -------------------------------------------------------------------------------------

SKAB_TIME = "%Y-%m-%d %H:%M:%S"


def demo_rows() -> tuple[str, list[str]]:
    """Header and rows of the bundled SKAB valve1/1 recording (valve fault from row 572 on)."""
    lines = demo_recording_path().read_text().splitlines()
    return lines[0], lines[1:]


def write_recording(path: Path, rows: list[str], copies: int = 1) -> Path:
    """``rows`` (SKAB format) ``copies`` times over, renumbered one second apart from the first row's time."""
    header, _ = demo_rows()
    t0 = datetime.strptime(rows[0].split(";", 1)[0], SKAB_TIME)
    out = [header]
    for i in range(copies * len(rows)):
        fields = rows[i % len(rows)].split(";")
        fields[0] = (t0 + timedelta(seconds=i)).strftime(SKAB_TIME)
        out.append(";".join(fields))
    path.write_text("\n".join(out) + "\n")
    return path


def fault_recording(path: Path, copies: int = 2) -> Path:
    """The end of the demo's valve fault and what follows (demo rows 960..1145, 10:50:33 on) ``copies`` times:
    with the teach-in of the first 400 demo rows the bundled model raises an alert once per copy (vibration and
    flow, ~170 s into the copy) and clears it ~24 s later."""
    _, rows = demo_rows()
    return write_recording(path, rows[960:], copies)


@pytest.fixture(scope="session")
def taught(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding the teach-in of the first 400 demo readings (nothing else), made once per session."""
    d = tmp_path_factory.mktemp("taught")
    _, rows = demo_rows()
    rec = write_recording(d / "teach.csv", rows[:400])
    state = d / "state"
    r = run_agent(agent_env(state, free_port(), EDGE_AGENT_SOURCE__PATH=rec, EDGE_AGENT_DRAIN_TIMEOUT_S="0"))
    assert r.returncode == 0, r.stderr
    assert "teach-in done" in r.stderr, r.stderr
    assert (state / "calibration.json").is_file(), list(state.iterdir())
    return state


def taught_state(taught: Path, state: Path) -> Path:
    """A fresh state dir with the session's teach-in result (no outbox, no alert sequence)."""
    state.mkdir(parents=True)
    for p in taught.glob("calibration*"):
        shutil.copy(p, state / p.name)
    return state


# -- looking into the outbox and the log ------------------------------------------------------------------------


def outbox_snapshot(state: Path) -> tuple[str, list[tuple[str, dict[str, Any]]], int]:
    """(integrity_check result, [(kind, payload)], meta alert_seq) of ``state/outbox.db``, opened read-only.

    Read-only with the default journal mode: SQLite reads the WAL (and its index) of the database, so rows
    committed only to the WAL are seen, and nothing is written or checkpointed.
    """
    db = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True, timeout=10)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone() is None:
            return check, [], 0  # killed after the file was created, before its schema was committed: nothing in it
        rows = [(k, json.loads(p)) for k, p in db.execute("SELECT kind, payload FROM outbox ORDER BY id")]
        seq = db.execute("SELECT value FROM meta WHERE key='alert_seq'").fetchone()
    finally:
        db.close()
    return check, rows, int(seq[0]) if seq else 0


ALERT_LINE = re.compile(r"ALERT (raised|cleared) .*window_end=(\S+)")
SUMMARY_LINE = re.compile(r"SUMMARY (\S+)\.\.(\S+) readings=(\d+) rejected=(\d+) windows=(\d+)")


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def data_time(log_text: str) -> float | None:
    """The latest data time the agent's log shows (summary period ends and alert windows)."""
    times = []
    for m in [*SUMMARY_LINE.finditer(log_text), *ALERT_LINE.finditer(log_text)]:
        try:
            times.append(parse_iso(m.group(2)))
        except ValueError:  # an empty summary period ("None")
            pass
    return max(times) if times else None


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs. mount(2) needs root: like a missing broker, that is a failure that says what to do, never a
    skip (CI runs as root)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.fail("the full-disk test mounts a 1 MB tmpfs and needs root: run the suite as root (as CI does), "
                    "or in a container or VM where you are root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a 1 MB tmpfs for the full-disk test: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
