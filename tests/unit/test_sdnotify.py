"""sd_notify against real AF_UNIX datagram sockets: a path socket and an abstract one."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sdnotify


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def _no_more(sock: socket.socket) -> None:
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_path_socket_gets_one_datagram_with_exact_bytes(path_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1", "STATUS=model loaded, source open") is True
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=model loaded, source open"
    _no_more(path_socket)


def test_abstract_socket_gets_one_datagram_with_exact_bytes(abstract_socket: socket.socket) -> None:
    assert sdnotify.notify("WATCHDOG=1") is True
    assert abstract_socket.recv(4096) == b"WATCHDOG=1"
    _no_more(abstract_socket)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: sdnotify.ready(), b"READY=1"),
        (lambda: sdnotify.ready("running: serial /dev/ttyUSB0"), b"READY=1\nSTATUS=running: serial /dev/ttyUSB0"),
        (lambda: sdnotify.status("loading model"), b"STATUS=loading model"),
        (lambda: sdnotify.status("two\nlines"), b"STATUS=two lines"),
        (lambda: sdnotify.stopping(), b"STOPPING=1"),
        (lambda: sdnotify.stopping("draining outbox"), b"STOPPING=1\nSTATUS=draining outbox"),
        (lambda: sdnotify.watchdog(), b"WATCHDOG=1"),
    ],
)
def test_convenience_calls(abstract_socket: socket.socket, call, expected: bytes) -> None:  # type: ignore[no-untyped-def]
    assert call() is True
    assert abstract_socket.recv(4096) == expected


def test_utf8_status(path_socket: socket.socket) -> None:
    assert sdnotify.status("Temperatur 21 °C") is True
    assert path_socket.recv(4096) == "STATUS=Temperatur 21 °C".encode()


def test_no_socket_is_a_noop() -> None:
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog() is False


def test_empty_socket_variable_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(
    "value", ["/nonexistent/dir/notify", "@edge-agent-nobody-listens-" + uuid.uuid4().hex, "relative/path", "vsock:2:1234"],
    ids=["missing-dir", "abstract-nobody-listens", "relative", "vsock"],  # pytest-xdist workers must collect alike
)
def test_bad_socket_returns_false_without_raising(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.watchdog() is False


def test_socket_path_that_is_not_a_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(regular))
    assert sdnotify.notify("READY=1") is False


def test_failure_is_logged_once_at_debug(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sdnotify, "_warned", False)
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/dir/notify")
    with caplog.at_level("DEBUG", logger="agent.sdnotify"):
        for _ in range(5):
            sdnotify.watchdog()
    assert len([r for r in caplog.records if r.name == "agent.sdnotify"]) == 1
    assert all(r.levelname == "DEBUG" for r in caplog.records if r.name == "agent.sdnotify")


def test_nothing_to_send() -> None:
    assert sdnotify.notify() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 30.0),
        ("500000", None, 0.5),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("30000000", "junk", None),
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        ("", None, None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert sdnotify.watchdog_interval_s() == expected
