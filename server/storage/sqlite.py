"""The embedded store: SQLite in WAL mode behind one writer gate.

All writes go through `transaction()`: a lock plus `BEGIN IMMEDIATE` on the one
writer connection, so there is exactly one serializer of the change log.

`records.state` is a checkpoint, not necessarily the newest state: the change
log is the truth, and `states()` merges a record's changes logged after its
checkpoint on top (`server.storage.state_cache` says why and when checkpoints
are written).

Whatever names or describes people is sealed under its record's data key
(`server.storage.vault`): record states, the exact bytes of every change
(logged or quarantined) and open conflicts' candidates. Ids, sequences,
stamps, statuses, reason codes and answers without their conflicts stay
readable, because routing, deduplication and queries need them
(PROTOCOL.md, section 15).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import msgspec
import sqlite_utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.changes import ChangeResult, Conflict
from schemas.state import RecordState
from server.keys import OfficeKeys
from server.settings import CACHED_STATES, PACKED_STATES, Settings
from server.storage.migrations import migrate
from server.storage.state_cache import Cached, Checkpoint, Packed, StateCache, checkpoint
from server.storage.vault import Vault
from sync import merge
from sync.atrest import create_private, open_sealed, seal
from sync.changes import decode_change
from sync.errors import Erased
from sync.merge import is_deleted
from sync.store import (
    Answered,
    BatchWrite,
    ConflictUpdate,
    LoggedChange,
    QuarantineRow,
    RecordKey,
)

_encode = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(RecordState).decode
_decode_result = msgspec.msgpack.Decoder(ChangeResult).decode
_decode_conflict = msgspec.msgpack.Decoder(Conflict).decode
log = logging.getLogger("lianxin.store")

# Keep IN (...) lists well under SQLite's bound-parameter limit.
_CHUNK = 500
# A checkpoint is written after this many batches changed a record without one, which
# bounds what a read merges again after a crash.
MAX_PENDING = 16


T = TypeVar("T")


def _chunks(items: list[T], size: int = _CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def bind(table: str, key: RecordKey, row: str = "") -> bytes:
    """What a sealed value belongs to: its table, record and row (a change id, a field)."""
    return f"{table}\x00{key[0]}\x00{key[1]}\x00{row}".encode()


class SqliteStore:
    """A `sync.store.ChangeStore` on one SQLite file.

    One writer connection behind `transaction()`; readers get their own
    connection per thread from `snapshot()` and, in WAL mode, never wait for
    the writer.
    """

    def __init__(
        self,
        path: str | Path,
        vault: Vault,
        cached_states: int = CACHED_STATES,
        packed_states: int = PACKED_STATES,
    ) -> None:
        self.path = Path(path)
        self.vault = vault
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self.migrations_applied = migrate(self.db)
        self._lock = threading.RLock()
        self._depth = 0
        self._reader = threading.local()
        # Each thread's read connection, with its thread: worker threads come and go.
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()
        self._cache = StateCache(cached_states, packed_states)
        self._writer: int | None = None  # the thread inside `transaction()`
        self._data_version = self._read_data_version()

    def close(self) -> None:
        # On a full or failing disk this may not write: the change log holds every newer state.
        with contextlib.suppress(sqlite3.Error):
            self.flush()
        for _, reader in self._readers:
            reader.close()
        self.db.conn.close()
        self.vault.close()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A consistent view of what is committed, for reading.

        Off the writer's thread this is the thread's own read connection inside one
        read transaction, so a reader never sees a batch that may still roll back,
        nor waits for it; nested use joins the outer view. Inside `transaction()`, it
        is the writer's connection, which sees what the transaction wrote so far.
        """
        if self._writer == threading.get_ident():
            yield self.db.conn
            return
        conn: sqlite3.Connection | None = getattr(self._reader, "conn", None)
        if conn is None:
            # Closed by `close()` from whichever thread owns the store.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            self._reader.conn = conn
            with self._readers_lock:  # not the writer's lock: readers never wait for it
                # Those of threads that ended are closed here, or idle worker pools would
                # leave a connection (two descriptors) behind for every thread they retired.
                for thread, ended in self._readers:
                    if not thread.is_alive():
                        ended.close()
                self._readers = [(t, c) for t, c in self._readers if t.is_alive()]
                self._readers.append((threading.current_thread(), conn))
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The writer gate. Nested use joins the outer transaction (one commit, at the end)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            self._writer = threading.get_ident()
            try:
                self._fresh()
                yield
                self.db.execute("COMMIT")
                self._cache.settle()
            except BaseException:
                # States cached in this transaction may never have been committed.
                self._cache.clear()
                if self.db.conn.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
                self._writer = None

    def _read_data_version(self) -> int:
        version: int = self.db.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _fresh(self) -> None:
        """Drop the cached states once another connection has committed: they may be old."""
        version = self._read_data_version()
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version

    def last_stamp(self, own: Sequence[str]) -> int:
        """The highest stamp in the change log as it ranks (a phone's clamped one as
        clamped), or of the office's own devices (`own`, GLOB patterns) as they were issued:
        the office's clock must never issue one of those again. (Before the engine stopped
        clamping them, the office's changes made just after a fast phone's were clamped.)"""
        ours = " OR ".join("device_id GLOB ?" for _ in own) or "0"
        stamp: int = self.db.execute(
            "SELECT max(coalesce(max(coalesce(order_stamp, hlc)), 0),"
            f" coalesce(max(hlc) FILTER (WHERE {ours}), 0)) FROM changes",
            list(own),
        ).fetchone()[0]
        return stamp

    def last_seq(self) -> int:
        seq: int = self.db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
        return seq

    def results(self, change_ids: Iterable[str]) -> dict[str, Answered]:
        found: dict[str, Answered] = {}
        for chunk in _chunks(list(change_ids)):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT change_id, device_id, result FROM changes WHERE change_id IN ({marks})"
                " UNION ALL SELECT change_id, device_id, result FROM quarantine"
                f" WHERE change_id IN ({marks})",
                chunk + chunk,
            )
            found.update(
                (change_id, Answered(device_id, _decode_result(blob)))
                for change_id, device_id, blob in rows
            )
        return found

    def states(self, keys: Iterable[RecordKey]) -> dict[RecordKey, RecordState]:
        """The newest merge state of each existing record among `keys` (erased ones left out).

        Inside `transaction()`, as that transaction sees them; from any other
        thread, as committed.
        """
        writing = self._writer == threading.get_ident()
        if not writing:  # the writer's transaction checked when it began
            self._fresh()
        wanted = set(keys)
        hits = self._cache.get(wanted, committed=not writing)
        erased = self.vault.erased(hits) if hits else set()
        hits = {key: c for key, c in hits.items() if key not in erased}
        found = {key: c.state for key, c in hits.items()}
        missing = [key for key in wanted if key not in hits]
        with self.snapshot() as conn:
            loaded = self._load(conn, missing)
        # Only the writer caches what it read: its transaction can write what it pushes out.
        # What it found in the cache goes in first, so that loading the rest cannot push out
        # (and write the checkpoint of) a state the batch is about to write itself.
        if writing:
            evicted = []
            for key, cached in [*hits.items(), *loaded.items()]:
                evicted += self._cache.put(key, cached)
            self._write_checkpoints(evicted)
        found.update((key, cached.state) for key, cached in loaded.items())
        return found

    def encoded_states(self, keys: Iterable[RecordKey]) -> dict[RecordKey, bytes]:
        """The newest state of each existing record among `keys` (erased ones left out),
        as MessagePack bytes, as this thread's snapshot sees them and no newer (a pull's
        cursor binds the log its device holds): for a first pull, which reads every record
        once. A checkpoint that no logged change follows goes as stored, neither decoded
        nor encoded again; the rest come from the writer's cache, or merged from the log."""
        self._fresh()
        found: dict[RecordKey, bytes] = {}
        wanted = list(keys)
        with self.snapshot() as conn:
            (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
            for chunk in _chunks(wanted):
                marks = ",".join("(?, ?)" for _ in chunk)
                rows = conn.execute(
                    "SELECT r.record_type, r.record_id, r.state FROM (VALUES"
                    f" {marks}) AS k JOIN records AS r"
                    " ON r.record_type = k.column1 AND r.record_id = k.column2"
                    " WHERE NOT EXISTS (SELECT 1 FROM changes c WHERE c.record_type = r.record_type"
                    " AND c.record_id = r.record_id AND c.seq > r.seq)",
                    [part for key in chunk for part in key],
                ).fetchall()
                data_keys = self.vault.data_keys([(t, i) for t, i, _ in rows])
                for record_type, record_id, sealed in rows:
                    key = (record_type, record_id)
                    if (data_key := data_keys.get(key)) is not None:  # None: erased
                        found[key] = open_sealed(data_key, sealed, bind("records", key))
            rest = [key for key in wanted if key not in found]
            # A cached state no change after `last` has moved is the one this view sees;
            # one the cache holds encoded goes as it is.
            cached = self._cache.peek(rest, committed=True)
            cached = {key: c for key, c in cached.items() if c.seq <= last}
            erased = self.vault.erased(cached)
            found.update(
                (key, c.encoded if isinstance(c, Packed) else _encode(c.state))
                for key, c in cached.items()
                if key not in erased
            )
            rest = [key for key in rest if key not in cached]
            found.update((key, _encode(c.state)) for key, c in self._load(conn, rest).items())
        return found

    def rebuild(self, keys: Iterable[RecordKey]) -> tuple[int, list[RecordKey]]:
        """Merge these records again from their whole logged history, ignoring their
        checkpoints, and write the new checkpoints (inside `transaction()`). For a
        changed merge rule: the log is the truth.

        Returns how many were rebuilt, and the records kept as they were because a
        logged change of theirs no longer passes today's checks (a value an older
        version accepted): their checkpoint already holds it, and a start must not
        fail on them.
        """
        assert self._writer == threading.get_ident(), "rebuild() runs inside transaction()"
        keys = list(keys)
        self._cache.drop(keys)
        kept: list[RecordKey] = []
        try:
            loaded = self._load(self.db.conn, keys, from_log=True)
        except Unreplayable:
            loaded = {}
            for key in keys:
                try:
                    loaded.update(self._load(self.db.conn, [key], from_log=True))
                except Unreplayable:
                    kept.append(key)
        self._write_checkpoints(checkpoint(key, cached) for key, cached in loaded.items())
        # The open conflicts follow the new states; a rule change settles or opens some
        # with no change of its own, so the record's last change stands for it.
        was_open = self._open_conflicts_of(list(loaded))
        now_open = {
            (key, c.field): c
            for key, cached in loaded.items()
            for c in merge.conflicts(cached.state)
        }
        updates = [
            ConflictUpdate(key, field, now_open.get((key, field)), loaded[key].seq)
            for key, field in sorted(was_open.keys() | now_open.keys())
            if was_open.get((key, field)) != now_open.get((key, field))
        ]
        self.write(BatchWrite([], {}, [], updates))
        return len(loaded), kept

    def replayed(self, keys: Iterable[RecordKey]) -> dict[RecordKey, RecordState]:
        """These records as their whole logged history merges from nothing, as committed:
        what the stored state and conflicts must agree with."""
        with self.snapshot() as conn:
            return {k: c.state for k, c in self._load(conn, list(keys), from_log=True).items()}

    def _open_conflicts_of(self, keys: list[RecordKey]) -> dict[tuple[RecordKey, str], Conflict]:
        found: dict[tuple[RecordKey, str], Conflict] = {}
        for chunk in _chunks(keys):
            rows = self.db.execute(
                "SELECT c.record_type, c.record_id, c.field, c.conflict"
                f" FROM (VALUES {','.join('(?, ?)' for _ in chunk)}) AS k JOIN conflicts AS c"
                " ON c.record_type = k.column1 AND c.record_id = k.column2"
                " WHERE c.settled_seq IS NULL",
                [part for key in chunk for part in key],
            ).fetchall()
            found.update({((c.record_type, c.record_id), c.field): c for c in self._opened(rows)})
        return found

    def _opened(self, rows: list[tuple[str, str, str, bytes]]) -> list[Conflict]:
        """Conflict rows (record_type, record_id, field, sealed conflict) opened; those of
        erased records left out."""
        keys = self.vault.data_keys((t, i) for t, i, *_ in rows)
        return [
            _decode_conflict(open_sealed(data_key, sealed, bind("conflicts", (t, i), field)))
            for t, i, field, sealed in rows
            if (data_key := keys[(t, i)]) is not None
        ]

    def _load(
        self, conn: sqlite3.Connection, keys: list[RecordKey], from_log: bool = False
    ) -> dict[RecordKey, Cached]:
        """Each record's checkpoint with its changes logged after it merged on top, as
        `conn` sees them; `from_log`, every logged change of it merged from nothing."""
        loaded = {}
        for chunk in _chunks(keys):
            # Joins on (VALUES ...), not `(record_type, record_id) IN (VALUES ...)`: SQLite
            # plans that IN as a scan of the whole table, which made every batch O(records).
            marks = ",".join("(?, ?)" for _ in chunk)
            rows = (
                []
                if from_log
                else conn.execute(
                    f"SELECT r.record_type, r.record_id, r.seq, r.deleted, r.state"
                    f" FROM (VALUES {marks}) AS k"
                    " JOIN records AS r ON r.record_type = k.column1 AND r.record_id = k.column2",
                    [part for key in chunk for part in key],
                ).fetchall()
            )
            stored = {(t, i): (seq, bool(deleted), state) for t, i, seq, deleted, state in rows}
            after = [(*key, stored[key][0] if key in stored else 0) for key in chunk]
            logged = conn.execute(
                "SELECT c.record_type, c.record_id, c.seq, c.change_id, c.raw, c.order_stamp"
                f" FROM (VALUES {','.join('(?, ?, ?)' for _ in after)}) AS k JOIN changes AS c"
                " ON c.record_type = k.column1 AND c.record_id = k.column2 AND c.seq > k.column3"
                " WHERE c.status != 'erased' ORDER BY c.seq",
                [part for row in after for part in row],
            ).fetchall()
            data_keys = self.vault.data_keys(chunk)
            newest: dict[RecordKey, Cached] = {}
            for key, (seq, deleted, sealed) in stored.items():
                data_key = data_keys.get(key)
                if data_key is not None:
                    state = _decode_state(open_sealed(data_key, sealed, bind("records", key)))
                    newest[key] = Cached(state, seq, deleted, 0)
            for record_type, record_id, seq, change_id, sealed, order in logged:
                key = (record_type, record_id)
                data_key = data_keys.get(key)
                if data_key is None:
                    continue
                raw = open_sealed(data_key, sealed, bind("changes", key, change_id))
                change = decode_change(raw)
                before = newest.get(key)
                outcome = merge.apply_change(
                    before.state if before else None, change, change.hlc if order is None else order
                )
                if outcome.state is None:
                    problem = f"logged change {change_id} does not apply again: {outcome}"
                    if from_log:
                        raise Unreplayable(problem)
                    # Accepted by an older version, refused by today's checks: left out, as a
                    # device merging the log leaves it out, rather than failing every read
                    # and every push of the record (the change stays in the log).
                    log.warning(
                        "change left out of its record's state",
                        extra={
                            "fields": {
                                "change_id": change_id,
                                "record": f"{record_type}/{record_id}",
                                "reason": outcome.rejected.reason if outcome.rejected else "",
                            }
                        },
                    )
                    continue
                newest[key] = (
                    # No row at all: due for one at the next write.
                    Cached(outcome.state, seq, False, MAX_PENDING)
                    if before is None
                    else before._replace(state=outcome.state, seq=seq, pending=before.pending + 1)
                )
            loaded.update(newest)
        return loaded

    def _write_checkpoints(
        self,
        entries: Iterable[Checkpoint],
        known: Mapping[RecordKey, AESGCM | None] | None = None,
    ) -> None:
        """Write these checkpoints (inside `transaction()`); `known` are data keys the
        caller already holds."""
        entries = list(entries)
        if not entries:
            return
        data_keys = dict(known or {})
        missing = [c.key for c in entries if c.key not in data_keys]
        if missing:
            data_keys.update(self.vault.data_keys(missing, create=True))
        self.db.conn.executemany(
            "INSERT INTO records (record_type, record_id, seq, deleted, state)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (record_type, record_id) DO UPDATE SET"
            " seq = excluded.seq, deleted = excluded.deleted, state = excluded.state",
            [
                (*c.key, c.seq, c.deleted, seal(data_key, c.encoded, bind("records", c.key)))
                for c in entries
                if (data_key := data_keys[c.key]) is not None
            ],
        )

    def flush(self) -> None:
        """Write the checkpoint of every record whose newest state is only in the cache."""
        if not self._cache.has_dirty():
            return  # no write lock taken: a reading command closes without waiting on a writer
        with self.transaction():
            dirty = self._cache.dirty()
            self._write_checkpoints(dirty)
            self._cache.stored(dirty)

    def forget_cached(self, keys: Iterable[RecordKey]) -> None:
        """Drop these records' newest states from memory (after erasure)."""
        self._cache.drop(keys)

    def erased(self, keys: Iterable[RecordKey]) -> set[RecordKey]:
        """Which of `keys` were erased (their data key destroyed)."""
        return self.vault.erased(keys)

    def seal_value(self, table: str, key: RecordKey, row: str, plain: bytes) -> bytes:
        """`plain` sealed under `key`'s data key (made if new), bound to table and row."""
        data_key = self.vault.data_keys([key], create=True)[key]
        if data_key is None:
            raise Erased(f"{key[0]}/{key[1]} was erased")
        return seal(data_key, plain, bind(table, key, row))

    def open_value(self, table: str, key: RecordKey, row: str, sealed: bytes) -> bytes | None:
        """What `seal_value` sealed; None once `key` was erased."""
        data_key = self.vault.data_keys([key])[key]
        return None if data_key is None else open_sealed(data_key, sealed, bind(table, key, row))

    def open_changes(self, rows: list[tuple[str, str, str, bytes]]) -> list[bytes | None]:
        """The exact bytes of logged changes `(type, id, change id, sealed)`; None if erased."""
        keys = self.vault.data_keys((t, i) for t, i, _, _ in rows)
        return [
            None
            if (data_key := keys[(t, i)]) is None
            else open_sealed(data_key, sealed, bind("changes", (t, i), change_id))
            for t, i, change_id, sealed in rows
        ]

    def write(self, batch: BatchWrite) -> None:
        execute_many = self.db.conn.executemany
        keys = self.vault.data_keys(
            {
                *((c.record_type, c.record_id) for _, c, *_ in batch.changes),
                *((c.record_type, c.record_id) for c, *_ in batch.quarantine),
                *(key for key, *_ in batch.conflicts),
            },
            create=True,
        )

        def sealed(table: str, key: RecordKey, row: str, plain: bytes) -> bytes:
            data_key = keys[key]
            # A change to an erased record is refused and kept without its content.
            return b"" if data_key is None else seal(data_key, plain, bind(table, key, row))

        execute_many(
            "INSERT INTO changes (seq, change_id, record_type, record_id, device_id, hlc,"
            " status, result, raw, order_stamp, batch_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    seq,
                    c.change_id,
                    c.record_type,
                    c.record_id,
                    c.device_id,
                    c.hlc,
                    result.status,
                    # Conflict candidates are people's words: they live sealed in `conflicts`.
                    _encode(msgspec.structs.replace(result, conflicts=[])),
                    sealed("changes", (c.record_type, c.record_id), c.change_id, raw),
                    order,
                    batch.batch_id,
                )
                for seq, c, raw, result, order in batch.changes
            ],
        )
        self._write_states(batch.records, keys)
        execute_many(
            "INSERT INTO quarantine (change_id, record_type, record_id, device_id, reason,"
            " detail, result, raw, batch_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    c.change_id,
                    c.record_type,
                    c.record_id,
                    c.device_id,
                    result.reason,
                    result.detail,
                    _encode(result),
                    sealed("quarantine", (c.record_type, c.record_id), c.change_id, raw),
                    batch.batch_id,
                )
                for c, raw, result in batch.quarantine
            ],
        )
        for key, field, conflict, seq in batch.conflicts:
            record_type, record_id = key
            if conflict is None:
                self.db.execute(
                    "UPDATE conflicts SET settled_seq = ? WHERE record_type = ?"
                    " AND record_id = ? AND field = ? AND settled_seq IS NULL",
                    [seq, record_type, record_id, field],
                )
            else:
                self.db.execute(
                    "INSERT INTO conflicts (record_type, record_id, field, kind, conflict,"
                    " opened_seq, updated_seq) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (record_type, record_id, field) WHERE settled_seq IS NULL"
                    " DO UPDATE SET conflict = excluded.conflict, kind = excluded.kind,"
                    " updated_seq = excluded.updated_seq",
                    [
                        record_type,
                        record_id,
                        field,
                        conflict.kind,
                        sealed("conflicts", key, field, _encode(conflict)),
                        seq,
                        seq,
                    ],
                )

    def _write_states(
        self,
        records: dict[RecordKey, tuple[RecordState, int]],
        data_keys: Mapping[RecordKey, AESGCM | None],
    ) -> None:
        """Cache a batch's new states; write checkpoints only where they are due.

        A record gets its checkpoint written when it is new (its row must exist for
        the access and index queries), when it was deleted or restored (`records.deleted`
        is read by lists), after `MAX_PENDING` batches without one, and when the cache
        pushes its newest state out.
        """
        cached = self._cache.peek(records)
        due = []
        evicted = []
        for key, (state, seq) in records.items():
            deleted = is_deleted(state)
            old = cached.get(key)
            if old is None or old.stored_deleted != deleted or old.pending + 1 >= MAX_PENDING:
                entry = Cached(state, seq, deleted, 0)
                due.append(checkpoint(key, entry))
            else:
                entry = Cached(state, seq, old.stored_deleted, old.pending + 1)
            evicted += self._cache.put(key, entry)
        # A record pushed out before its turn in this loop left with its older state.
        newest: dict[RecordKey, Checkpoint] = {}
        for written in evicted + due:
            if written.key not in newest or newest[written.key].seq < written.seq:
                newest[written.key] = written
        self._write_checkpoints(newest.values(), data_keys)

    def changes_since(self, seq: int, limit: int) -> Iterator[LoggedChange]:
        """Logged changes after `seq` but those of erased records; results without conflicts."""
        rows = self.db.execute(
            "SELECT seq, record_type, record_id, change_id, raw, result, order_stamp FROM changes"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            [seq, limit],
        ).fetchall()
        raws = self.open_changes([row[1:5] for row in rows])
        for (row_seq, *_, result, order), raw in zip(rows, raws, strict=True):
            if raw is not None:
                yield LoggedChange(row_seq, decode_change(raw), raw, _decode_result(result), order)

    def record(self, record_type: str, record_id: str) -> RecordState | None:
        """The merge state of one record, or None."""
        return self.states([(record_type, record_id)]).get((record_type, record_id))

    def all_states(self) -> Iterator[RecordState]:
        """Every record's newest merge state, in key order."""
        rows = self.db.execute("SELECT record_type, record_id FROM records ORDER BY 1, 2")
        for chunk in _chunks(rows.fetchall()):
            states = self.states(chunk)
            yield from (states[key] for key in chunk if key in states)

    def open_conflicts(self) -> list[Conflict]:
        rows = self.db.execute(
            "SELECT record_type, record_id, field, conflict FROM conflicts"
            " WHERE settled_seq IS NULL ORDER BY id"
        ).fetchall()
        return self._opened(rows)

    def quarantined(self) -> list[QuarantineRow]:
        rows = self.db.execute(
            "SELECT change_id, record_type, record_id, reason, detail, raw FROM quarantine"
            " ORDER BY id"
        ).fetchall()
        keys = self.vault.data_keys((t, i) for _, t, i, *_ in rows)
        return [
            QuarantineRow(
                c,
                reason,
                detail,
                decode_change(open_sealed(data_key, sealed, bind("quarantine", (t, i), c))),
            )
            for c, t, i, reason, detail, sealed in rows
            if (data_key := keys[(t, i)]) is not None and sealed
        ]

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables, for summaries."""
        return {
            name: self.db.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            for name in ("records", "changes", "quarantine", "conflicts")
        }


class Unreplayable(RuntimeError):
    """A logged change that merging refuses now (checks tightened since it was accepted)."""


def open_store(settings: Settings, keys: OfficeKeys) -> SqliteStore:
    """The office's store and its data keys, from where the settings say they live."""
    # Only the office's own account may read them: the store holds console password
    # hashes, the audit log and blind-index digests in clear, the key store the keys.
    # (A folder that exists is the operator's to set: it may be shared with a backup agent.)
    for path in (settings.store_path, settings.key_store_path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private(path)
    vault = Vault(settings.key_store_path, keys)
    return SqliteStore(settings.store_path, vault, settings.cached_states, settings.packed_states)


def _private(path: Path) -> None:
    """Make `path` (a SQLite file) readable by its owner alone, creating it if new
    (`atrest.create_private`). A file of another account is left as is."""
    create_private(path)
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        if file.exists() and file.stat().st_uid == os.getuid():
            file.chmod(0o600)
