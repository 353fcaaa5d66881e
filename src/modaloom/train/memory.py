"""Resident memory of a training process: large tensor buffers given back to the system when freed.

glibc keeps freed heap memory for reuse, and after the first large buffer is freed it raises its mmap
threshold (up to 32 MiB), so that activations and gradients of every later step come from the heap. The
memory of the largest step then stays resident, fragmented, for the rest of the run. With a fixed threshold
(``train.mmap_threshold_mb``) buffers above it are mapped on allocation and unmapped on free, so that the
resident size follows what is alive. A no-op off glibc (macOS, musl) and when the threshold is 0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def set_mmap_threshold(megabytes: float) -> bool:
    """Serve allocations above ``megabytes`` MiB with their own mapping (0: leave glibc's default); whether it
    took effect."""
    if megabytes <= 0 or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, int(megabytes * 2**20)))


def release_free_memory() -> str | None:
    """Give memory that the allocator keeps after frees back to the system now; the allocator that did it.

    Called when training ends, so that the summary, the plot and the model export do not add to the pages
    that the last steps freed: jemalloc keeps them for 10 s, glibc keeps the top of its heaps.
    """
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return None
    purges = (("mallctl", lambda f: f(b"arena.4096.purge", None, None, None, 0) == 0, "jemalloc"),
              ("MallocExtension_ReleaseFreeMemory", lambda f: f() or True, "tcmalloc"),
              ("mi_collect", lambda f: f(True) or True, "mimalloc"),
              ("malloc_trim", lambda f: f(0) >= 0, "glibc"))
    for symbol, call, name in purges:
        function = getattr(process, symbol, None)
        if function is not None and call(function):
            return name
    return None
