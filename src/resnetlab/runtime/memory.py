"""Freed memory kept in the process while a CPU trains.

glibc serves each allocation above its mmap threshold (128 KiB to 32 MiB) with a fresh mapping
and unmaps it when freed, so every training step faults its large activations back in, page by
page. For the speed-run network at batch 512 on a 2-core AMD EPYC that is 73,000 page faults a
step and 0.16 s of kernel time a second; with the freed memory kept, none, and 1.10x the
images/s (benchmarks/allocator.py). Serving every allocation from the heap and never trimming
it, with glibc's own ``mallopt``, does what PyTorch's CPU launcher
(``torch.backends.xeon.run_cpu``) gets by preloading jemalloc or tcmalloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_NEVER_TRIM = 2**30  # bytes of free heap top kept before any is returned


def keep_freed_memory() -> bool:
    """Make glibc serve allocations from its heap and keep what is freed (this process, from
    now on); False where the C library is not glibc, which then stays as it was."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or no mallopt (macOS)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
