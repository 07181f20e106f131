"""TLS and authentication against a real mosquitto TLS listener with certificates made here by openssl."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT, Broker, agent_env, start_agent, wait_for

SECRET = "s3cr3t-" + uuid.uuid4().hex[:8]


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("openssl not found: install it with `apt-get install -y openssl`")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", "san.ext", "-out", "server.crt", cwd=d)
    # a client certificate for mutual TLS, signed by the same CA
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=gateway", "-keyout", "client.key", "-out", "client.csr", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-out", "client.crt", cwd=d)
    for f in d.iterdir():
        f.chmod(0o644)
    return d


@pytest.fixture(scope="module")
def tls_broker(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("tlsbroker")
    pw = d / "passwd"
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([exe, "-b", "-c", str(pw), "gateway", SECRET], check=True, capture_output=True)
    pw.chmod(0o644)
    # as root, mosquitto drops to its own user, which cannot read pytest's private tmp dirs: stay root here
    b = Broker(d, extra_conf="user root\n", listener_conf=(
        f"allow_anonymous false\npassword_file {pw}\ncafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
        f"keyfile {pki / 'server.key'}\n"
    ))
    b.start()
    yield b
    b.stop()


def _tls_env(tmp_path: Path, port: int, pki: Path, ca: str, password: str):
    pwfile = tmp_path / "mqtt-password"
    pwfile.write_text(password + "\n")
    return agent_env(
        tmp_path / "state", port, EDGE_AGENT_MQTT__HOST="localhost", EDGE_AGENT_MQTT__TLS="true",
        EDGE_AGENT_MQTT__CA_FILE=str(pki / ca), EDGE_AGENT_MQTT__USERNAME="gateway",
        EDGE_AGENT_MQTT__PASSWORD_FILE=str(pwfile), EDGE_AGENT_SOURCE__LOOP="true", EDGE_AGENT_SOURCE__SPEED="20",
        EDGE_AGENT_STATS_INTERVAL_S="1",
    )


def test_right_ca_and_password_connect(tmp_path, tls_broker, pki, agents):
    got: list[tuple[str, dict]] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tls-recorder")
    c.username_pw_set("gateway", SECRET)
    c.tls_set(ca_certs=str(pki / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("edge/#", qos=1)
    c.on_message = lambda cl, u, m: got.append((m.topic, json.loads(m.payload)))
    c.connect("localhost", tls_broker.port)
    c.loop_start()
    try:
        env = _tls_env(tmp_path, tls_broker.port, pki, "ca.crt", SECRET)
        a = start_agent(env, tmp_path)
        agents.append(a)
        wait_for(lambda: any(t.endswith("/status") and p["state"] != "offline" for t, p in got), timeout=30, what="status over TLS")
        wait_for(lambda: any(t.endswith("/stats") for t, _ in got), timeout=30, what="stats over TLS")
        assert a.stop() == 0
        # the secret is nowhere: not in the log, the status, the stats
        assert SECRET not in a.log
        assert all(SECRET not in json.dumps(p) for _, p in got)
        r = subprocess.run([sys.executable, "-m", "agent", "check-config"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and SECRET not in r.stdout + r.stderr
        assert "EDGE_AGENT_MQTT__PASSWORD_FILE=" in r.stdout
    finally:
        c.loop_stop()
        c.disconnect()


@pytest.mark.parametrize(
    "ca, password, expected",
    [
        ("other-ca.crt", SECRET, "TLS certificate check failed"),
        ("ca.crt", "wrong-password", "refused the connection"),
    ],
    ids=["other-ca", "wrong-password"],  # fixed ids: SECRET is random, and pytest-xdist workers must collect alike
)
def test_wrong_ca_or_password_fail_clearly_and_keep_retrying(tmp_path, tls_broker, pki, agents, ca, password, expected):
    a = start_agent(_tls_env(tmp_path, tls_broker.port, pki, ca, password), tmp_path)
    agents.append(a)
    wait_for(lambda: expected in a.log, timeout=30, what=expected)
    time.sleep(3)  # several retries later
    assert a.alive(), a.log
    assert a.log.count(expected) == 1, "said once per outage, not once per retry"
    assert "Traceback" not in a.log
    assert password not in a.log and SECRET not in a.log
    assert a.stop() == 0


@pytest.fixture(scope="module")
def mtls_broker(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("mtlsbroker")
    b = Broker(d, extra_conf="user root\n", listener_conf=(
        f"allow_anonymous true\nrequire_certificate true\ncafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
        f"keyfile {pki / 'server.key'}\n"
    ))
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("with_client_cert", [True, False])
def test_mutual_tls_needs_the_client_certificate(tmp_path, mtls_broker, pki, agents, with_client_cert):
    extra = {"EDGE_AGENT_MQTT__CERT_FILE": str(pki / "client.crt"), "EDGE_AGENT_MQTT__KEY_FILE": str(pki / "client.key")}
    env = agent_env(
        tmp_path / "state", mtls_broker.port, EDGE_AGENT_MQTT__HOST="localhost", EDGE_AGENT_MQTT__TLS="true",
        EDGE_AGENT_MQTT__CA_FILE=str(pki / "ca.crt"), EDGE_AGENT_SOURCE__LOOP="true", EDGE_AGENT_SOURCE__SPEED="20",
        **(extra if with_client_cert else {}),
    )
    a = start_agent(env, tmp_path)
    agents.append(a)
    if with_client_cert:
        wait_for(lambda: "connected to localhost" in a.log, timeout=30, what="a mutual-TLS connection")
    else:
        wait_for(lambda: "requires a client certificate" in a.log, timeout=30, what="the refusal, said clearly")
        time.sleep(3)  # several retries later: said once per outage
        assert "connected to localhost" not in a.log
        assert a.log.count("requires a client certificate") == 1 and "failed to receive" not in a.log
    assert a.alive() and "Traceback" not in a.log
    assert a.stop() == 0


def test_mqtt_source_uses_tls_and_the_password_file_of_the_upstream_broker(tmp_path, tls_broker, pki):
    """Issue 13: the MQTT source built its own client without TLS; on the upstream broker it now connects like
    the uplink does (TLS, CA, user name, password file)."""
    import threading

    from agent.counters import Counters
    from agent.settings import MqttSettings, MqttSourceSettings
    from agent.sources.mqtt import MqttSource

    pwfile = tmp_path / "mqtt-password"
    pwfile.write_text(SECRET + "\n")
    upstream = MqttSettings(host="localhost", port=tls_broker.port, tls=True, ca_file=pki / "ca.crt",
                            username="gateway", password_file=pwfile)
    source = MqttSource(MqttSourceSettings(topics=["plant/+/telemetry"], sensor_pattern="plant/{sensor}/telemetry"),
                        upstream, Counters(), device_id="tls-gw")
    assert source.name.startswith("mqtts:") and source.conn.tls
    readings: list = []
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(readings.append, stop), name="test-mqtt-tls-source")
    t.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tls-publisher")
    pub.username_pw_set("gateway", SECRET)
    pub.tls_set(ca_certs=str(pki / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    pub.connect("localhost", tls_broker.port)
    pub.loop_start()
    try:
        wait_for(lambda: source.subscribed.is_set() or source.last_error, timeout=30, what="the TLS subscription")
        assert source.subscribed.is_set(), source.last_error
        pub.publish("plant/pump-1/telemetry", '{"Current": 1.5}', qos=1).wait_for_publish(10)
        wait_for(lambda: readings, what="a reading over TLS")
        assert readings[0].sensor == "pump-1" and dict(readings[0].values) == {"Current": 1.5}
    finally:
        pub.loop_stop()
        pub.disconnect()
        source.close()
        t.join(10)
    assert not t.is_alive()


def test_mqtt_source_explains_a_plain_connection_to_a_tls_listener(tmp_path, tls_broker, pki):
    """A sensor broker configured plain on a TLS port: the outage says to check TLS (once), no reading, no crash."""
    import threading

    from agent.counters import Counters
    from agent.settings import MqttSettings, MqttSourceSettings
    from agent.sources.mqtt import MqttSource

    source = MqttSource(MqttSourceSettings(topics=["a/#"], broker_host="localhost", broker_port=tls_broker.port),
                        MqttSettings(host="127.0.0.1", port=1), Counters())
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(lambda r: None, stop), name="test-mqtt-plain-source")
    t.start()
    try:
        wait_for(lambda: source.last_error, timeout=30, what="the outage explained")
        assert "check EDGE_AGENT_SOURCE__BROKER_TLS" in source.last_error, source.last_error
    finally:
        source.close()
        t.join(10)
