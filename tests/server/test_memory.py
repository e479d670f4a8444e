"""`lianxin serve`'s process tuning, checked in a child process as glibc reports it."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A worker thread allocates a buffer below the mmap threshold and keeps it,
# then glibc prints one "Arena N:" block per arena in use to stderr.
CHILD = """
import ctypes, sys, threading
from server import memory
if sys.argv[1] == "tuned":
    assert memory.keep_freed_memory()
kept = []
worker = threading.Thread(target=lambda: kept.append(bytearray(4_000_000)))
worker.start()
worker.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas_in_use(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "malloc_stats"), reason="not glibc: nothing to tune"
)
def test_a_worker_threads_allocations_stay_in_the_one_arena() -> None:
    assert arenas_in_use("plain") == 2  # what glibc does untuned: the thread gets its own
    assert arenas_in_use("tuned") == 1
