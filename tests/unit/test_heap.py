"""agent.heap on this machine's glibc (the gateways' and CI's libc): freed heap memory really goes back to the system."""

from __future__ import annotations

import os
import subprocess
import sys

# In a fresh process (no MALLOC_* tuning from outside): 40 MiB in 64 KiB chunks (below glibc's mmap threshold: from
# the heap), touched, each followed by a small block that stays: the freed chunks are holes between live blocks
# (fragmentation), which free() itself never gives back. With 4 to 16 KiB pages most of each hole is whole pages.
# Where the small blocks are served from free lists elsewhere instead (it depends on the heap's state at start: seen
# on one machine), the freed chunks join the top of the heap, which free() would give back by itself above
# M_TRIM_THRESHOLD; the threshold is raised so that the memory is held until trim() in either case, and the test
# checks that it was held.
SCRIPT = r"""
import ctypes, os
from agent import heap
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
page = os.sysconf("SC_PAGE_SIZE")
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page / 2**20
assert heap.limit_arenas(2), "mallopt(M_ARENA_MAX) refused"
assert libc.mallopt(-1, 1 << 30) == 1, "mallopt(M_TRIM_THRESHOLD) refused"
start = rss_mb()
chunks, pins = [], []
for _ in range(640):
    chunks.append(libc.malloc(65536))
    ctypes.memset(chunks[-1], 1, 65536)
    pins.append(libc.malloc(64))
for c in chunks:
    libc.free(c)
before = rss_mb()
trimmed = heap.trim()
after = rss_mb()
print(start, before, after, trimmed)
"""


def test_trim_gives_freed_heap_memory_back():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    start, before, after, trimmed = float(out[0]), float(out[1]), float(out[2]), out[3]
    assert before - start > 30, f"RSS {start:.1f} MB -> {before:.1f} MB: the freed 40 MiB was not held before trim()"
    assert trimmed == "True"
    assert before - after > 20, f"RSS {before:.1f} MB -> {after:.1f} MB after trim(): the freed 40 MiB stayed"


def test_an_operators_arena_setting_stands():
    """MALLOC_ARENA_MAX or a glibc tunable set for the service wins over the agent's one arena."""
    code = "from agent import heap; print(heap.limit_arenas())"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    for extra, want in (({}, "True"), ({"MALLOC_ARENA_MAX": "4"}, "False"),
                        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, "False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**base, **extra}).stdout.strip()
        assert out == want, (extra, out)


# A thread's malloc after limit_arenas(): from the main arena (the [heap] that brk grows), not an arena of its own
# (glibc gives each new thread one while there are fewer than M_ARENA_MAX, by default 8 per core).
THREAD_SCRIPT = r"""
import ctypes, sys, threading
from agent import heap
if sys.argv[1] == "limit":
    assert heap.limit_arenas(), "mallopt(M_ARENA_MAX) refused"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
got = []
t = threading.Thread(target=lambda: got.append(libc.malloc(1024)))
t.start()
t.join()
with open("/proc/self/maps") as f:
    lo, hi = next([int(x, 16) for x in line.split()[0].split("-")] for line in f if line.rstrip().endswith("[heap]"))
print("main" if lo <= got[0] < hi else "own")
"""


def test_threads_share_the_main_arena():
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    seen = {mode: subprocess.run([sys.executable, "-c", THREAD_SCRIPT, mode], capture_output=True, text=True,
                                 check=True, env=base).stdout.strip() for mode in ("limit", "default")}
    assert seen == {"limit": "main", "default": "own"}, seen
