"""Keep freed activation memory in the process (glibc) instead of returning it to the OS.

Without this, glibc returns it after each batch: with glibc's defaults, a freed block above the
dynamic mmap threshold goes back to the OS, and the next batch page-faults the same megabytes in
again. On one machine this cost the cpu sweep about 10% of its CPU time in the kernel (88 million
page faults); with the thresholds below a WRN-10-1 training step plus a test batch ran 1.5× faster
(`make bench`, bench_cpu_layout, "speedup_allocator_alone").
It changes no number, only where tensors live (tests/test_allocator.py compares the bits).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = (
    32 << 20
)  # glibc's largest allowed value on 64-bit: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # give the heap's free top back to the OS only beyond 1 GiB
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True if set.

    Does nothing (False) off glibc, or when the user set the thresholds through the environment."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
