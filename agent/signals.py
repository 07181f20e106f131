"""Signal handlers that take no lock.

A Python signal handler runs in the main thread, between two bytecodes of whatever the main thread is doing. When
that is ``threading.Event.wait()``, the main thread holds the event's (non-reentrant) condition lock for a few
bytecodes of every wait; a handler that calls ``event.set()`` then tries to take the same lock in the same thread
and the process hangs for good: SIGTERM never stops it (the same family as cpython issue #126434). Seen once in the
test suite: an agent that logged nothing more after SIGTERM and had to be killed.

So the handlers here only count (an attribute store, no lock), and the main thread polls the counts and sets its
events itself.
"""

from __future__ import annotations

import signal
import time
from types import FrameType


class SignalCounter:
    """Counts deliveries of the given signals; ``seen()`` tells the caller whether one arrived since it last asked."""

    def __init__(self, *signums: int) -> None:
        self.count = 0
        self._seen = 0
        self._previous: dict[int, object] = {}
        self._signums = signums

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1  # main thread only (handlers run there): no other writer, no lock

    def install(self) -> SignalCounter:
        for s in self._signums:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._previous.clear()

    def seen(self) -> bool:
        """True once per batch of deliveries since the last call (a signal arriving meanwhile is never lost)."""
        c = self.count
        if c != self._seen:
            self._seen = c
            return True
        return False

    @property
    def arrived(self) -> bool:
        """True when any signal arrived since ``install()`` (does not consume it)."""
        return self.count > 0

    def sleep(self, seconds: float, step: float = 0.05) -> bool:
        """Sleep up to ``seconds``, returning early (True) when a signal arrives meanwhile."""
        start = self.count
        deadline = time.monotonic() + seconds
        while self.count == start:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(step, left))
        return True
