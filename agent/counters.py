"""Thread-safe counters shared by the stages: every rejection and drop is counted by reason."""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Named counters (``reject.non_numeric``, ``queue.dropped`` …) that any thread may bump. An asset's counters
    have the gateway's as ``parent``: each count goes to both (the asset's summaries, the gateway's stats)."""

    def __init__(self, parent: "Counters | None" = None) -> None:
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()
        self.parent = parent

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] += n
        if self.parent is not None:
            self.parent.inc(name, n)

    def get(self, name: str) -> int:
        with self._lock:
            return self._c.get(name, 0)

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        """Counters whose name starts with ``prefix``, with the prefix removed."""
        with self._lock:
            return {k[len(prefix):]: v for k, v in sorted(self._c.items()) if k.startswith(prefix)}
