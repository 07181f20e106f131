"""State files: written so that a power cut leaves the old file or the new one, set aside when unusable."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

from agent import sdnotify

log = logging.getLogger(__name__)
T = TypeVar("T")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file must not keep a full disk full
        raise


def set_aside(path: Path, why: str) -> Path | None:
    """Move an unusable state file out of the way (``<name>.corrupt-<time>``, kept for a post-mortem) and say so;
    the caller starts afresh. Returns the new name, None when even the rename failed (then the file stays)."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    try:
        os.replace(path, aside)
    except OSError as e:
        log.warning("ignoring %s (%s); could not move it aside: %s", path, why, e.strerror)
        return None
    log.warning("%s is unusable (%s): moved aside to %s, starting afresh", path, why, aside.name)
    return aside


class StateDirError(Exception):
    """The state directory cannot be used (not a directory, read-only, full, no permission): exit 78."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"state directory {path}: {reason}")
        self.path, self.reason = path, reason


FULL = (errno.ENOSPC, errno.EDQUOT)  # no room (blocks, inodes, quota): room may come back
SPACE_CHECK_S = 5.0  # under systemd, a full state directory at start is looked at again this often
START_BUDGET_S = 120.0  # the unit's TimeoutStartSec: asked for again once there is room, to start in


def until_room(path: Path, attempt: Callable[[], T], wait: bool | None = None) -> T:
    """``attempt()``, again and again while it fails for a full disk when ``wait`` (None: under systemd, with
    ``$NOTIFY_SOCKET``), saying so in the journal and ``systemctl status`` and extending the start timeout: a full
    disk is no configuration error, and exit 78 would keep the service down (``RestartPreventExitStatus=78``)
    after the disk has room again. By hand (or another error) the OSError is raised."""
    wait = bool(os.environ.get("NOTIFY_SOCKET")) if wait is None else wait
    since = None
    while True:
        try:
            out = attempt()
        except OSError as e:
            if not (wait and e.errno in FULL):
                raise
            if since is None:
                since = time.monotonic()
                log.error("state directory %s is full (%s): waiting for free space, checked every %.0f s", path,
                          e.strerror, SPACE_CHECK_S)
            sdnotify.notify(f"EXTEND_TIMEOUT_USEC={int(3 * SPACE_CHECK_S * 1e6)}",
                            f"STATUS=waiting for free space in {path} (full for {time.monotonic() - since:.0f} s)")
            time.sleep(SPACE_CHECK_S)
            continue
        if since is not None:
            log.warning("state directory %s has room again after %.0f s: starting", path, time.monotonic() - since)
            sdnotify.notify(f"EXTEND_TIMEOUT_USEC={int(START_BUDGET_S * 1e6)}", "STATUS=starting")
        return out


def make_state_dir(path: Path) -> None:
    """Create ``path`` (and its parents); StateDirError when that fails or a file is in its place (a full disk
    under systemd: ``until_room``)."""
    try:
        until_room(path, lambda: path.mkdir(parents=True, exist_ok=True))
    except FileExistsError:
        raise StateDirError(path, "exists and is not a directory") from None
    except OSError as e:
        raise StateDirError(path, f"cannot create it ({e.strerror})") from None
    if not path.is_dir():
        raise StateDirError(path, "exists and is not a directory")


def probe_state_dir(path: Path, reserve_name: str = "outbox.db.reserve", wait: bool | None = None) -> None:
    """Make sure the agent can create, write and remove a file in ``path`` (creating the directory), before any
    state file is opened: a read-only or full directory, or a file in its place, is then one clear error naming the
    path and the reason, instead of a store that claims corruption and a restart loop. On a full disk the outbox's
    ballast file (``reserve_name``) is given up first: that is what it is kept for. Still full: under systemd it
    waits for room (``until_room``); by hand it is that error."""
    make_state_dir(path)
    try:
        until_room(path, lambda: _probe(path, reserve_name), wait)
    except OSError as e:
        raise StateDirError(path, f"cannot write in it ({e.strerror}); it must be a writable directory with free space") from None


def _probe(path: Path, reserve_name: str) -> None:
    """One write probe (the outbox's ballast given up once on a full disk); OSError when it failed."""
    probe = path / f".write-probe-{os.getpid()}"
    for attempt in (1, 2):
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
            return
        except OSError as e:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
            reserve = path / reserve_name
            if attempt == 1 and e.errno in FULL and reserve.exists():
                log.error("state directory %s is full at start: giving up the outbox's reserve %s", path, reserve.name)
                reserve.unlink()
                continue
            raise


def sqlite_corrupt(e: BaseException) -> bool:
    """True when SQLite says the file is damaged or not a database (set it aside), False when the trouble is
    around it — permissions, a read-only or full disk, a lock — where moving the file would help nothing."""
    name = getattr(e, "sqlite_errorname", None)
    if name is None:
        return not isinstance(e, sqlite3.OperationalError)  # e.g. a failed quick_check raised by us
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


LOCK_NAME = "agent.lock"
LOCK_WAIT_S = 5.0  # an agent that is just stopping, or `calibrate --reset` looking: wait that long before refusing


def hold_state_dir(path: Path, wait_s: float = LOCK_WAIT_S) -> int:
    """Take ``path`` for this process: an exclusive ``flock`` on ``agent.lock`` in it, held until the process ends
    (the kernel drops it on any exit, SIGKILL and power cut included, so a stale lock cannot block a start). A
    second agent on the same directory would write the same outbox and teach-in and connect with the same client
    id; it gets StateDirError (exit 78) naming the pid of the one running, after ``wait_s``. Taken before anything
    else is touched in the directory (the disk probe gives up the outbox's reserve on a full disk). Returns the
    descriptor to release."""
    make_state_dir(path)
    lock = path / LOCK_NAME
    try:
        fd = until_room(path, lambda: os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError as e:
        try:  # a lock file another user made (a first run by hand as root), a read-only disk: flock needs no write
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise StateDirError(path, f"cannot write in it ({e.strerror}); it must be a writable directory with "
                                      "free space") from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            pid = _lock_pid(fd)
            os.close(fd)
            raise StateDirError(path, f"in use by another edge-agent{f' (pid {pid})' if pid else ''}: stop it first "
                                      "(systemctl stop edge-agent), or give this one a directory of its own") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # read-only descriptor, a full disk: the pid is only for the message of a second agent
    return fd


def release_state_dir(fd: int) -> None:
    """Give the directory up (the file stays: removing a lock file races with the next agent taking it)."""
    try:
        os.close(fd)
    except OSError:
        pass


def state_dir_holder(path: Path) -> int | None:
    """The pid of the agent holding ``path`` (0 when it did not say), None when no agent holds it."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (never run here) or not readable: nothing to go by
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return 0
