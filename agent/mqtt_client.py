"""The one MQTT client factory: the uplink, the MQTT source and ``monitor`` all get their paho client here.

Everything a connection to a broker needs is decided once, in :class:`BrokerConnection` (host, port, credentials,
TLS, mutual TLS), and applied once, in :func:`make_client`: paho 2's callback API, MQTT 3.1.1 (or 5) with a clean
session, the password from its file or the systemd credential, the reconnect delays, ``max_inflight`` before
``connect()`` (paho requires it), TLS with certificate and host name checks, ``TCP_NODELAY`` on every socket, a
client that remembers why its last connection attempt failed (paho swallows the exception) and a paho log filter
that turns paho's per-retry noise into one explained outage.

Which broker and which TLS settings the MQTT source uses (:func:`source_connection`): with no
``EDGE_AGENT_SOURCE__BROKER_HOST``/``_PORT`` it is the upstream broker, with the upstream's TLS settings and
credentials; a separate sensor broker (often a plain one on the LAN) has its own ``BROKER_TLS*`` settings. The
upstream credentials are never sent in clear text when the upstream connection is TLS: that configuration is
refused (:func:`source_broker_problems`, run by ``load_settings`` and so by ``check-config``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

UPSTREAM = "EDGE_AGENT_MQTT__"
SOURCE_BROKER = "EDGE_AGENT_SOURCE__BROKER_"


class PahoLog(logging.Filter):
    """paho's own log lines, tamed. paho 2.2 logs 'Client is not connected' at ERROR on every loop turn while
    (re)connecting (noise), and a connection the broker drops after the TLS handshake (TLS 1.3 asks for the
    client certificate only then, and a TLS listener answers a plain CONNECT the same way) as 'failed to receive
    on socket' on every retry: that becomes one outage line through ``on_failure``."""

    def __init__(self, on_failure: Callable[[str], None] | None = None):
        super().__init__()
        self._on_failure = on_failure

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if text.startswith("Client is not connected"):
            return False
        if self._on_failure is not None and text.startswith("failed to receive on socket"):
            self._on_failure(record.getMessage())
            return False
        return True


logging.getLogger("paho").addFilter(PahoLog())


@dataclass(frozen=True)
class BrokerConnection:
    """Where and how to connect: endpoint, credentials, TLS; ``prefix`` names the settings in explanations."""

    host: str
    port: int
    keepalive_s: int = 30
    username: str = ""
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    prefix: str = UPSTREAM

    def __repr__(self) -> str:  # never the password
        return f"BrokerConnection({self.host}:{self.port}, tls={self.tls}, user={self.username!r})"


def read_password(s: Any) -> str | None:
    """The broker password: ``password_file`` (which must exist: SecretFileError, exit 78, as the sensor broker's),
    else the systemd credential ``mqtt-password`` when present, else ``password``."""
    from agent.preflight import read_secret_file

    if s.password_file is not None:
        return read_secret_file(Path(s.password_file), f"{UPSTREAM}PASSWORD_FILE") or None
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        p = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mqtt-password"
        if p.is_file():
            return p.read_text().rstrip("\r\n") or None  # the installer leaves an empty credential file: no password
    if s.password is not None and s.password.get_secret_value():
        return str(s.password.get_secret_value())
    return None


def upstream_connection(s: Any) -> BrokerConnection:
    """The upstream broker of ``MqttSettings``."""
    return BrokerConnection(
        host=s.host, port=s.port, keepalive_s=s.keepalive_s, username=s.username,
        password=read_password(s) if s.username else None, tls=s.tls, ca_file=s.ca_file, cert_file=s.cert_file,
        key_file=s.key_file, tls_insecure=s.tls_insecure,
    )


def _separate(src: Any, up: Any) -> bool:
    """True when the source's broker is not the upstream endpoint."""
    host = src.broker_host or up.host
    port = src.broker_port or up.port
    return (host, port) != (up.host, up.port)


