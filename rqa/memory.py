"""Keep a CPU training run's resident memory close to what its tensors need.

glibc serves large allocations with ``mmap`` only above a threshold that it raises each time such a block is
freed, up to 32 MiB; after the first training step most activations land in the heap instead, where freed
blocks stay resident and fragment, so the process's peak RSS grows well past its live tensors. Fixing the
threshold (which also stops glibc from moving it) returns every freed activation to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20


def return_large_blocks_to_the_system(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Serve allocations above ``threshold_bytes`` with mmap for the rest of the process; False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
