"""deploy/mosquitto: the gateway config and its bridge load in a real mosquitto, and the bridge directions hold.

The configs are rewritten only where a test must differ from a gateway: port, data and include paths, log to
stderr, no pid file; for the direction test the bridge points at a second local broker without TLS.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy_support import REPO

MOSQ = REPO / "deploy" / "mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mosquitto_bin() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if path is None:
        pytest.fail("mosquitto is missing: apt-get install mosquitto")
    return path


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:  # noqa: F811  (shadows pytest's on purpose)
    """A temporary directory the mosquitto user can reach: started as root, mosquitto drops to that user,
    and pytest's own temporary directories are private to root."""
    path = Path(tempfile.mkdtemp(prefix="edge-agent-mosquitto-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stage(tmp: Path, port: int, bridge: str) -> Path:
    (tmp / "conf.d").mkdir()
    data = tmp / "data"
    data.mkdir()
    data.chmod(0o777)
    text = (MOSQ / "mosquitto.conf").read_text()
    text = re.sub(r"(?m)^pid_file .*\n", "", text)
    text = re.sub(r"(?m)^persistence_location .*", f"persistence_location {data}/", text)
    text = re.sub(r"(?m)^include_dir .*", f"include_dir {tmp / 'conf.d'}", text)
    text = re.sub(r"(?m)^log_dest syslog", "log_dest stderr", text)
    text, n = re.subn(r"(?m)^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1", text)
    assert n == 1, "the example must listen on 127.0.0.1:1883"
    (tmp / "conf.d" / "bridge-central.conf").write_text(bridge)
    conf = tmp / "mosquitto.conf"
    conf.write_text(text)
    return conf


def _start(mosquitto_bin: str, conf: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([mosquitto_bin, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    out = proc.communicate(timeout=5)[0] if proc.poll() is not None else ""
    _stop(proc)
    pytest.fail(f"mosquitto did not start with {conf}:\n{out}")


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=5)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def test_gateway_config_with_tls_bridge_loads(mosquitto_bin: str, tmp_path: Path) -> None:
    port = _free_port()
    conf = _stage(tmp_path, port, (MOSQ / "conf.d" / "bridge-central.conf").read_text())
    proc = _start(mosquitto_bin, conf, port)
    time.sleep(1.0)  # the bridge tries to connect (and fails: no central broker here), the broker stays up
    assert proc.poll() is None
    out = _stop(proc)
    assert "Config loaded from" in out, out
    assert not re.search(r"(?m)Error: ", out), out


def test_a_config_error_is_detected(mosquitto_bin: str, tmp_path: Path) -> None:
    # The check above would see this: mosquitto exits at once and names the line.
    port = _free_port()
    conf = _stage(tmp_path, port, (MOSQ / "conf.d" / "bridge-central.conf").read_text() + "bridge_bogus true\n")
    proc = subprocess.run([mosquitto_bin, "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0
    assert "Error" in proc.stdout + proc.stderr


@pytest.fixture
def central(mosquitto_bin: str, tmp_path: Path) -> Iterator[int]:
    port = _free_port()
    conf = tmp_path / "central.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = _start(mosquitto_bin, conf, port)
    yield port
    _stop(proc)


def test_bridge_directions(mosquitto_bin: str, tmp_path: Path, central: int) -> None:
    """edge/# goes out, edge/+/cmd/# comes in, and a command is not echoed back upstream."""
    import paho.mqtt.client as mqtt

    bridge = (MOSQ / "conf.d" / "bridge-central.conf").read_text()
    bridge = re.sub(r"(?m)^address .*", f"address 127.0.0.1:{central}", bridge)
    bridge = re.sub(r"(?m)^bridge_(cafile|certfile|keyfile|insecure|require_ocsp) .*\n", "", bridge)
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    gw_dir.chmod(0o755)
    port = _free_port()
    gateway = _start(mosquitto_bin, _stage(gw_dir, port, bridge), port)
    try:
        received: dict[str, list[str]] = {"central": [], "gateway": []}

        def client(name: str, broker_port: int) -> mqtt.Client:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{name}")
            c.on_message = lambda _c, _u, msg: received[name].append(msg.topic)
            c.connect("127.0.0.1", broker_port)
            c.subscribe("edge/#", qos=1)
            c.loop_start()
            return c

        up, down = client("central", central), client("gateway", port)
        # Wait for the bridge: its notification is published on both brokers.
        deadline = time.monotonic() + 10
        while "edge/pump-hall-01/bridge" not in received["central"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "edge/pump-hall-01/bridge" in received["central"], "the bridge did not connect"
        received["central"].clear()
        received["gateway"].clear()
        down.publish("edge/pump-hall-01/alert", b"{}", qos=1).wait_for_publish(5)
        up.publish("edge/pump-hall-01/cmd/calibrate", b"{}", qos=1).wait_for_publish(5)
        up.publish("edge/pump-hall-01/other", b"{}", qos=1).wait_for_publish(5)
        time.sleep(1.0)
        for c in (up, down):
            c.loop_stop()
            c.disconnect()
        # (the bridge's own retained notification may still arrive late on either side: not part of the question)
        got = {k: sorted(t for t in v if t != "edge/pump-hall-01/bridge") for k, v in received.items()}
        assert got["central"] == ["edge/pump-hall-01/alert", "edge/pump-hall-01/cmd/calibrate", "edge/pump-hall-01/other"]
        assert got["gateway"] == ["edge/pump-hall-01/alert", "edge/pump-hall-01/cmd/calibrate"]
    finally:
        out = _stop(gateway)
    assert not re.search(r"(?m)Error: ", out), out
