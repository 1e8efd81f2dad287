"""Host memory of a CPU training run: fast by default, close to what its tensors need in the memory modes.

By default a training step reuses the memory its previous step freed. Every pass allocates fresh activations
and gradients; glibc hands large freed blocks back to the system (``munmap``, heap trimming), and each page of
the next step's tensors then faults in again and is zeroed by the kernel. An elementwise product into a fresh
tensor ran at 6 GB/s where one into a reused buffer ran at 30 GB/s (2-core VM), and a step of SmolLM2-135M made
300,000 to 900,000 such page faults. ``keep_freed_memory`` keeps the process's heap: after the largest batch
so far, a step makes almost none (a handful, where it made 100,000 before).

In the memory modes three things grow a CPU process past its live tensors, each with its own remedy here:

- glibc serves large allocations with ``mmap`` only above a threshold that it raises each time such a block is
  freed, up to 32 MiB; after the first training step most activations land in the heap instead, where freed
  blocks stay resident and fragment. Fixing the threshold returns every freed activation to the system.
- Smaller freed blocks (a one-example micro-batch's activations are mostly under a megabyte) fragment the heap
  as sequence lengths change; ``malloc_trim`` after each forward/backward gives their pages back.
- oneDNN, which runs bf16 matrix products on a CPU, and PyTorch's layer above it (ideep) each cache up to 1024
  compiled kernels, a set per input shape. Padding-free batches bring a new shape with nearly every batch, so
  without a bound the caches grow by megabytes a step for the whole run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameter numbers
NEVER_TRIM_BYTES = 2**31 - 1  # mallopt takes a C int: free heap above 2 GiB is the only kind given back
THRESHOLD_BYTES = 1 << 20
KERNEL_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's, ideep's
KERNEL_CACHE_ENTRIES = 128  # more than one batch's forward and backward use: every cache hit within a batch stays


@functools.cache
def _c_library() -> Any:
    """Loaded once: ``find_library`` runs ``ldconfig``, too slow for a call after every forward/backward pass."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def glibc() -> Any:
    """The C library where it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    return _c_library() if sys.platform.startswith("linux") else None


def return_large_blocks_to_the_system(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Serve allocations above ``threshold_bytes`` with mmap for the rest of the process; False where not glibc."""
    libc = glibc()
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes)) if libc is not None else False


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and keep what is freed there for the next one (the speed mode);
    False where not glibc. Blocks mapped before this call still go back when freed."""
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM_BYTES))


def give_freed_pages_back() -> bool:
    """Return the free pages inside the heap to the system (``malloc_trim``); False where not glibc."""
    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> dict[str, str]:
    """Bound oneDNN's and ideep's kernel caches, keeping any value the user set; returns the settings in force.

    Both read their capacity once, when the process first runs a oneDNN product: call this before.
    """
    for name in KERNEL_CACHES:
        os.environ.setdefault(name, str(entries))
    return {name: os.environ[name] for name in KERNEL_CACHES}
