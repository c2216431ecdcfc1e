"""Process-wide memory settings of a gateway process: glibc's malloc and Arrow's pool.

Why: each second the prediction log's flusher builds and frees tens of megabytes
(the batch the detector scores, the Arrow table, the Parquet buffers). By default
glibc hands large blocks straight back to the kernel (``munmap``, ``madvise``) and
Arrow's bundled jemalloc decays its pages the same way; in a multi-threaded process
every such unmap interrupts the core running the request thread to flush its TLB.
Under 50 clients that cost the request thread ~100 us of CPU per request (772 against
662-716 us with the settings below, ``benchmarks/bench_serve.py``'s load on 2 cores).
Keeping those blocks in the heap trades a bounded amount of retained memory (what
one flush needs, a few tens of MB) for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("aegis.serve")

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 * 1024**2  # blocks up to this size come from the heap, reused
TRIM_THRESHOLD = 128 * 1024**2  # free heap top kept before it is returned
TOP_PAD = 16 * 1024**2


def tune_memory() -> bool:
    """Applies the settings (once per process; harmless again). Returns whether glibc took them.

    On a C library without ``mallopt`` (musl, macOS) nothing changes but Arrow's pool.
    """
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())  # the same malloc, the same settings
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("no mallopt here: glibc's defaults stay")
        return False
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    return ok
