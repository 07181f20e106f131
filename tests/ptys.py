"""Pty pairs for the tests, never on a node this test run had before (in any of its pytest-xdist workers).

Linux hands out the lowest free pty number. A test that unplugs a pty (closes both ends) frees its number, and the
next test's pty gets it; anything an earlier test left behind that still retried its old path (an agent or a
pymodbus serial endpoint in a reconnect loop) would then open the new pty too, and the two readers would share its
bytes. A precaution only: the failures of tests/integration/test_serial_e2e.py first blamed on this ("device
reports readiness to read but returned no data ... multiple access on port?") were reproduced later and are the
test's own unplug after it had waited 30 s in vain for a status saying "connected" — a race in the health thread
(fixed in agent/health.py, pinned in tests/unit/test_health.py); the agent had been connected all along.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_used: set[str] = set()
# set by tests/conftest.py in a pytest-xdist worker: the file the workers of one run share, so that a pty number one
# worker unplugged is never handed to another worker's test either (outside xdist, this process's _used is enough)
REGISTRY: Path | None = None


@contextmanager
def _shared_used() -> Iterator[set[str]]:
    path = REGISTRY
    if path is None:
        yield _used
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        used = set(f.read().split())
        before = set(used)
        yield used
        f.write("".join(f"{name}\n" for name in sorted(used - before)))


def fresh_openpty() -> tuple[int, int]:
    """``os.openpty()``, skipping (and then releasing) every pty whose node this test run handed out before."""
    held: list[tuple[int, int]] = []
    try:
        with _shared_used() as used:
            while True:
                master, slave = os.openpty()
                name = os.ttyname(slave)
                if name not in used:
                    used.add(name)
                    return master, slave
                held.append((master, slave))  # kept open until a fresh number comes, so it is not handed out again
    finally:
        for pair in held:
            for fd in pair:
                os.close(fd)
