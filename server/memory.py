"""Process tuning for `lianxin serve`: glibc's freed memory, and Python's cyclic collector.

Keep glibc from handing freed memory back to the kernel after every request.

Each pull page (about 1 MB sealed) is built in a worker thread; by default
glibc serves buffers that large with fresh mmap pages and trims freed heap
at once, so every page paid ~400 page faults (measured: sealing a 1,000-item
page took 1.3 ms, of which HPKE 0.17 ms; docs/BENCHMARKS.md). Raising the
mmap and trim thresholds lets the process reuse those pages; its resident
size stays near its peak instead of shrinking between requests.

Keep every thread's allocations in one glibc arena. By default each worker
thread that allocates gets an arena of its own, and each arena keeps its
own freed memory: the encoded states of the writer's cache and the pages a
request builds land in whichever thread ran it, so freed memory sat idle in
one arena while another grew (about 7 MB more at the memory benchmark's
peak; docs/BENCHMARKS.md). Python's threads allocate holding the GIL, and
what runs without it (SQLite, OpenSSL) allocates little, so one arena costs
no waiting that the HTTP benchmark could see.

A batch merge allocates hundreds of thousands of small, acyclic objects; with
the collector's default threshold (700 allocations) it walks them, and the
server's long-lived heap, over and over. `collect_less` freezes what start-up
made (never garbage) and collects the youngest generation every 50,000
allocations instead: merging a batch of 500 took 38% less time in a
micro-benchmark (docs/BENCHMARKS.md has the push before and after).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
THRESHOLD = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Raise glibc's thresholds and keep one arena; False where there is no glibc.

    Call it before the process starts a thread: a thread that allocates before it
    has an arena of its own, which later threads then share.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return all(
        [  # every option is tried, even after one fails
            mallopt(option, value)
            for option, value in (
                (M_MMAP_THRESHOLD, THRESHOLD),
                (M_TRIM_THRESHOLD, THRESHOLD),
                (M_ARENA_MAX, 1),
            )
        ]
    )


def collect_less() -> None:
    """Freeze the start-up heap and raise the youngest generation's threshold (see above)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
