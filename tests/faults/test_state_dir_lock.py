"""One agent per state directory. A second agent on the same directory (a unit started twice, a manual
``edge-agent run`` beside the service) would share the outbox, the teach-in files and the MQTT client id — the
broker would then throw each out in turn. It is refused with exit 78 naming the pid of the running one, and
``calibrate --reset`` under a running agent is refused with exit 75 naming the command that does it live. A lock
left by a killed agent (SIGKILL, a power cut) blocks nothing: the kernel let go of it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_agent, start_agent, wait_for
from tests.faults.conftest import BASE, agent_env


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_second_agent_on_one_state_dir_is_refused_and_the_first_runs_on(tmp_path: Path, live_broker, agents,
                                                                          sig: int) -> None:
    state = tmp_path / "state"
    env = agent_env(state, live_broker.port, EDGE_AGENT_SOURCE__SPEED="1", EDGE_AGENT_DRAIN_TIMEOUT_S="2")
    first = start_agent(env, tmp_path / "logs")
    agents.append(first)
    wait_for(lambda: "connected to" in first.log, timeout=60, what="the first agent connected")

    second = run_agent(env, timeout=60)
    assert second.returncode == 78, second.stderr
    assert f"state directory {state}: in use by another edge-agent (pid {first.proc.pid})" in second.stderr
    assert "EDGE_AGENT_STATE_DIR" in second.stderr and "Traceback" not in second.stderr

    reset = run_agent(env, "calibrate", "--reset", timeout=60)
    assert reset.returncode == 75, reset.stderr
    assert f"(pid {first.proc.pid})" in reset.stderr and f"{BASE}/cmd/calibrate" in reset.stderr
    assert "removed" not in reset.stdout

    assert first.alive(), first.log
    assert first.log.count("connected to") == 1, first.log  # nobody took its client id: no reconnect

    first.stop(sig)
    reset = run_agent(env, "calibrate", "--reset", timeout=60)
    assert reset.returncode == 0, reset.stderr  # the lock went with the process, however it ended
    again = run_agent({**env, "EDGE_AGENT_SOURCE__SPEED": "0"}, timeout=120)
    assert again.returncode == 0, again.stderr


def test_a_refused_second_agent_leaves_the_outbox_reserve_of_the_first_on_a_full_disk(tiny_fs: Path) -> None:
    """The lock is taken before the disk probe, which gives up the outbox's reserve on a full disk: an agent started
    by mistake must not take the running one's ballast before it learns the directory is taken."""
    from agent.files import hold_state_dir, release_state_dir
    from tests.conftest import free_port
    from tests.faults.test_state_dir import _fill

    state = tiny_fs / "state"
    state.mkdir()
    (state / "outbox.db.reserve").write_bytes(b"\0" * 256 * 1024)
    held = hold_state_dir(state)  # the running agent (a real flock, held by this process)
    try:
        _fill(tiny_fs)
        r = run_agent(agent_env(state, free_port(), EDGE_AGENT_DRAIN_TIMEOUT_S="0"), timeout=60)
        assert r.returncode == 78 and f"(pid {os.getpid()})" in r.stderr, r.stderr
        assert "giving up the outbox's reserve" not in r.stderr
        assert (state / "outbox.db.reserve").stat().st_size == 256 * 1024
    finally:
        release_state_dir(held)


def test_a_directory_let_go_of_within_the_wait_is_taken(tmp_path: Path) -> None:
    """An agent that is just stopping (or `calibrate --reset` looking) holds the lock for a moment: a start then
    waits for it instead of refusing."""
    import threading

    from agent.files import LOCK_WAIT_S, hold_state_dir, release_state_dir, state_dir_holder

    state = tmp_path / "state"
    held = hold_state_dir(state)
    threading.Timer(LOCK_WAIT_S / 5, release_state_dir, (held,)).start()
    mine = hold_state_dir(state)
    try:
        assert state_dir_holder(state) == os.getpid()
    finally:
        release_state_dir(mine)
    assert state_dir_holder(state) is None
