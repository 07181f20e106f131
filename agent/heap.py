"""Keeping the C heap small on a long-running gateway (glibc only; elsewhere these do nothing).

CPython takes large buffers (JSON payloads in flight, numpy arrays of a block) from the C allocator. glibc keeps
what is freed for reuse, per thread arena, and gives it back to the system only when the top of a heap is free
beyond a threshold that grows with the largest block seen: after a burst the process keeps the peak. Two knobs:

* ``limit_arenas``: one malloc arena (``mallopt(M_ARENA_MAX)``) instead of up to 8 per core: the agent's threads
  (sources, pipeline, uplink, health) share it, so free memory is not held once per thread; they run Python one at a
  time under the GIL, so they hardly ever wait for each other's malloc. Measured: 0.2-0.4 MB less steady RSS at
  60,000 readings/s than with two arenas, the same sustained rate (docs/benchmarks.md). Called before the
  threads start.
* ``trim``: ``malloc_trim(0)`` hands the free pages of every arena back to the system.
"""

from __future__ import annotations

import ctypes
import os
from typing import Literal

M_ARENA_MAX = -8  # malloc.h
_libc: ctypes.CDLL | None | Literal[False] = None  # None: not looked for yet; False: no glibc


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        _libc = False
        try:
            lib = ctypes.CDLL(None)  # the process's own symbols: libc's (find_library would run ldconfig)
            if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") and hasattr(lib, "gnu_get_libc_version"):
                _libc = lib
        except OSError:
            pass
    return _libc or None


def limit_arenas(n: int = 1) -> bool:
    """At most ``n`` malloc arenas for the threads started after this; False where it cannot be set, or where the
    operator chose already (``MALLOC_ARENA_MAX``, ``GLIBC_TUNABLES=glibc.malloc.arena_max=...``: theirs stands)."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    lib = _glibc()
    return bool(lib is not None and lib.mallopt(M_ARENA_MAX, n) == 1)


def trim() -> bool:
    """Give the free pages of the C heap back to the system; True when some were."""
    lib = _glibc()
    return bool(lib is not None and lib.malloc_trim(0))
