"""The embedded store: SQLite in WAL mode behind one writer gate.

All writes go through `transaction()`: a lock plus `BEGIN IMMEDIATE` on the one
writer connection, so there is exactly one serializer of the change log.

Whatever names or describes people is sealed under its record's data key
(`server.storage.vault`): record states, the exact bytes of every change
(logged or quarantined) and open conflicts' candidates. Ids, sequences,
stamps, statuses, reason codes and answers without their conflicts stay
readable, because routing, deduplication and queries need them
(PROTOCOL.md, section 15).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import sqlite_utils

from schemas.changes import Change, ChangeResult, Conflict
from schemas.state import RecordState
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.migrations import migrate
from server.storage.vault import Vault
from sync.atrest import open_sealed, seal
from sync.errors import Erased
from sync.merge import is_deleted
from sync.store import BatchWrite, LoggedChange, QuarantineRow, RecordKey

_encode = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(RecordState).decode
_decode_result = msgspec.msgpack.Decoder(ChangeResult).decode
_decode_change = msgspec.msgpack.Decoder(Change).decode
_decode_conflict = msgspec.msgpack.Decoder(Conflict).decode

# Keep IN (...) lists well under SQLite's bound-parameter limit.
_CHUNK = 500


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
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

    def __init__(self, path: str | Path, vault: Vault) -> None:
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
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self.db.conn.close()
        self.vault.close()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection, inside one read transaction: a consistent view."""
        conn: sqlite3.Connection | None = getattr(self._reader, "conn", None)
        if conn is None:
            # Closed by `close()` from whichever thread owns the store.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            self._reader.conn = conn
            with self._readers_lock:  # not the writer's lock: readers never wait for it
                self._readers.append(conn)
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
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.conn.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def last_seq(self) -> int:
        return self.db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]

    def results(self, change_ids: Iterable[str]) -> dict[str, ChangeResult]:
        found = {}
        for chunk in _chunks(list(change_ids)):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT change_id, result FROM changes WHERE change_id IN ({marks})"
                f" UNION ALL SELECT change_id, result FROM quarantine WHERE change_id IN ({marks})",
                chunk + chunk,
            )
            found.update((change_id, _decode_result(blob)) for change_id, blob in rows)
        return found

    def states(self, keys: Iterable[RecordKey]) -> dict[RecordKey, RecordState]:
        found = {}
        for chunk in _chunks(list(keys)):
            marks = ",".join("(?, ?)" for _ in chunk)
            # A join, not `(record_type, record_id) IN (VALUES ...)`: SQLite plans that
            # IN as a scan of the whole table, which made every batch O(records).
            rows = self.db.execute(
                f"SELECT r.record_type, r.record_id, r.state FROM (VALUES {marks}) AS k"
                " JOIN records AS r ON r.record_type = k.column1 AND r.record_id = k.column2",
                [part for key in chunk for part in key],
            ).fetchall()
            found.update(self._open_states(rows))
        return found

    def _open_states(
        self, rows: list[tuple[str, str, bytes]]
    ) -> Iterator[tuple[RecordKey, RecordState]]:
        """Decoded states of `(type, id, sealed state)` rows; erased records are left out."""
        keys = self.vault.data_keys((t, i) for t, i, _ in rows)
        for record_type, record_id, sealed in rows:
            key = (record_type, record_id)
            data_key = keys.get(key)
            if data_key is not None:
                yield key, _decode_state(open_sealed(data_key, sealed, bind("records", key)))

    def erased(self, keys: Iterable[RecordKey]) -> set[RecordKey]:
        """Which of `keys` were erased (their data key destroyed)."""
        return {key for key, data_key in self.vault.data_keys(keys).items() if data_key is None}

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
                *batch.records,
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
        execute_many(
            "INSERT INTO records (record_type, record_id, seq, deleted, state)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (record_type, record_id) DO UPDATE SET"
            " seq = excluded.seq, deleted = excluded.deleted, state = excluded.state",
            [
                (
                    *key,
                    seq,
                    is_deleted(state),
                    sealed("records", key, "", _encode(state)),
                )
                for key, (state, seq) in batch.records.items()
            ],
        )
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
                yield LoggedChange(row_seq, _decode_change(raw), raw, _decode_result(result), order)

    def record(self, record_type: str, record_id: str) -> RecordState | None:
        """The merge state of one record, or None."""
        return self.states([(record_type, record_id)]).get((record_type, record_id))

    def all_states(self) -> Iterator[RecordState]:
        """Every record's merge state, in key order."""
        rows = self.db.execute(
            "SELECT record_type, record_id, state FROM records ORDER BY record_type, record_id"
        )
        for chunk in _chunks(rows.fetchall()):
            for _, state in self._open_states(chunk):
                yield state

    def open_conflicts(self) -> list[Conflict]:
        rows = self.db.execute(
            "SELECT record_type, record_id, field, conflict FROM conflicts"
            " WHERE settled_seq IS NULL ORDER BY id"
        ).fetchall()
        keys = self.vault.data_keys((t, i) for t, i, *_ in rows)
        return [
            _decode_conflict(open_sealed(data_key, sealed, bind("conflicts", (t, i), field)))
            for t, i, field, sealed in rows
            if (data_key := keys[(t, i)]) is not None
        ]

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
                _decode_change(open_sealed(data_key, sealed, bind("quarantine", (t, i), c))),
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


def open_store(settings: Settings, keys: OfficeKeys) -> SqliteStore:
    """The office's store and its data keys, from where the settings say they live."""
    settings.key_store_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SqliteStore(settings.store_path, Vault(settings.key_store_path, keys))
