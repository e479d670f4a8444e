"""The newest merge states of recently used records, some newer than their checkpoint.

`records.state` is a checkpoint: a record's state as of `records.seq`. The
change log is the truth, and a record's current state is its checkpoint with
its later logged changes merged on top (`SqliteStore.states`). Reading and
rewriting every touched record's whole state on every batch took about a
third of the engine's time (docs/BENCHMARKS.md), and most records a batch
touches were touched a few batches before, so the writer keeps their newest
states here and writes a record's checkpoint only when it must (see
`SqliteStore._write_states`).

Two tiers: the most recently used states decoded, ready to merge into (about
10 KB each), and behind them states pushed out of that tier kept encoded
(msgpack, about 2 KB each). A record found in the second tier costs a decode
instead of reading, opening and decoding its checkpoint and merging the
changes after it; and a state leaves the cache, with its checkpoint written
if it is newer, only when it falls out of the second tier as well (with no
second tier, when it falls out of the first).

Losing this cache loses nothing: a crash, a rollback or another process's
commit only means the next read merges the logged changes again.

The writer puts states here before its transaction commits, so the cache
knows which records it holds uncommitted states of: another thread's read
skips them (and reads what is committed) until `settle()` says the
transaction committed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from schemas.state import RecordState
from sync.merge import is_deleted
from sync.store import RecordKey

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(RecordState).decode


class Cached(NamedTuple):
    """A record's newest state and what its checkpoint in `records` holds."""

    state: RecordState
    seq: int  # the last logged change merged into `state`
    stored_deleted: bool
    pending: int  # writes (batches, or changes merged on a read) not in the checkpoint


class Packed(NamedTuple):
    """A `Cached` whose state is kept encoded (the second tier)."""

    encoded: bytes
    deleted: bool  # whether the encoded state is deleted
    seq: int
    stored_deleted: bool
    pending: int

    def unpacked(self) -> Cached:
        return Cached(_decode(self.encoded), self.seq, self.stored_deleted, self.pending)


class Checkpoint(NamedTuple):
    """A record's newest state, encoded, as its checkpoint row must hold it."""

    key: RecordKey
    seq: int
    deleted: bool
    encoded: bytes


def checkpoint(key: RecordKey, entry: Cached | Packed) -> Checkpoint:
    if isinstance(entry, Packed):
        return Checkpoint(key, entry.seq, entry.deleted, entry.encoded)
    return Checkpoint(key, entry.seq, is_deleted(entry.state), _encode(entry.state))


class StateCache:
    """At most `capacity` decoded states by recent use and `packed` encoded ones behind
    them; shared by the threads of one store, filled only by its writer."""

    def __init__(self, capacity: int, packed: int = 0) -> None:
        self.capacity = capacity
        self.packed_capacity = packed
        self._entries: OrderedDict[RecordKey, Cached] = OrderedDict()
        self._packed: OrderedDict[RecordKey, Packed] = OrderedDict()
        self._uncommitted: set[RecordKey] = set()  # put since the last `settle()`
        self._lock = threading.Lock()

    def get(self, keys: Iterable[RecordKey], committed: bool = False) -> dict[RecordKey, Cached]:
        """The cached entries among `keys`; decoded ones are marked as just used (the
        writer puts encoded ones back decoded). With `committed`, none that the
        writer's open transaction put here."""
        found = {}
        packed = {}
        with self._lock:
            for key in keys:
                if committed and key in self._uncommitted:
                    continue
                cached = self._entries.get(key)
                if cached is not None:
                    self._entries.move_to_end(key)
                    found[key] = cached
                elif (entry := self._packed.get(key)) is not None:
                    packed[key] = entry
        # Bytes do not change: decode without holding the lock.
        found.update((key, entry.unpacked()) for key, entry in packed.items())
        return found

    def peek(
        self, keys: Iterable[RecordKey], committed: bool = False
    ) -> dict[RecordKey, Cached | Packed]:
        """The entries among `keys` as held (encoded ones left so), marking none as used.
        With `committed`, none that the writer's open transaction put here."""
        with self._lock:
            return {
                key: entry
                for key in keys
                if not (committed and key in self._uncommitted)
                and (entry := self._entries.get(key) or self._packed.get(key)) is not None
            }

    def put(self, key: RecordKey, cached: Cached) -> list[Checkpoint]:
        """Remember `cached` unless a newer state is here; return the dirty entries
        pushed out of the cache to make room, whose checkpoints the caller must write."""
        evicted = []
        with self._lock:
            self._uncommitted.add(key)
            old = self._entries.get(key) or self._packed.get(key)
            if old is None or old.seq <= cached.seq:
                self._packed.pop(key, None)
                self._entries[key] = cached
                self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                out_key, out = self._entries.popitem(last=False)
                if self.packed_capacity:
                    out_encoded = checkpoint(out_key, out)
                    self._packed[out_key] = Packed(
                        out_encoded.encoded, out_encoded.deleted, *out[1:]
                    )
                elif out.pending:
                    evicted.append(checkpoint(out_key, out))
            while len(self._packed) > self.packed_capacity:
                out_key, packed = self._packed.popitem(last=False)
                if packed.pending:
                    evicted.append(checkpoint(out_key, packed))
        return evicted

    def has_dirty(self) -> bool:
        with self._lock:
            return any(e.pending for e in self._entries.values()) or any(
                e.pending for e in self._packed.values()
            )

    def dirty(self) -> list[Checkpoint]:
        """The checkpoint of every entry newer than the one stored."""
        with self._lock:
            dirty: list[tuple[RecordKey, Cached | Packed]] = [
                *((key, entry) for key, entry in self._packed.items() if entry.pending),
                *((key, entry) for key, entry in self._entries.items() if entry.pending),
            ]
        return [checkpoint(key, entry) for key, entry in dirty]

    def stored(self, written: Iterable[Checkpoint]) -> None:
        """Mark entries clean whose checkpoint was just written (unless newer by now)."""
        with self._lock:
            for key, seq, deleted, _ in written:
                if (cached := self._entries.get(key)) is not None and cached.seq == seq:
                    self._entries[key] = cached._replace(stored_deleted=deleted, pending=0)
                if (packed := self._packed.get(key)) is not None and packed.seq == seq:
                    self._packed[key] = packed._replace(stored_deleted=deleted, pending=0)

    def drop(self, keys: Iterable[RecordKey]) -> None:
        """Forget these records' states (erased: nothing of them may stay in memory)."""
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)
                self._packed.pop(key, None)

    def settle(self) -> None:
        """The writer's transaction committed: what it put here is what others may read."""
        with self._lock:
            self._uncommitted.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._packed.clear()
            self._uncommitted.clear()