def _tls_fields_set(src: Any) -> list[str]:
    return [f"{SOURCE_BROKER}{n.upper()}" for n in ("ca_file", "cert_file", "key_file", "tls_insecure")
            if getattr(src, f"broker_{n}")]


def source_broker_problems(src: Any, up: Any) -> list[str]:
    """One line per inconsistency between the MQTT source's broker settings and the upstream ones."""
    problems: list[str] = []
    if not _separate(src, up):
        given = ([f"{SOURCE_BROKER}TLS"] if src.broker_tls else []) + _tls_fields_set(src)
        for name in given:
            problems.append(
                f"{name}: the sensor broker is the upstream broker {up.host}:{up.port}, which is used with the "
                f"{UPSTREAM}TLS* settings; {SOURCE_BROKER}TLS* apply only to a separate broker "
                f"(set {SOURCE_BROKER}HOST or {SOURCE_BROKER}PORT)"
            )
        return problems
    host, port = src.broker_host or up.host, src.broker_port or up.port
    if not src.broker_tls:
        for name in _tls_fields_set(src):
            problems.append(f"{name} is set but {SOURCE_BROKER}TLS=false: set {SOURCE_BROKER}TLS=true or remove it")
        if up.tls and up.username and not src.broker_username:
            problems.append(
                f"{SOURCE_BROKER}TLS=false: the sensor broker {host}:{port} would get the upstream user name and "
                f"password ({UPSTREAM}USERNAME) in clear text, while the upstream connection uses TLS: set "
                f"{SOURCE_BROKER}TLS=true (with {SOURCE_BROKER}CA_FILE), or give the sensor broker its own "
                f"{SOURCE_BROKER}USERNAME and {SOURCE_BROKER}PASSWORD_FILE"
            )
    if bool(src.broker_cert_file) != bool(src.broker_key_file):
        problems.append(f"{SOURCE_BROKER}CERT_FILE and {SOURCE_BROKER}KEY_FILE: mutual TLS needs both")
    return problems


def source_connection(src: Any, up: Any) -> BrokerConnection:
    """The MQTT source's broker: the upstream one (its TLS, its credentials unless overridden) or a separate one.

    Raises ValueError naming the settings when they are inconsistent (see :func:`source_broker_problems`) or the
    sensor broker's password file is missing.
    """
    problems = source_broker_problems(src, up)
    if problems:
        raise ValueError("; ".join(problems))
    username = src.broker_username or up.username
    if src.broker_password_file is not None:
        from agent.preflight import read_secret_file

        password: str | None = read_secret_file(Path(src.broker_password_file), f"{SOURCE_BROKER}PASSWORD_FILE")
    else:
        password = read_password(up)
    if not _separate(src, up):
        return BrokerConnection(
            host=up.host, port=up.port, keepalive_s=up.keepalive_s, username=username,
            password=password if username else None, tls=up.tls, ca_file=up.ca_file, cert_file=up.cert_file,
            key_file=up.key_file, tls_insecure=up.tls_insecure,
        )
    return BrokerConnection(
        host=src.broker_host or up.host, port=src.broker_port or up.port, keepalive_s=up.keepalive_s,
        username=username, password=password if username else None, tls=src.broker_tls, ca_file=src.broker_ca_file,
        cert_file=src.broker_cert_file, key_file=src.broker_key_file, tls_insecure=src.broker_tls_insecure,
        prefix=SOURCE_BROKER,
    )


