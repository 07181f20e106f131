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
    shutil.copy(MOSQ / "edge-agent.acl", tmp / "edge-agent.acl")
    text, n = re.subn(r"(?m)^acl_file /etc/mosquitto/edge-agent\.acl$", f"acl_file {tmp / 'edge-agent.acl'}", text)
    assert n == 1, "the example must load the gateway ACL"
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
    """The gateway's edge/ topics go out, its commands come in, and a command is not echoed back upstream."""
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
        down.publish("edge/pump-hall-01/alerts", b"{}", qos=1).wait_for_publish(5)
        up.publish("edge/pump-hall-01/cmd/calibrate", b"{}", qos=1).wait_for_publish(5)
        up.publish("edge/pump-hall-01/other", b"{}", qos=1).wait_for_publish(5)
        time.sleep(1.0)
        for c in (up, down):
            c.loop_stop()
            c.disconnect()
        # (the bridge's own retained notification may still arrive late on either side: not part of the question)
        got = {k: sorted(t for t in v if t != "edge/pump-hall-01/bridge") for k, v in received.items()}
        assert got["central"] == ["edge/pump-hall-01/alerts", "edge/pump-hall-01/cmd/calibrate", "edge/pump-hall-01/other"]
        assert got["gateway"] == ["edge/pump-hall-01/alerts", "edge/pump-hall-01/cmd/calibrate"]
    finally:
        out = _stop(gateway)
    assert not re.search(r"(?m)Error: ", out), out


# -- issue 12 item 2: the ACLs, in real brokers, with certificates ------------------------------------------------


