"""Hybrid logical clock: wall-clock milliseconds plus a counter, packed in one int.

A stamp is `(wall_ms << 16) | counter`; with the node (device id) it orders
every event in the system. Stamps from one node strictly increase, also after
`receive`, so a device's later change always sorts after its earlier ones.

The wall clock is injected (`wall_ms`), so tests freeze and skew time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

COUNTER_BITS = 16
COUNTER_MASK = (1 << COUNTER_BITS) - 1
DEFAULT_MAX_DRIFT_MS = 24 * 60 * 60 * 1000


def pack(wall_ms: int, counter: int = 0) -> int:
    """The stamp for a wall time in milliseconds and a counter."""
    return (wall_ms << COUNTER_BITS) | counter


def wall_of(stamp: int) -> int:
    """The wall-clock milliseconds of a stamp."""
    return stamp >> COUNTER_BITS


def system_wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Received(NamedTuple):
    """The local stamp after taking in a remote one; `clamped` flags an absurd remote."""

    stamp: int
    clamped: bool


class Clock:
    """One node's hybrid logical clock.

    `max_drift_ms` bounds how far ahead of local wall time a remote stamp may
    pull this clock; a stamp further ahead is clamped to that bound and the
    caller is told, so one device with a broken clock cannot drag every
    clock into the future.
    """

    def __init__(
        self,
        wall_ms: Callable[[], int] = system_wall_ms,
        *,
        last: int = 0,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
    ) -> None:
        self._wall_ms = wall_ms
        self._last = last
        self.max_drift_ms = max_drift_ms

    @property
    def last(self) -> int:
        """The latest stamp issued or received (persist it to survive restarts)."""
        return self._last

    def now(self) -> int:
        """A stamp strictly greater than every stamp this clock issued or received."""
        self._last = max(pack(self._wall_ms()), self._last + 1)
        return self._last

    def limit(self) -> int:
        """The highest stamp a remote may carry before it counts as absurd."""
        return pack(self._wall_ms() + self.max_drift_ms, COUNTER_MASK)

    def receive(self, remote: int) -> Received:
        """Advance past `remote` (clamped to `limit()`) and return a fresh local stamp."""
        limit = self.limit()
        clamped = remote > limit
        self._last = max(pack(self._wall_ms()), self._last + 1, min(remote, limit) + 1)
        return Received(self._last, clamped)