class ExplainingClient(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (paho swallows the exception)."""

    last_connect_error: BaseException | None = None

    def _create_socket(self) -> Any:  # paho-mqtt 2.x internal, pinned <3 in pyproject
        try:
            sock = super()._create_socket()
        except OSError as e:
            self.last_connect_error = e
            raise
        self.last_connect_error = None
        return sock


def set_tcp_nodelay(sock: Any) -> None:
    """Neither paho nor mosquitto sets TCP_NODELAY (STACK.md: QoS 2 round trips of ~88 ms): set it, never raise."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not TCP (unix socket, websockets)


def describe_connect_error(e: BaseException | None, prefix: str = UPSTREAM) -> str:
    """A human explanation of a failed connection attempt; ``prefix`` names the settings to check."""
    if e is None:
        return "unreachable"
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"TLS certificate check failed ({e.verify_message}): is {prefix}CA_FILE the CA that signed the "
                f"broker's certificate?")
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed ({e.reason or e})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (no broker listening there?)"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "connection timed out"
    return f"unreachable ({e})"


def explain_receive_failure(text: str, prefix: str = UPSTREAM) -> str:
    """Why the broker dropped the connection before CONNACK, from paho's 'failed to receive' log line."""
    if "CERTIFICATE_REQUIRED" in text:
        return f"requires a client certificate: set {prefix}CERT_FILE and {prefix}KEY_FILE"
    if "CERTIFICATE" in text.upper():
        return f"refused our client certificate ({text.split(':', 1)[-1].strip()})"
    return (f"dropped the connection ({text}; once, a broker restarting does this; at every attempt, a TLS listener "
            f"does it to a plain connection: check {prefix}TLS)")


def refused_hint(reason_code: Any, prefix: str = UPSTREAM) -> str:
    """The hint to add to a refused CONNACK (bad credentials name the settings)."""
    if str(reason_code) in ("Not authorized", "Bad user name or password"):
        return f": check {prefix}USERNAME and the password (file or credential)"
    if str(reason_code) == "Unsupported protocol version":
        return f": the broker does not speak MQTT 5: set {prefix}PROTOCOL=3.1.1 (or auto)"
    return ""


def configure_tls(c: mqtt.Client, conn: Any) -> None:
    """TLS with certificate verification (and host name check unless explicitly disabled); mutual TLS with a client cert."""
    c.tls_set(
        ca_certs=str(conn.ca_file) if conn.ca_file else None,
        certfile=str(conn.cert_file) if conn.cert_file else None,
        keyfile=str(conn.key_file) if conn.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    if conn.tls_insecure:
        prefix = getattr(conn, "prefix", UPSTREAM)
        log.warning("%sTLS_INSECURE=true: the broker's host name is not checked", prefix)
        c.tls_insecure_set(True)


def make_client(
    conn: BrokerConnection, client_id: str, *, log_name: str, reconnect_min_s: int = 1, reconnect_max_s: int = 30,
    max_inflight: int | None = None, on_receive_failure: Callable[[str], None] | None = None,
    client_class: type[ExplainingClient] = ExplainingClient, protocol: int = mqtt.MQTTv311,
) -> ExplainingClient:
    """A paho client for ``conn``, not yet connected; callbacks are the caller's (``on_socket_open`` is set). MQTT 5
    (the uplink, agent/uplink_refusals.py) starts clean too: the caller connects with ``clean_start=True``."""
    if protocol == mqtt.MQTTv5:
        c = client_class(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c._clean_session = True  # paho 2.x internal: in place should the uplink fall back to 3.1.1
    else:
        c = client_class(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    paho_log = logging.getLogger(log_name)
    for f in [f for f in paho_log.filters if isinstance(f, PahoLog)]:
        paho_log.removeFilter(f)  # one client per logger name at a time: do not pile up filters of old clients
    paho_log.addFilter(PahoLog(on_receive_failure))
    c.enable_logger(paho_log)
    if max_inflight is not None:
        c.max_inflight_messages_set(max_inflight)  # must precede connect()
    c.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
    if conn.username:
        c.username_pw_set(conn.username, conn.password)
    if conn.tls:
        configure_tls(c, conn)
    c.on_socket_open = lambda client, userdata, sock: set_tcp_nodelay(sock)
    return c
