"""sd_notify and the watchdog with the real agent process and a supervisor that behaves like systemd's.

The supervisor owns a real AF_UNIX datagram socket ($NOTIFY_SOCKET), expects READY=1, then WATCHDOG=1 at least
every WATCHDOG_USEC; when the pings stop it kills the agent (systemd sends SIGABRT) and starts it again.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.faults.conftest import agent_env

WATCHDOG_S = 3.0


class Supervisor:
    def __init__(self, tmp: Path):
        self.path = str(tmp / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}

    def receive_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data))
            if predicate(data):
                return True
        return False

    def supervise(self, proc: subprocess.Popen, timeout: float) -> str:
        """Watch one run: 'exited' or 'watchdog' (no ping for WATCHDOG_S after READY: killed)."""
        last_ping = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return "exited"
            try:
                data = self.sock.recv(4096).decode()
                self.messages.append((time.monotonic(), data))
                if "READY=1" in data or "WATCHDOG=1" in data:
                    last_ping = time.monotonic()
            except socket.timeout:
                pass
            if last_ping is not None and time.monotonic() - last_ping > WATCHDOG_S:
                proc.send_signal(signal.SIGABRT)
                proc.wait(10)
                return "watchdog"
        raise AssertionError("supervised run neither exited nor missed the watchdog")


def _start(env: dict[str, str], log: Path, hang_after: int = 0) -> subprocess.Popen:
    cmd = ["-m", "tests.faults.launcher", "hang-pipeline", str(hang_after), "run"] if hang_after else ["-m", "agent", "run"]
    return subprocess.Popen([sys.executable, *cmd], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def test_ready_status_watchdog_and_stopping(tmp_path, live_broker):
    sup = Supervisor(tmp_path)
    env = sup.env(agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_SOURCE__LOOP="true",
                            EDGE_AGENT_SOURCE__SPEED="20"))
    p = _start(env, tmp_path / "agent.log")
    try:
        assert sup.receive_until(lambda d: "READY=1" in d, 30), (tmp_path / "agent.log").read_text()
        ready = next(d for _, d in sup.messages if "READY=1" in d)
        assert "STATUS=" in ready
        assert sup.receive_until(lambda d: d == "WATCHDOG=1", WATCHDOG_S * 2)
        assert sup.receive_until(lambda d: d == "WATCHDOG=1", WATCHDOG_S * 2)
        assert sup.receive_until(lambda d: d.startswith("STATUS=") and "READY" not in d, 15)
        p.send_signal(signal.SIGTERM)
        assert sup.receive_until(lambda d: "STOPPING=1" in d, 15)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_hung_inference_stops_the_pings_and_the_supervisor_restarts_it(tmp_path, live_broker):
    sup = Supervisor(tmp_path)
    base = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_SOURCE__LOOP="true",
                     EDGE_AGENT_SOURCE__SPEED="20", EDGE_AGENT_STALL_S="1")
    p = _start(sup.env(base), tmp_path / "hung.log", hang_after=200)  # the pipeline hangs on the 200th reading
    try:
        assert sup.supervise(p, timeout=90) == "watchdog"
    finally:
        if p.poll() is None:
            p.kill()
    log = (tmp_path / "hung.log").read_text()
    assert "stage pipeline made no progress" in log, log
    # restarted (as Restart=on-failure would), healthy again: READY and pings
    sup.messages.clear()
    p2 = _start(sup.env(base), tmp_path / "again.log")
    try:
        assert sup.receive_until(lambda d: "READY=1" in d, 30)
        assert sup.receive_until(lambda d: d == "WATCHDOG=1", WATCHDOG_S * 2)
    finally:
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(30) == 0


def test_draining_the_outbox_at_the_end_is_not_a_stall(tmp_path):
    """The recording ended and the pipeline is done; the outbox drains for DRAIN_TIMEOUT_S (no broker): the pings
    go on and nothing is reported stalled (before: the pipeline's last heartbeat aged, "stage pipeline made no
    progress", the pings stopped and systemd would have killed an agent that was only waiting for its broker)."""
    from tests.conftest import free_port

    sup = Supervisor(tmp_path)
    env = sup.env(agent_env(tmp_path / "state", free_port(), EDGE_AGENT_STALL_S="2", EDGE_AGENT_DRAIN_TIMEOUT_S="8"))
    p = _start(env, tmp_path / "drain.log")
    try:
        assert sup.supervise(p, timeout=90) == "exited"
    finally:
        if p.poll() is None:
            p.kill()
    log = (tmp_path / "drain.log").read_text()
    assert p.returncode == 0 and "still in the outbox after 8 s" in log, log
    assert "made no progress" not in log, log


@pytest.mark.parametrize("thread", ["health", "uplink", "pipeline"])
def test_a_thread_that_dies_stops_the_process_with_exit_1(tmp_path, live_broker, thread):
    """Every thread runs under one guard: a stage that raises is logged and the process exits 1, so that systemd
    restarts it (Restart=on-failure) instead of running on without it."""
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_SOURCE__LOOP="true", EDGE_AGENT_SOURCE__SPEED="20")
    log = tmp_path / "agent.log"
    p = subprocess.Popen([sys.executable, "-m", "tests.faults.launcher", "crash", thread, "run"], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        assert p.wait(60) == 1, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert f"thread {thread} died" in text and f"injected fault in the {thread} thread" in text, text[-3000:]
    assert f"stopped because thread(s) {thread} died" in text, text[-3000:]
