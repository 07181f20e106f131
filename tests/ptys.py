"""Pty pairs for the tests, never on a node this test session had before.

Linux hands out the lowest free pty number. A test that unplugs a pty (closes both ends) frees its number, and the
next test's pty gets it; anything an earlier test left behind that still retried its old path (an agent or a
pymodbus serial endpoint in a reconnect loop) would then open the new pty too, and the two readers would share its
bytes. A precaution only: the failures of tests/integration/test_serial_e2e.py first blamed on this ("device
reports readiness to read but returned no data ... multiple access on port?") were reproduced later and are the
test's own unplug after it had waited 30 s in vain for a status saying "connected" — a race in the health thread
(fixed in agent/health.py, pinned in tests/unit/test_health.py); the agent had been connected all along.
"""

from __future__ import annotations

import os

_used: set[str] = set()


def fresh_openpty() -> tuple[int, int]:
    """``os.openpty()``, skipping (and then releasing) every pty whose node this process handed out before."""
    held: list[tuple[int, int]] = []
    try:
        while True:
            master, slave = os.openpty()
            name = os.ttyname(slave)
            if name not in _used:
                _used.add(name)
                return master, slave
            held.append((master, slave))  # kept open until a fresh number comes, so it is not handed out again
    finally:
        for pair in held:
            for fd in pair:
                os.close(fd)
