"""The device's local SQLite file: its keys, the server's records, its outbox, its cursor.

Tables (schema version 1):

    meta     key → value: private keys, identity from enrolment, pull cursor,
             the clock's last stamp, the learned server clock offset
    records  (record_type, record_id) → RecordState (msgpack): the *server
             layer*, exactly what pulls delivered and nothing the device made
             that the server has not sent back
    applied  the change ids merged into `records`, so a change pulled twice is
             applied once; keyed by record, so an eviction forgets them too
    outbox   every change this device made, in the order made, with its exact
             wire bytes, its state and, once answered, the server's answer
    batches  push batches assigned but not yet answered, with the exact request
             body, so a retry resends the same bytes under the same batch id

An outbox change moves `pending` → `sent` (assigned to a batch, answer not yet
known) → `applied` | `conflict` | `duplicate` | `rejected`. While its
`overlay` flag is set it is replayed on top of the server layer in local
reads; the flag drops when the server rejects it, when a pull brings it back
(it is then in the server layer), or when its record is evicted.

Every multi-step update runs inside `transaction()`, so a process killed at
any point leaves the file as it was before or after the step, never between.

The private keys are stored in clear in `meta`. Encrypting them at rest
(Android Keystore, iOS Keychain or a passphrase) is a later issue.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

from schemas.changes import Change, ChangeResult
from schemas.state import RecordState

RecordKey = tuple[str, str]
OutboxState = Literal["pending", "sent", "applied", "conflict", "rejected", "duplicate"]
MetaValue = str | int | bytes

_encode = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(RecordState).decode

# Each migration is a list of statements, run in one transaction with the version bump.
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_replica",
        [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
            "CREATE TABLE records (record_type TEXT NOT NULL, record_id TEXT NOT NULL,"
            " state BLOB NOT NULL, PRIMARY KEY (record_type, record_id))",
            "CREATE TABLE applied (change_id TEXT PRIMARY KEY, record_type TEXT NOT NULL,"
            " record_id TEXT NOT NULL)",
            "CREATE INDEX applied_record ON applied (record_type, record_id)",
            "CREATE TABLE outbox (position INTEGER PRIMARY KEY AUTOINCREMENT,"
            " change_id TEXT NOT NULL UNIQUE, record_type TEXT NOT NULL,"
            " record_id TEXT NOT NULL, raw BLOB NOT NULL,"
            " state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN"
            " ('pending', 'sent', 'applied', 'conflict', 'rejected', 'duplicate')),"
            " overlay INTEGER NOT NULL DEFAULT 1, batch_id TEXT,"
            " seq INTEGER, reason TEXT, detail TEXT)",
            "CREATE INDEX outbox_overlay ON outbox (record_type, record_id) WHERE overlay",
            "CREATE INDEX outbox_state ON outbox (state, position)",
            "CREATE TABLE batches (number INTEGER PRIMARY KEY AUTOINCREMENT,"
            " batch_id TEXT NOT NULL UNIQUE, body BLOB NOT NULL)",
        ],
    ),
]


class OutboxEntry(NamedTuple):
    """One change of the outbox and what the server answered (None until it did)."""

    change_id: str
    record_type: str
    record_id: str
    state: OutboxState
    seq: int | None
    reason: str | None
    detail: str | None
    batch_id: str | None


def accepted(result: ChangeResult) -> bool:
    """Whether the server holds the answered change (a duplicate repeats the first answer)."""
    return result.status in ("applied", "conflict") or (
        result.status == "duplicate" and result.reason is None
    )


class ReplicaStore:
    """One device's SQLite file. Not thread-safe: a device runs one client at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        # A phone loses power without warning: a commit must be on disk when it returns.
        self._db.execute("PRAGMA synchronous = FULL")
        self._depth = 0
        self._migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all; nested use joins the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def _migrate(self) -> None:
        with self.transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            for number, (_name, statements) in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")

    # -- meta ---------------------------------------------------------------------------

    def meta(self, key: str) -> MetaValue | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: MetaValue | None) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    # -- the server layer ---------------------------------------------------------------

    def state(self, key: RecordKey) -> RecordState | None:
        """The record as the server has sent it, or None if the device holds none."""
        row = self._db.execute(
            "SELECT state FROM records WHERE record_type = ? AND record_id = ?", key
        ).fetchone()
        return None if row is None else _decode_state(row[0])

    def put_state(self, state: RecordState) -> None:
        self._db.execute(
            "INSERT INTO records (record_type, record_id, state) VALUES (?, ?, ?)"
            " ON CONFLICT (record_type, record_id) DO UPDATE SET state = excluded.state",
            [state.record_type, state.record_id, _encode(state)],
        )

    def was_applied(self, change_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM applied WHERE change_id = ?", [change_id])
        return row.fetchone() is not None

    def mark_applied(self, change: Change) -> None:
        """Remember a pulled change; if it is this device's own, it stops overlaying."""
        self._db.execute(
            "INSERT OR IGNORE INTO applied (change_id, record_type, record_id) VALUES (?, ?, ?)",
            [change.change_id, change.record_type, change.record_id],
        )
        self._db.execute("UPDATE outbox SET overlay = 0 WHERE change_id = ?", [change.change_id])

    def evict(self, key: RecordKey) -> None:
        """Forget a record that left this device's view.

        Its applied change ids go too: if the record comes back into view, the
        server sends its whole history again, and every change must then apply.
        Own changes the server holds stop overlaying; unanswered ones stay
        queued (the server will answer them, most likely `not_permitted`).
        """
        self._db.execute("DELETE FROM records WHERE record_type = ? AND record_id = ?", key)
        self._db.execute("DELETE FROM applied WHERE record_type = ? AND record_id = ?", key)
        self._db.execute(
            "UPDATE outbox SET overlay = 0 WHERE record_type = ? AND record_id = ?"
            " AND state IN ('applied', 'conflict', 'duplicate')",
            key,
        )

    # -- the outbox ---------------------------------------------------------------------

    def append(self, change: Change, raw: bytes) -> None:
        """Queue a change as `pending`; `raw` are the exact bytes that will be pushed."""
        self._db.execute(
            "INSERT INTO outbox (change_id, record_type, record_id, raw) VALUES (?, ?, ?, ?)",
            [change.change_id, change.record_type, change.record_id, raw],
        )

    def overlay(self, key: RecordKey) -> list[bytes]:
        """The wire bytes of the own changes that local reads replay on `key`, in order."""
        rows = self._db.execute(
            "SELECT raw FROM outbox WHERE record_type = ? AND record_id = ? AND overlay"
            " ORDER BY position",
            key,
        )
        return [raw for (raw,) in rows]

    def unbatched(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` pending changes (id, bytes), oldest first."""
        rows = self._db.execute(
            "SELECT change_id, raw FROM outbox WHERE state = 'pending' ORDER BY position LIMIT ?",
            [limit],
        )
        return [(change_id, raw) for change_id, raw in rows]

    def add_batch(self, batch_id: str, change_ids: Sequence[str], body: bytes) -> None:
        """Assign changes to a batch and keep its request body; they become `sent`."""
        self._db.execute("INSERT INTO batches (batch_id, body) VALUES (?, ?)", [batch_id, body])
        self._db.executemany(
            "UPDATE outbox SET state = 'sent', batch_id = ? WHERE change_id = ?",
            [(batch_id, change_id) for change_id in change_ids],
        )

    def open_batches(self) -> list[tuple[str, bytes]]:
        """The batches still waiting for an answer (id, request body), oldest first."""
        rows = self._db.execute("SELECT batch_id, body FROM batches ORDER BY number")
        return [(batch_id, body) for batch_id, body in rows]

    def batch_change_ids(self, batch_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT change_id FROM outbox WHERE batch_id = ? ORDER BY position", [batch_id]
        )
        return [change_id for (change_id,) in rows]

    def record_answers(self, batch_id: str, results: Sequence[ChangeResult]) -> None:
        """Store the server's answer to every change of a batch and close the batch."""
        self._db.executemany(
            "UPDATE outbox SET state = ?, seq = ?, reason = ?, detail = ?,"
            " overlay = overlay AND ? WHERE change_id = ?",
            [(r.status, r.seq, r.reason, r.detail, accepted(r), r.change_id) for r in results],
        )
        self._db.execute("DELETE FROM batches WHERE batch_id = ?", [batch_id])

    def outbox(self) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT change_id, record_type, record_id, state, seq, reason, detail, batch_id"
            " FROM outbox ORDER BY position"
        )
        return [OutboxEntry(*row) for row in rows]
