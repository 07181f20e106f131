"""agent.heap on this machine's glibc: freed heap memory really goes back to the system."""

from __future__ import annotations

import subprocess
import sys

# In a fresh process: 40 MB in 64 KiB chunks (below glibc's mmap threshold: from the heap), touched, each followed by
# a small block that stays: the freed chunks are holes between live blocks (fragmentation), which free() itself
# never gives back.
SCRIPT = r"""
import ctypes, sys
from agent import heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
assert heap.limit_arenas(2), "mallopt(M_ARENA_MAX) refused"
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
print(before, after, trimmed)
"""


def test_trim_gives_freed_heap_memory_back():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    before, after, trimmed = float(out[0]), float(out[1]), out[2]
    assert trimmed == "True"
    assert before - after > 30, f"RSS {before:.1f} MB -> {after:.1f} MB after trim(): the freed 40 MB stayed"

