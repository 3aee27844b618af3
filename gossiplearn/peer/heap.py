"""Keep the memory a round frees for the next one, instead of handing it back to the kernel.

A round allocates and frees the same buffers over and over: a frame of ~1 MiB per shard read
from a socket, opened, decoded and added; the masked shards; a model-sized average. glibc's
malloc serves big requests with fresh ``mmap`` pages (and trims a heap whose free top grows
past a threshold), so each of those buffers is zero-filled by the kernel page by page on its
first write: ~2,500 page faults for a 10 MiB buffer, ~100,000 for a 100M-parameter average.
Measured on the reference machine (4 peer processes, 10M parameters, 32-bit ring), a round
takes ~10% less time when freed memory stays in the heap (docs/performance.md).

The price: the process keeps up to TRIM_THRESHOLD bytes of freed memory between rounds (its
peak resident memory hardly changes: a round's buffers are reused, not added to). glibc
only; elsewhere (musl, macOS) :func:`keep_freed_memory` changes nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

#: Freed memory at the heap's top beyond this goes back to the kernel: a few rounds' worth of
#: frames and shards of a 100M-parameter model (a shard is at most 4 MiB), not the model.
TRIM_THRESHOLD = 256 << 20
#: The heap grows by at least this much at a time (fewer brk calls while a round streams).
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve every request from the heap (no ``mmap``'d chunks) and to
    keep up to TRIM_THRESHOLD bytes of freed memory; returns whether it took effect. Call it
    once, early, in a process that runs rounds (the daemon does, unless
    ``peer.keep_freed_memory = false``)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt here (%s): the heap is left as it is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_MAX, 0),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    if not done:
        log.debug("mallopt refused a setting: the heap may be left partly as it was")
    return done
