"""Shared fixtures: a private mosquitto per test session, an MQTT recorder, the agent as a real process.

The broker is real (never mocked, never skipped): a test that needs it and cannot find ``mosquitto`` fails with
the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import tests.ptys
from tests.ptys import fresh_openpty

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def shared_pty_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    if hasattr(request.config, "workerinput"):  # a pytest-xdist worker: its basetemp's parent is the run's, shared
        tests.ptys.REGISTRY = tmp_path_factory.getbasetemp().parent / "ptys-used"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def visits(handed: list[tuple[float, int]], gap: float = 0.003) -> list[int]:
    """Readings per visit of a source to its sink, from (monotonic time, readings) of each hand-over: hand-overs
    less than ``gap`` apart are one read's (a source's pacing: agent.sources.Pacer)."""
    out: list[int] = []
    last = -1.0
    for t, n in handed:
        if out and t - last < gap:
            out[-1] += n
        else:
            out.append(n)
        last = t
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Broker:
    """A private mosquitto on a free port; ``stop()``/``start()`` simulate an outage."""

    def __init__(self, workdir: Path, extra_conf: str = "", listener_conf: str = "allow_anonymous true\n"):
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            pytest.fail("mosquitto not found: install it with `sudo apt-get install -y mosquitto` (the tests need a real broker)")
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            # max_queued_messages: mosquitto drops QoS 1 messages past 1000 queued for a slow subscriber (the
            # default); on a loaded CI machine an agent can lag that far behind a test's publisher
            f"listener {self.port} 127.0.0.1\n{listener_conf}persistence false\nset_tcp_nodelay true\n"
            f"max_queued_messages 100000\n{extra_conf}"
        )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail(f"mosquitto exited: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)
        pytest.fail("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def live_broker(broker: Broker) -> Broker:
    """The session broker, restarted if an earlier test left it stopped."""
    if not broker.running:
        broker.start()
    return broker


class Recorder:
    """Subscribes to a topic filter and keeps every message (topic, JSON payload, retain flag).

    ``durable``: a persistent session and a 1 s reconnect, so it misses nothing the broker accepted while it was
    away (the broker queues it), including across a broker restart.
    """

    def __init__(self, port: int, topic: str = "#", durable: bool = False):
        self.messages: list[tuple[str, Any, bool]] = []
        self.received_at: list[float] = []  # monotonic time of each message
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"recorder-{os.getpid()}-{time.monotonic_ns()}",
                                  clean_session=not durable)
        if durable:
            self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("recorder could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            payload = msg.payload
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            self.received_at.append(time.monotonic())

    @staticmethod
    def _is(topic: str, suffix: str) -> bool:
        # {prefix}/{device}/{suffix}: "status" must not match the reply to the status command (.../reply/status)
        return topic.endswith("/" + suffix) and topic.count("/") == 2 + suffix.count("/")

    def on(self, suffix: str) -> list[Any]:
        """Payloads on ``{prefix}/{device}/{suffix}``."""
        with self._lock:
            return [p for t, p, _ in self.messages if self._is(t, suffix)]

    def since(self, t0: float, suffix: str) -> list[Any]:
        """Payloads on ``suffix`` received at or after monotonic time ``t0``."""
        with self._lock:
            return [p for at, (t, p, _) in zip(self.received_at, self.messages) if at >= t0 and self._is(t, suffix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def recorder(live_broker: Broker) -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(topic: str = "#") -> Recorder:
        r = Recorder(live_broker.port, topic)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def agent_env(state_dir: Path, port: int, **extra: Any) -> dict[str, str]:
    """A clean environment for an agent process: no EDGE_AGENT_* from the outside, a private state dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(
        EDGE_AGENT_STATE_DIR=str(state_dir),
        EDGE_AGENT_MQTT__HOST="127.0.0.1",
        EDGE_AGENT_MQTT__PORT=str(port),
        EDGE_AGENT_DEVICE_ID="test-gw",
        EDGE_AGENT_LOG_LEVEL="INFO",
        # the test machine's clock may not be NTP-synchronised; that degraded reason has its own test
        EDGE_AGENT_CLOCK_SYNC_REQUIRED="false",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_agent(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent`` to completion (the real process, as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *(args or ("run",))], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )


class Pty:
    """One pty pair in raw mode: the test writes to ``master``, the serial source opens ``path`` (the slave);
    ``unplug()`` closes both ends, as pulling a USB adapter does."""

    def __init__(self) -> None:
        self.master, self.slave = fresh_openpty()  # never a node an earlier test had (tests/ptys.py)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master = self.slave = -1


class AgentProcess:
    """The agent running as a real process; its stderr goes to a file so it can be read while it runs."""

    def __init__(self, env: dict[str, str], workdir: Path, *args: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"agent-{time.monotonic_ns()}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", *(args or ("run",))], env=env, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=log, text=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_agent(env: dict[str, str], workdir: Path, *args: str) -> AgentProcess:
    return AgentProcess(env, workdir, *args)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agent processes a test starts; killed at the end whatever happened."""
    started: list[AgentProcess] = []
    yield started
    for a in started:
        if a.alive():
            a.proc.kill()
            a.proc.wait(timeout=10)
        # pytest shows this only for a test that failed: the agent's own account of what it was doing
        print(f"--- agent log {a.log_path} (exit {a.proc.returncode}), last 6000 characters ---\n{a.log[-6000:]}")


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """A test that leaves a non-daemon thread of ours running fails (thread deaths must not hide)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=2)
    leaked = [t.name for t in leaked if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
