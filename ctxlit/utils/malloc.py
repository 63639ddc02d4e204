"""glibc malloc settings for a process that trains on the CPU: keep freed memory for reuse.

A CPU training step allocates and frees the same activation-sized buffers (0.1-30 MB) every
step. With glibc's defaults, buffers above its mmap threshold are mapped and unmapped each time
and freed heap tops are returned to the OS, so every step touches fresh pages: a page fault
per 4 KB. On a 2-core CPU the Selective Kernel block took 170-350 minor faults per step at
4x64x28x28; with the thresholds below, 40-60. With other jobs on the cores that was 1.62-2.21x
a conv's time against 1.34-1.38x; on quiet cores 1.38-1.60x against 1.36-1.53x. The CUDA
allocator caches for the same reason; jemalloc and tcmalloc (PyTorch's CPU performance
guide) do it too.

``python -m ctxlit.fit`` and ``python -m ctxlit.bench blocks`` call :func:`keep_freed_memory`
first. It changes nothing where the user already chose (``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` set, e.g. for another allocator), where ``CTXLIT_SYSTEM_MALLOC=1``
asks for glibc's defaults, or where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: allocations below this come from the heap and are reused (glibc's documented maximum on
#: 64-bit systems; a ResNet-50 activation at batch 32 and 56x56 is 12-50 MB)
MMAP_THRESHOLD = 32 << 20
#: free memory at the heap's top is given back to the OS only above this
TRIM_THRESHOLD = 256 << 20
#: the environment variables that leave the allocator as it is
OPT_OUT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "CTXLIT_SYSTEM_MALLOC")


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds for this process (and its forked data workers);
    returns what was done, for a benchmark's header."""
    chosen = [name for name in OPT_OUT if os.environ.get(name)]
    if chosen:
        return f"malloc: left as configured ({', '.join(chosen)} set)"
    if not sys.platform.startswith("linux"):
        return "malloc: system default (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu = ctypes.CFUNCTYPE(ctypes.c_char_p)(("gnu_get_libc_version", libc))  # glibc only
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        return "malloc: system default (not glibc)"
    if not done:
        return "malloc: system default (mallopt refused the thresholds)"
    return (f"malloc: glibc {gnu().decode()}, freed memory kept for reuse (mmap threshold {MMAP_THRESHOLD >> 20} MB, "
            f"trim {TRIM_THRESHOLD >> 20} MB; CTXLIT_SYSTEM_MALLOC=1 for glibc's defaults)")
