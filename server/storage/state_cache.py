"""The newest merge states of recently used records, some newer than their checkpoint.

`records.state` is a checkpoint: a record's state as of `records.seq`. The
change log is the truth, and a record's current state is its checkpoint with
its later logged changes merged on top (`SqliteStore.states`). Reading and
rewriting every touched record's whole state on every batch took about a
third of the engine's time (docs/BENCHMARKS.md), and most records a batch
touches were touched a few batches before, so the writer keeps their newest
states here and writes a record's checkpoint only when it must (see
`SqliteStore._write_states`).

Losing this cache loses nothing: a crash, a rollback or another process's
commit only means the next read merges the logged changes again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from schemas.state import RecordState
from sync.store import RecordKey


class Cached(NamedTuple):
    """A record's newest state and what its checkpoint in `records` holds."""

    state: RecordState
    seq: int  # the last logged change merged into `state`
    stored_deleted: bool
    pending: int  # writes (batches, or changes merged on a read) not in the checkpoint

    @property
    def dirty(self) -> bool:
        return self.pending > 0


class StateCache:
    """At most `capacity` records by recent use; shared by the threads of one store."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[RecordKey, Cached] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, keys: Iterable[RecordKey]) -> dict[RecordKey, Cached]:
        """The cached entries among `keys`, each marked as just used."""
        found = {}
        with self._lock:
            for key in keys:
                cached = self._entries.get(key)
                if cached is not None:
                    self._entries.move_to_end(key)
                    found[key] = cached
        return found

    def put(self, key: RecordKey, cached: Cached) -> list[tuple[RecordKey, Cached]]:
        """Remember `cached` unless a newer state is here; return the dirty entries
        pushed out to make room, whose checkpoints the caller must write."""
        evicted = []
        with self._lock:
            old = self._entries.get(key)
            if old is None or old.seq <= cached.seq:
                self._entries[key] = cached
                self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                out = self._entries.popitem(last=False)
                if out[1].dirty:
                    evicted.append(out)
        return evicted

    def dirty(self) -> list[tuple[RecordKey, Cached]]:
        with self._lock:
            return [(key, cached) for key, cached in self._entries.items() if cached.dirty]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
