"""Returning freed large blocks to the system: the setting takes effect where glibc is the C library."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from rqa.memory import return_large_blocks_to_the_system


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None, reason="glibc")
def test_large_freed_blocks_leave_the_process() -> None:
    import subprocess

    script = (
        "import sys, numpy as np\n"
        "from rqa.memory import return_large_blocks_to_the_system\n"
        "if sys.argv[1] == 'on': assert return_large_blocks_to_the_system()\n"
        "def rss(): return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
        "big = np.ones(4_000_000)\n"
        "del big  # freeing 32 MB raises glibc's own threshold to 32 MB\n"
        "blocks = [np.ones(2_000_000) for _ in range(40)]  # 16 MB each\n"
        "kept = blocks[::8]\n"
        "del blocks  # 35 freed blocks lie between kept ones: the heap cannot shrink past them\n"
        "print(rss())\n"
    )
    rss = {
        mode: int(subprocess.check_output([sys.executable, "-c", script, mode], text=True)) for mode in ("on", "off")
    }
    assert rss["on"] < rss["off"] - 200_000, rss  # kB: the 640 MB of freed blocks stayed resident without it


def test_elsewhere_it_reports_that_nothing_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert return_large_blocks_to_the_system() is False
