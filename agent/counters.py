"""Thread-safe counters shared by the stages: every rejection and drop is counted by reason."""

from __future__ import annotations

import threading
from collections import Counter


class Tally:
    """Counts that ONE thread bumps many times per reading (a source's receive thread): a plain dict that only that
    thread writes, so no lock is taken per count. The ``Counters`` that made it (and their parents) add them in
    when read; a reader copies the dict in one step (atomic in CPython: the copy does not release the GIL)."""

    __slots__ = ("d",)

    def __init__(self) -> None:
        self.d: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        d = self.d
        d[name] = d.get(name, 0) + n


class Counters:
    """Named counters (``reject.non_numeric``, ``queue.dropped`` …) that any thread may bump. An asset's counters
    have the gateway's as ``parent``: each count goes to both (the asset's summaries, the gateway's stats)."""

    def __init__(self, parent: "Counters | None" = None) -> None:
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()
        self._tallies: tuple[Tally, ...] = ()
        self.parent = parent

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] += n
        if self.parent is not None:
            self.parent.inc(name, n)

    def tally(self) -> Tally:
        """A lock-free tally for one thread, read as part of these counters (and of their parents)."""
        t = Tally()
        c: Counters | None = self
        while c is not None:
            with c._lock:
                c._tallies = c._tallies + (t,)
            c = c.parent
        return t

    def get(self, name: str) -> int:
        with self._lock:
            v = self._c.get(name, 0)
        for t in self._tallies:
            v += t.d.get(name, 0)
        return v

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        """Counters whose name starts with ``prefix``, with the prefix removed."""
        with self._lock:
            merged = Counter(self._c)
        for t in self._tallies:
            merged.update(t.d.copy())
        return {k[len(prefix):]: v for k, v in sorted(merged.items()) if k.startswith(prefix)}