def _openssl(d: Path, *args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("openssl is missing: apt-get install openssl")
    subprocess.run([exe, *args], cwd=d, check=True, capture_output=True)


def _pki(d: Path, clients: list[str]) -> None:
    """A CA, the central broker's certificate (127.0.0.1) and one client certificate per CN."""
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cn in ["central", *clients]:
        _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{cn}.key", "-out", f"{cn}.csr")
        ext = ["-extfile", "san.ext"] if cn == "central" else []
        _openssl(d, "x509", "-req", "-in", f"{cn}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", *ext, "-out", f"{cn}.crt")
    for f in d.iterdir():
        f.chmod(0o644)  # mosquitto drops to its own user: it must read them (a test CA, nothing to protect)


def _central_conf(tmp: Path, pki: Path, port: int) -> Path:
    text = (MOSQ / "central" / "central.conf").read_text()
    shutil.copy(MOSQ / "central" / "edge.acl", tmp / "edge.acl")
    for pattern, new in [
        (r"(?m)^listener 8883$", f"listener {port} 127.0.0.1"),
        (r"(?m)^cafile .*", f"cafile {pki / 'ca.crt'}"),
        (r"(?m)^certfile .*", f"certfile {pki / 'central.crt'}"),
        (r"(?m)^keyfile .*", f"keyfile {pki / 'central.key'}"),
        (r"(?m)^acl_file .*", f"acl_file {tmp / 'edge.acl'}"),
        (r"(?m)^persistence true$", "persistence false"),
        (r"(?m)^log_dest syslog$", "log_dest stderr"),
    ]:
        text, n = re.subn(pattern, new, text)
        assert n == 1, pattern
    conf = tmp / "central.conf"
    conf.write_text(text)
    return conf


class _Client:
    """A paho client that records what it receives; TLS with a client certificate when ``cn`` is given."""

    def __init__(self, port: int, name: str, pki: Path | None = None, cn: str | None = None) -> None:
        import ssl

        import paho.mqtt.client as mqtt

        self.got: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acl-test-{name}")
        if cn is not None:
            assert pki is not None
            self.c.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / f"{cn}.crt"), keyfile=str(pki / f"{cn}.key"),
                           cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def sub(self, topic: str) -> "_Client":
        self.c.subscribe(topic, qos=1)
        return self

    def pub(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def topics(self) -> set[tuple[str, bytes]]:
        return {(t, p) for t, p in self.got if not t.endswith("/bridge")}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait(cond, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_acl_only_the_control_room_commands_and_a_gateway_publishes_only_its_own_topics(
    mosquitto_bin: str, tmp_path: Path
) -> None:
    """central/edge.acl, edge-agent.acl and the bridge, loaded as shipped (paths and ports rewritten) in two real
    mosquittos with certificates: the directions of issue 12 item 2, and the real agent working through them."""
    import json
    import os
    import sys

    pki = tmp_path / "pki"
    pki.mkdir()
    pki.chmod(0o755)
    _pki(pki, ["pump-hall-01", "pump-hall-02", "control-room"])
    cport = _free_port()
    cdir = tmp_path / "central"
    cdir.mkdir()
    cdir.chmod(0o755)
    central = _start(mosquitto_bin, _central_conf(cdir, pki, cport), cport)

    bridge = (MOSQ / "conf.d" / "bridge-central.conf").read_text()
    for pattern, new in [
        (r"(?m)^address .*", f"address 127.0.0.1:{cport}"),
        (r"(?m)^bridge_cafile .*", f"bridge_cafile {pki / 'ca.crt'}"),
        (r"(?m)^bridge_certfile .*", f"bridge_certfile {pki / 'pump-hall-01.crt'}"),
        (r"(?m)^bridge_keyfile .*", f"bridge_keyfile {pki / 'pump-hall-01.key'}"),
    ]:
        bridge, n = re.subn(pattern, new, bridge)
        assert n == 1, pattern
    gdir = tmp_path / "gw"
    gdir.mkdir()
    gdir.chmod(0o755)
    gport = _free_port()
    gateway = _start(mosquitto_bin, _stage(gdir, gport, bridge), gport)
    clients: list[_Client] = []
    agent = None
    try:
        room = _Client(cport, "room", pki, "control-room").sub("edge/#")
        other = _Client(cport, "gw2", pki, "pump-hall-02").sub("edge/#")
        local = _Client(gport, "local").sub("edge/#")
        clients += [room, other, local]
        _wait(lambda: any(t == "edge/pump-hall-01/bridge" for t, _ in room.got), "the bridge (TLS, CN=pump-hall-01)")

        room.pub("edge/pump-hall-01/cmd/ping", b"room")          # the operator role commands: reaches the gateway
        room.pub("edge/pump-hall-02/cmd/ping", b"for-2")         # ... and the other gateway its own
        other.pub("edge/pump-hall-01/cmd/ping", b"forged")       # another gateway may not command this one
        other.pub("edge/pump-hall-01/alerts", b"impersonated")   # nor publish as this one
        other.pub("edge/pump-hall-02/alerts", b"own")            # its own topics: fine
        local.pub("edge/pump-hall-01/cmd/ping", b"local")        # no command from a local client
        local.pub("edge/pump-hall-01/alerts", b"from-gateway")   # the agent's topics go out over the bridge
        _wait(lambda: ("edge/pump-hall-01/alerts", b"from-gateway") in room.topics(), "the gateway's alert upstream")
        _wait(lambda: ("edge/pump-hall-01/cmd/ping", b"room") in local.topics(), "the control room's command")
        time.sleep(1.0)
        assert room.topics() == {("edge/pump-hall-01/cmd/ping", b"room"), ("edge/pump-hall-02/cmd/ping", b"for-2"),
                                 ("edge/pump-hall-02/alerts", b"own"), ("edge/pump-hall-01/alerts", b"from-gateway")}
        assert local.topics() == {("edge/pump-hall-01/cmd/ping", b"room"), ("edge/pump-hall-01/alerts", b"from-gateway")}
        # a gateway reads its own commands and nothing else (not even its own alerts; nothing of pump-hall-01)
        assert other.topics() == {("edge/pump-hall-02/cmd/ping", b"for-2")}

        # the real agent on the gateway broker: its status, stats and replies pass, a command from the room works
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        env.update(EDGE_AGENT_STATE_DIR=str(tmp_path / "state"), EDGE_AGENT_MQTT__HOST="127.0.0.1",
                   EDGE_AGENT_MQTT__PORT=str(gport), EDGE_AGENT_DEVICE_ID="pump-hall-01",
                   EDGE_AGENT_CLOCK_SYNC_REQUIRED="false", EDGE_AGENT_SOURCE__LOOP="true",
                   EDGE_AGENT_SOURCE__SPEED="20", EDGE_AGENT_STATS_INTERVAL_S="1")
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run"], env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait(lambda: any(t == "edge/pump-hall-01/status" for t, _ in room.got), "the agent's status upstream", 30)
        _wait(lambda: any(t == "edge/pump-hall-01/stats" for t, _ in room.got), "the agent's stats upstream", 30)
        room.pub("edge/pump-hall-01/cmd/ping", json.dumps({"request_id": "acl"}).encode())
        _wait(lambda: any(t == "edge/pump-hall-01/reply/ping" and json.loads(p).get("request_id") == "acl"
                          for t, p in room.got), "the reply to the control room's ping", 30)
    finally:
        if agent is not None:
            agent.terminate()
            err = agent.communicate(timeout=60)[1]
            assert agent.returncode == 0, err[-3000:]
        for c in clients:
            c.close()
        gout, cout = _stop(gateway), _stop(central)
    assert not re.search(r"(?m)Error: ", gout + cout), gout + cout
