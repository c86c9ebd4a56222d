"""Process set-up of a training run: settings of the process itself, not of the model or its kernels.

:func:`keep_freed_memory` (CPU, glibc): large freed blocks stay in the process for reuse instead of being mapped
afresh, and faulted in page by page, at every allocation (``train.keep_freed_memory``, on by default).
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]


def keep_freed_memory(max_bytes: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed blocks of up to ``max_bytes`` for reuse; True where applied, False elsewhere.

    glibc maps every allocation above its mmap threshold (which it raises to 32 MB at most) afresh and unmaps it
    on free, so each large tensor of every step costs the kernel a page fault and a zeroed page per 4 KB on first
    touch: at T = 16 that was most of the fused LIF's time (``benchmarks/README.md``). Raising the mmap and trim
    thresholds keeps such blocks in the heap. Process-wide and for the life of the process; numbers do not change
    (torch aligns its buffers the same either way); the process's resident memory stays near its peak instead
    of shrinking between steps. A no-op (False) without glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(max_bytes), 2**31 - 1)
    return mallopt(M_MMAP_THRESHOLD, value) == 1 and mallopt(M_TRIM_THRESHOLD, value) == 1

