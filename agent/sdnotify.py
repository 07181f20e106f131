"""systemd notification protocol (sd_notify) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

The contract (sd_notify(3)): ``$NOTIFY_SOCKET`` names an AF_UNIX socket, either a file system path (absolute)
or an abstract one written with a leading ``@`` that stands for the NUL byte; the state is sent as one
SOCK_DGRAM datagram of newline-separated ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``, ``STOPPING=1``,
``WATCHDOG=1``). ``$WATCHDOG_USEC`` is the watchdog interval; when ``$WATCHDOG_PID`` is set it names the process
that must send the pings, so a child that inherited the environment does not ping on its parent's behalf.

Every function here is safe to call from any thread and outside systemd: without ``$NOTIFY_SOCKET`` it does
nothing and returns False; a send that fails is logged once at DEBUG and never raises.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)

_warned = False
_warn_lock = threading.Lock()


def _address(value: str) -> str | bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``: a path, or bytes starting with NUL for an abstract name."""
    if value.startswith("@"):
        # Linux abstract namespace: the name is the bytes after a leading NUL, not NUL-terminated.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # relative paths and vsock: addresses are not supported (systemd 252 sends neither here)


def _debug_once(msg: str, *args: object) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    log.debug(msg, *args)


def notify(*lines: str) -> bool:
    """Send ``lines`` (``KEY=VALUE``) as one datagram to ``$NOTIFY_SOCKET``; True when it was sent."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not lines:
        return False
    address = _address(target)
    if address is None:
        _debug_once("sd_notify: unsupported NOTIFY_SOCKET %r", target)
        return False
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, address)
    except (OSError, ValueError) as e:
        _debug_once("sd_notify to %r failed: %s", target, e)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """The watchdog interval systemd expects pings within (``$WATCHDOG_USEC``), or None when not enabled.

    Ping at half this interval or more often, as sd_watchdog_enabled(3) recommends.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        interval = int(usec)
    except ValueError:
        return None
    if interval <= 0:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return interval / 1_000_000


def _one_line(text: str) -> str:
    # A newline inside STATUS= would start a new KEY=VALUE assignment.
    return " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """Tell systemd start-up finished (Type=notify), optionally with a status line."""
    return notify("READY=1", f"STATUS={_one_line(status)}") if status else notify("READY=1")


def status(text: str) -> bool:
    """Set the free-form status shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status: str | None = None) -> bool:
    """Tell systemd the service is shutting down."""
    return notify("STOPPING=1", f"STATUS={_one_line(status)}") if status else notify("STOPPING=1")


def watchdog() -> bool:
    """Ping the watchdog; call only while every stage makes progress."""
    return notify("WATCHDOG=1")
