"""Signal handlers that take no lock.

A Python signal handler runs in the main thread, between two bytecodes of whatever the main thread is doing. When
that is ``threading.Event.wait()``, the main thread holds the event's (non-reentrant) condition lock for a few
bytecodes of every wait; a handler that calls ``event.set()`` then tries to take the same lock in the same thread
and the process hangs for good: SIGTERM never stops it (the same family as cpython issue #126434). Seen once in the
test suite: an agent that logged nothing more after SIGTERM and had to be killed.

So the handlers here only count (an attribute store, no lock), and the main thread polls the counts and sets its
events itself. It does not poll on a short timer (every wake-up of an idle daemon costs CPU): it waits on the read end
of a pipe that ``signal.set_wakeup_fd`` has every signal write a byte to, and that another thread may write to with
``wake_main()``, so a signal ends the wait at once.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from types import FrameType

_pipe: tuple[int, int] | None = None  # (read end, write end) of the wake-up pipe, once made on the main thread


def _wakeup_fd() -> int | None:
    """The read end of the pipe every signal writes a byte to; None off the main thread or when another wake-up fd
    is already set (then ``sleep`` polls as before)."""
    global _pipe
    if _pipe is None:
        if threading.current_thread() is not threading.main_thread():
            return None
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        if old != -1:  # somebody else's (an event loop): leave it to them
            signal.set_wakeup_fd(old)
            os.close(r)
            os.close(w)
            return None
        _pipe = (r, w)
    return _pipe[0]


def wake_main() -> None:
    """End the main thread's ``SignalCounter.sleep`` early (any thread; never raises)."""
    if _pipe is not None:
        try:
            os.write(_pipe[1], b"\0")
        except OSError:  # the pipe is full: it is awake already
            pass


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
        """Sleep up to ``seconds``, returning early when a signal arrives meanwhile (True when one of this
        counter's) or ``wake_main()`` is called. On the main thread it waits on the wake-up pipe: no wake-up until
        then; elsewhere it polls every ``step`` seconds."""
        start = self.count
        deadline = time.monotonic() + seconds
        fd = _wakeup_fd()
        while self.count == start:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if fd is None:
                time.sleep(min(step, left))
                continue
            if select.select([fd], [], [], left)[0]:
                try:
                    while os.read(fd, 512):  # every byte written so far
                        pass
                except BlockingIOError:
                    pass
                break  # a signal (this counter's or another's: the caller looks at both) or wake_main()
        return self.count != start
