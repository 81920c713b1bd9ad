"""Freed memory kept in the process for the next array (glibc's malloc).

The engine allocates and frees activation-sized temporaries in every layer.
By default glibc hands large freed blocks back to the kernel (munmap, heap
trimming), and the next array of the same size page-faults its memory in
again: measured on a training-mode BatchNormalization of a 28 MB activation,
that was a quarter to a third of its time. Two `mallopt` settings keep that
memory for reuse: no block is given its own mapping (every size comes from the
heap, including the activations of a large batch, which are over the 32 MB
ceiling of glibc's mapping threshold), and the heap is not trimmed. Peak
resident memory is the same; what is freed after the peak is reused, not
returned, until the process ends. (A thread's arena that cannot hold a large
block hands it to the main heap, as glibc does for any failed arena.)

Applied once, when the first engine model is built. `KERASCHECK_MALLOC=default`
keeps glibc's own policy; without glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # bytes of free heap top before trimming (an int for mallopt)

_applied = False


def keep_freed_memory() -> bool:
    """Apply the settings (once per process); whether they are in force."""
    global _applied
    if _applied or os.environ.get("KERASCHECK_MALLOC") == "default":
        return _applied
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    return _applied
