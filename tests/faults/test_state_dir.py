"""Start-up faults of the state directory (issue 12 item 10): a state path that is a file, a read-only or full file
system. Each is exit 78 (systemd does not restart-loop on it) with the path and the reason, and no store claims to
be corrupt; a full disk with the outbox's ballast file gives that up and starts, and under systemd a full disk waits
for room instead of exit 78 (it is no configuration error: the service would stay down once there is room).

The read-only and full file systems are real tmpfs mounts (root, as the full-disk test: ``tiny_fs``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


from tests.faults.conftest import agent_env
from tests.conftest import free_port, run_agent


def _env(state: Path) -> dict[str, str]:
    # no broker needed: the agent must refuse to start before it would connect
    return agent_env(state, free_port(), EDGE_AGENT_DRAIN_TIMEOUT_S="0")


def test_a_state_path_that_is_a_file_is_exit_78_with_the_path(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("oops")
    r = run_agent(_env(state))
    assert r.returncode == 78, r.stderr
    assert f"state directory {state}: exists and is not a directory" in r.stderr
    assert "corrupt" not in r.stderr and "Traceback" not in r.stderr


def test_a_read_only_state_directory_is_exit_78_with_the_reason(tmp_path: Path, tiny_fs: Path) -> None:
    state = tiny_fs / "state"
    state.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    try:
        r = run_agent(_env(state))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    assert r.returncode == 78, r.stderr
    assert f"state directory {state}: cannot write in it (Read-only file system)" in r.stderr
    assert "corrupt" not in r.stderr and "Traceback" not in r.stderr


def _fill(fs: Path) -> None:
    """Write until the file system refuses even one more block (unbuffered: nothing left to fail at close)."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_state_directory_is_exit_78_with_the_reason(tmp_path: Path, tiny_fs: Path) -> None:
    state = tiny_fs / "state"
    state.mkdir()
    _fill(tiny_fs)
    r = run_agent(_env(state))
    assert r.returncode == 78, r.stderr
    assert f"state directory {state}: cannot write in it (No space left on device)" in r.stderr
    assert "corrupt" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("full", ["blocks", "inodes"])
