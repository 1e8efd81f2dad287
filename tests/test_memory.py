"""Host memory settings: freed memory stays for reuse (speed) or goes back to the system (memory modes), kernel
caches stay bounded."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest
import torch

from rqa.memory import bound_kernel_caches, keep_freed_memory, return_large_blocks_to_the_system

needs_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None, reason="glibc"
)
RSS = "def rss(): return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"


def printed_on_and_off(script: str) -> dict[str, int]:
    """The number (kB, or page faults) ``script`` prints, run in a fresh process with the setting ``on`` and
    ``off`` (``sys.argv[1]``): a process's memory is only comparable between separate processes."""
    run = [sys.executable, "-c", script]
    return {mode: int(subprocess.check_output([*run, mode], text=True)) for mode in ("on", "off")}


@needs_glibc
def test_large_freed_blocks_leave_the_process() -> None:
    script = (
        "import sys, numpy as np\n"
        "from rqa.memory import return_large_blocks_to_the_system\n"
        "if sys.argv[1] == 'on': assert return_large_blocks_to_the_system()\n"
        f"{RSS}"
        "big = np.ones(4_000_000)\n"
        "del big  # freeing 32 MB raises glibc's own threshold to 32 MB\n"
        "blocks = [np.ones(2_000_000) for _ in range(40)]  # 16 MB each\n"
        "kept = blocks[::8]\n"
        "del blocks  # 35 freed blocks lie between kept ones: the heap cannot shrink past them\n"
        "print(rss())\n"
    )
    rss = printed_on_and_off(script)
    assert rss["on"] < rss["off"] - 200_000, rss  # kB: the 640 MB of freed blocks stayed resident without it


@needs_glibc
def test_kept_freed_memory_is_reused_without_page_faults() -> None:
    script = (
        "import resource, sys, torch\n"
        "from rqa.memory import keep_freed_memory\n"
        "if sys.argv[1] == 'on': assert keep_freed_memory()\n"
        "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "step = [torch.ones(10_000_000) for _ in range(8)]  # a step's largest tensors: 40 MB each\n"
        "del step\n"
        "before = faults()\n"
        # the next step's, about as large (batch lengths vary; an aligned request of exactly a freed block's size
        # needs a little more than the block, which the heap of a process with more allocations around it has)
        "step = [torch.ones(9_990_000) for _ in range(8)]\n"
        "print(faults() - before)\n"
    )
    faults = printed_on_and_off(script)
    # the freed 320 MB served the second step; at most one block (9,766 pages) lands past a small allocation that
    # took a piece of the freed space in between
    assert faults["on"] < 12_000, faults
    assert faults["off"] > 70_000, faults  # without it, blocks above 32 MB are always mapped afresh: all eight
    # blocks' 4 kB pages faulted in again


def test_elsewhere_it_reports_that_nothing_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert return_large_blocks_to_the_system() is False
    assert keep_freed_memory() is False


@needs_glibc
def test_trimming_gives_back_the_heaps_freed_fragments() -> None:
    script = (
        "import sys, numpy as np\n"
        "from rqa.memory import give_freed_pages_back\n"
        f"{RSS}"
        "big = np.ones(4_000_000)\n"
        "del big  # raises glibc's mmap threshold to 32 MB: what follows lives in the heap\n"
        "blocks = [np.ones(60_000) for _ in range(1000)]  # 480 kB each, the size of a micro-batch's activations\n"
        "kept = blocks[::8]\n"
        "del blocks  # 875 freed blocks between kept ones: the heap cannot shrink past them\n"
        "if sys.argv[1] == 'on': assert give_freed_pages_back()\n"
        "print(rss())\n"
    )
    rss = printed_on_and_off(script)
    assert rss["on"] < rss["off"] - 200_000, rss  # kB: the 420 MB of freed fragments stayed resident without it


def test_kernel_caches_are_bounded_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    assert bound_kernel_caches(64) == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "7"}


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    reason="this CPU has no AVX-512: PyTorch computes bf16 linear layers without oneDNN, so no kernels pile up",
)
def test_bounded_kernel_caches_keep_bf16_training_memory_flat_over_new_shapes() -> None:
    """Every new sequence length compiles new oneDNN kernels for a bf16 linear's forward and backward: unbounded,
    the caches keep them all."""
    script = (
        "import sys\n"
        "from rqa.memory import bound_kernel_caches\n"
        "if sys.argv[1] == 'on': bound_kernel_caches(16)\n"
        "import torch\n"
        f"{RSS}"
        "layer = torch.nn.Linear(576, 1536, dtype=torch.bfloat16)\n"
        "def step(n): layer(torch.randn(1, n, 576, dtype=torch.bfloat16, requires_grad=True)).sum().backward()\n"
        "for n in range(64, 96): step(n)\n"
        "start = rss()\n"
        "for n in range(96, 400): step(n)\n"
        "print(rss() - start)\n"
    )
    growth = printed_on_and_off(script)
    assert growth["on"] < growth["off"] / 2, growth  # kB
