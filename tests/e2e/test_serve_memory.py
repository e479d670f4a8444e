"""`lianxin serve` keeps every thread's allocations in glibc's one main arena
(server/memory.py), read off the real process's memory map."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HEAP = 64 * 1024 * 1024  # glibc reserves each further arena as a heap this size, aligned


def further_arenas(pid: int) -> list[str]:
    """The heaps of glibc arenas other than the main one: an anonymous mapping that
    starts on a 64 MiB boundary and, with the reserved (---p) rest after it, spans 64 MiB."""
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        low, high = (int(x, 16) for x in parts[0].split("-"))
        maps.append((low, high, parts[1], len(parts) > 5))
    heaps = []
    for n, (low, high, mode, named) in enumerate(maps):
        if named or low % HEAP or "rw" not in mode:
            continue
        end = high
        if n + 1 < len(maps) and maps[n + 1][0] == high and maps[n + 1][2] == "---p":
            end = maps[n + 1][1]
        if end - low == HEAP:
            heaps.append(f"{low:x}-{end:x}")
    return heaps


def test_the_servers_worker_threads_allocate_in_the_main_arena(server):
    # /readyz runs in a worker thread; several at once so that several threads allocate.
    def ready(_: int) -> int:
        return httpx.get(f"{server.url}/readyz", timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(ready, range(64))) == {200}
    assert further_arenas(server.process.pid) == []
