"""Pty pairs for the tests, never on a node this test session had before.

Linux hands out the lowest free pty number. A test that unplugs a pty (closes both ends) frees its number, and the
next test's pty gets it; anything an earlier test left behind that still retries its old path (an agent or a
pymodbus serial endpoint in a reconnect loop) then opens the new pty too, and the two readers share its bytes
("device reports readiness to read but returned no data (... multiple access on port?)"). Seen as a rare failure
of tests/integration/test_serial_e2e.py in CI.
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