def test_under_systemd_a_full_state_directory_waits_for_room_then_starts(tmp_path: Path, full: str) -> None:
    """By hand a full disk is exit 78, but under systemd that kept the service down for good
    (``RestartPreventExitStatus=78``) after the disk had room again: a gateway left alone stayed dead. It now waits,
    saying so (journal, ``STATUS=``) and extending the start timeout, and starts once there is room. ``inodes``: a
    first start, no state directory yet, on a file system out of inodes (its mkdir and lock file failed first)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    opts = "size=1m" if full == "blocks" else "size=1m,nr_inodes=16"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(fs)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (root needed, as for tiny_fs): {r.stderr.strip()}")
    try:
        _wait_for_room(tmp_path, fs, full)
    finally:
        if subprocess.run(["umount", str(fs)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(fs)], capture_output=True, check=False)


def _wait_for_room(tmp_path: Path, fs: Path, full: str) -> None:
    import sys
    import time

    from tests.conftest import ROOT
    from tests.faults.test_watchdog import Supervisor

    state = fs / "state"
    if full == "blocks":
        state.mkdir()
        _fill(fs)
        fillers = [fs / "filler"]
    else:
        fillers = []
        try:
            while True:
                (fs / f"f{len(fillers)}").touch()
                fillers.append(fs / f"f{len(fillers)}")
        except OSError:
            pass
    sup = Supervisor(tmp_path)
    log = tmp_path / "agent.log"
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "agent", "run"], env=sup.env(_env(state)), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert sup.receive_until(lambda d: "EXTEND_TIMEOUT_USEC=" in d and "STATUS=waiting for free space" in d,
                                 30), log.read_text()
        time.sleep(1.0)
        assert p.poll() is None, log.read_text()  # not exit 78: waiting
        assert not any("READY=1" in d for _, d in sup.messages)
        for f in fillers:
            f.unlink()
        assert sup.receive_until(lambda d: "READY=1" in d, 30), log.read_text()
        assert any("EXTEND_TIMEOUT_USEC=120000000" in d and "STATUS=starting" in d for _, d in sup.messages)
    finally:
        p.terminate()
        p.wait(30)
    text = log.read_text()
    assert f"state directory {state} is full (No space left on device): waiting for free space" in text, text
    assert "has room again" in text and "Traceback" not in text and "corrupt" not in text, text


def test_a_full_disk_with_the_outbox_reserve_gives_it_up_and_starts(tmp_path: Path, tiny_fs: Path) -> None:
    state = tiny_fs / "state"
    state.mkdir()
    (state / "outbox.db.reserve").write_bytes(b"\0" * 256 * 1024)
    _fill(tiny_fs)
    r = run_agent(_env(state))
    assert "giving up the outbox's reserve" in r.stderr, r.stderr
    assert r.returncode != 78, r.stderr
    assert "corrupt" not in r.stderr
    assert os.path.exists(state / "outbox.db")


def test_a_teach_in_checkpoint_that_does_not_fit_leaves_no_half_written_file(tiny_fs: Path) -> None:
    """A running teach-in kept on a card with too little room: it says so and leaves nothing behind (a half-written
    ``teach-in.npz.tmp`` filled the disk, and the outbox and every other state file failed after it)."""
    import shutil

    import numpy as np

    from agent.calibrate import Calibrator
    from agent.detectors import open_model

    model = open_model("generic").with_channels([f"c{i}" for i in range(8)])
    state = tiny_fs / "state"
    cal = Calibrator(model, 100_000, state, checkpoint_s=0)
    rng = np.random.default_rng(0)
    for i in range(20_000):  # 20,000 readings of 8 channels: 1.3 MB, more than the 1 MB disk
        cal.add(rng.normal(size=8), float(i))
    state.mkdir()
    free = shutil.disk_usage(tiny_fs).free
    assert cal.checkpoint() is False
    assert list(state.iterdir()) == [] and shutil.disk_usage(tiny_fs).free == free


def test_evidence_is_neither_kept_nor_extended_on_a_nearly_full_disk(tiny_fs: Path) -> None:
    """Under the outbox's reserve the evidence store writes nothing: no new evidence, and an alert that clears does
    not get its active readings appended (the outbox's alerts need the room more)."""
    import shutil

    from agent.evidence import EvidenceStore, evidence_payload

    store = EvidenceStore(tiny_fs / "state" / "evidence.db")
    raised = evidence_payload(["a", "b"], [(1000.0 + i, (1.0, 2.0)) for i in range(10)])
    assert store.add("x", "s", raised)
    free = shutil.disk_usage(tiny_fs).free
    (tiny_fs / "filler").write_bytes(b"\0" * (free - 24 * 1024))  # 24 KB left: under the reserve (5 % of 1 MB)
    store.extend("x", [(2000.0 + i, [3.0, 4.0]) for i in range(50)])
    assert store.get("x") == raised
    assert store.add("y", "s", raised) == 0 and not store.has_alert("y")
    store.close()


def test_calibrate_reset_with_a_state_path_that_is_a_file_is_exit_78_with_the_path(tmp_path: Path) -> None:
    """``edge-agent calibrate --reset`` (and ``calibrate``) where EDGE_AGENT_STATE_DIR is a regular file: the same
    one line as ``run``, not a traceback from removing calibration.json, nor "not calibrated"."""
    state = tmp_path / "state"
    state.write_text("oops")
    for args in (("calibrate", "--reset"), ("calibrate",)):
        r = run_agent(_env(state), *args)
        assert r.returncode == 78, r.stderr
        assert r.stderr == (f"config error: state directory {state}: exists and is not a directory "
                            "(EDGE_AGENT_STATE_DIR)\n"), r.stderr
        assert state.read_text() == "oops"


def test_calibrate_reset_on_a_read_only_state_directory_is_exit_78_with_the_reason(tiny_fs: Path) -> None:
    state = tiny_fs / "state"
    state.mkdir()
    (state / "calibration.json").write_text("{}")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    try:
        r = run_agent(_env(state), "calibrate", "--reset")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    assert r.returncode == 78, r.stderr
    assert (f"config error: state directory {state}: cannot remove the calibration (Read-only file system)"
            in r.stderr) and "Traceback" not in r.stderr
    assert (state / "calibration.json").exists()
