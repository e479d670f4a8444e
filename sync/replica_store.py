"""The device's local SQLite file: its keys, the server's records, its outbox, its cursor.

Tables:

    meta     key → value: the lock (below), private keys and identity from
             enrolment, pull cursor, the clock's last stamp, the learned
             server clock offset
    records  (record_type, record_id) → RecordState (msgpack): the *server
             layer*, exactly what pulls delivered and nothing the device made
             that the server has not sent back
    applied  the change ids merged into `records`, so a change pulled twice is
             applied once; keyed by record, so an eviction forgets them too
    outbox   every change this device made, in the order made, with its exact
             wire bytes, its state and, once answered, the server's answer
    batches  push batches assigned but not yet answered, with the exact request
             body, so a retry resends the same bytes under the same batch id
    erased   the ids of records the office erased (schema version 2)

    staged   the pages of a pull rebuilding the server layer, kept until its last
             page, then applied at once (schema version 3, which asks for that
             rebuild: `sync.client.REBUILD`)

An outbox change moves `pending` → `sent` (assigned to a batch, answer not yet
known) → `applied` | `conflict` | `duplicate` | `rejected`. While its
`overlay` flag is set it is replayed on top of the server layer in local
reads; the flag drops when the server rejects it, when a pull brings it back
(it is then in the server layer), or when its record is evicted (an erased
record's changes go altogether: `evict`).

Every multi-step update runs inside `transaction()`, so a process killed at
any point leaves the file as it was before or after the step, never between.

A lost phone gives away no personal data: every value that may hold some is
sealed (`sync.atrest`) under the *replica key*, a random key made with the file:

    sealed   records.state, outbox.raw, outbox.detail, batches.body, and the
             meta values written with `set_sealed_meta` (the client's private
             keys and identity)
    clear    ids, outbox states and reason codes, the cursor, clock stamps

Each sealed value is bound to its table and row (`records/case/k-1`,
`outbox/<change_id>`, `meta/signing_key`), so a value copied onto another row
does not open. Ids stay in clear, so they must not carry personal data. The
replica key is kept in meta under `lock`, wrapped under a key that scrypt
derives from the holder's passphrase; changing the passphrase re-wraps that one
key. `secure_delete` zeroes what deleted and rewritten rows leave behind.

A short PIN alone falls to an offline guess (a million six-digit PINs at 0.1 s
each is a day of one core): a real phone should wrap the replica key with its
hardware keystore, which limits PIN tries.
"""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.changes import Change, ChangeResult, Reason
from schemas.state import RecordState
from sync.atrest import KdfParams, create_private, derive_key, new_key, open_sealed, seal
from sync.errors import Unreadable

RecordKey = tuple[str, str]
OutboxState = Literal["pending", "sent", "applied", "conflict", "rejected", "duplicate"]
MetaValue = str | int | bytes

LOCK = "lock"  # the meta key of the wrapped replica key

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
    (
        # The records the office erased, by id: a change to one that still awaited its
        # answer when the eviction came goes once answered.
        "0002_erased",
        [
            "CREATE TABLE erased (record_type TEXT NOT NULL, record_id TEXT NOT NULL,"
            " PRIMARY KEY (record_type, record_id))",
        ],
    ),
    (
        # The merge keeps more in each state (a log entry's place in its change, edits
        # made beside a delete): the next pull that reaches the office builds the server
        # layer again from no cursor, merged from nothing, as the office merged its own
        # again (`sync.client.REBUILD`). Until then the device shows what it had.
        "0003_merge_states",
        [
            "CREATE TABLE staged (number INTEGER PRIMARY KEY, items BLOB NOT NULL)",
            "INSERT OR REPLACE INTO meta (key, value)"
            " SELECT 'rebuild_server_layer', 'due' WHERE EXISTS (SELECT 1 FROM records)",
        ],
    ),
    (
        # Changes sent again after the office refused the cursor (`forget_server_layer`):
        # one answered `duplicate` was not lost, and shows from the office's copy or not
        # at all (its record left this device's view meanwhile).
        "0004_resent",
        ["ALTER TABLE outbox ADD COLUMN resent INTEGER NOT NULL DEFAULT 0"],
    ),
]


class Lock(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The replica key, sealed under the key that `kdf` derives from the passphrase."""

    kdf: KdfParams
    wrapped_key: bytes


class OwnChange(NamedTuple):
    """One of this device's changes, as local reads may replay it."""

    change_id: str
    key: RecordKey
    raw: bytes
    shown: bool  # local reads replay it
    unanswered: bool


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
    """One device's SQLite file, sealed under a passphrase. Not thread-safe.

    A new file gets a new replica key, wrapped with scrypt at `kdf`'s cost
    (default `KdfParams.new()`); an existing file keeps its own cost and
    ignores `kdf`. Raises `Unreadable` for a wrong passphrase (the file is
    left as it was) and for a file written before encryption at rest.
    """

    def __init__(self, path: str | Path, passphrase: str, *, kdf: KdfParams | None = None) -> None:
        self.path = Path(path)
        create_private(self.path)  # its owner's alone, like the office's files
        self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            # A phone loses power without warning: a commit must be on disk when it returns.
            self._db.execute("PRAGMA synchronous = FULL")
            # An evicted record or a re-wrapped key leaves zeros behind, not its old bytes.
            self._db.execute("PRAGMA secure_delete = ON")
            self._depth = 0
            self.fold_due = False  # a `checkpoint` another connection held up
            self._migrate()
            self._aead = AESGCM(self._unlock(passphrase, kdf))
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        if self.fold_due:
            self.checkpoint()
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

    # -- the replica key ----------------------------------------------------------------

    def _unlock(self, passphrase: str, kdf: KdfParams | None) -> bytes:
        """The replica key: unwrapped from the stored lock, or made for a new file."""
        with self.transaction():
            stored = self.meta(LOCK)
            if stored is not None:
                return _unwrap(_decode_lock(stored), passphrase)
            # Before encryption at rest the client kept its private keys in clear in meta.
            if self._db.execute("SELECT 1 FROM meta").fetchone() is not None:
                raise Unreadable(
                    f"{self.path} was written before replicas were encrypted; enrol a new file"
                )
            replica_key = new_key()
            self._lock(replica_key, passphrase, kdf or KdfParams.new())
            return replica_key

    def _lock(self, replica_key: bytes, passphrase: str, kdf: KdfParams) -> None:
        if not passphrase:
            raise ValueError("an empty passphrase protects nothing")
        wrapped = seal(_passphrase_key(passphrase, kdf), replica_key, _bind(("meta", LOCK)))
        self.set_meta(LOCK, _encode(Lock(kdf=kdf, wrapped_key=wrapped)))

    def change_passphrase(self, old: str, new: str, *, kdf: KdfParams | None = None) -> None:
        """Wrap the replica key under `new` (scrypt at `kdf`, default `KdfParams.new()`).

        Raises `Unreadable` if `old` is wrong. Nothing else is re-encrypted.
        """
        with self.transaction():
            replica_key = _unwrap(_decode_lock(self.meta(LOCK)), old)
            self._lock(replica_key, new, kdf or KdfParams.new())
        # The key wrapped under the old passphrase must not linger in the -wal file.
        self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the file and empty it, so that what was deleted
        (zeroed in the file by `secure_delete`) lingers in no -wal file either.

        Another connection reading the file (a second app process) holds it up: then
        `fold_due` is set and the next pull, or `close`, tries again.
        """
        self._db.execute("PRAGMA busy_timeout = 200")  # not a reader's whole read
        try:
            (busy, _, _) = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._db.execute("PRAGMA busy_timeout = 5000")
        self.fold_due = bool(busy)

    def _seal(self, value: bytes, *row: str) -> bytes:
        return seal(self._aead, value, _bind(row))

    def _open(self, sealed: bytes, *row: str) -> bytes:
        try:
            return open_sealed(self._aead, sealed, _bind(row))
        except Unreadable as error:
            raise Unreadable(f"{'/'.join(row)}: {error.detail}") from None

    # -- meta ---------------------------------------------------------------------------

    def meta(self, key: str) -> MetaValue | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: MetaValue | None) -> None:
        """Store a meta value in clear: ids, cursors and stamps only, never personal data."""
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    def sealed_meta(self, key: str) -> bytes | None:
        """A value stored by `set_sealed_meta`; `Unreadable` if changed or copied from elsewhere."""
        value = self.meta(key)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise Unreadable(f"meta/{key}: not a sealed value")
        return self._open(value, "meta", key)

    def set_sealed_meta(self, key: str, value: bytes) -> None:
        self.set_meta(key, self._seal(value, "meta", key))

    # -- the server layer ---------------------------------------------------------------

    def state(self, key: RecordKey) -> RecordState | None:
        """The record as the server has sent it, or None if the device holds none."""
        row = self._db.execute(
            "SELECT state FROM records WHERE record_type = ? AND record_id = ?", key
        ).fetchone()
        return None if row is None else _decode_state(self._open(row[0], "records", *key))

    def states(self, keys: Iterable[RecordKey]) -> dict[RecordKey, RecordState]:
        """The records among `keys` the device holds, read at once."""
        wanted = json.dumps(sorted(set(keys)))
        rows = self._db.execute(
            "SELECT r.record_type, r.record_id, r.state FROM json_each(?) k"
            " JOIN records r ON r.record_type = json_extract(k.value, '$[0]')"
            " AND r.record_id = json_extract(k.value, '$[1]')",
            [wanted],
        )
        return {(t, i): _decode_state(self._open(state, "records", t, i)) for t, i, state in rows}

    def put_states(self, states: Iterable[RecordState]) -> None:
        """Store the records as the server has sent them."""
        self.put_encoded(((s.record_type, s.record_id), _encode(s)) for s in states)

    def put_encoded(self, states: Iterable[tuple[RecordKey, bytes]]) -> None:
        """Store records given as their encoded states (a state the office sent, as sent)."""
        self._db.executemany(
            "INSERT INTO records (record_type, record_id, state) VALUES (?, ?, ?)"
            " ON CONFLICT (record_type, record_id) DO UPDATE SET state = excluded.state",
            [(*key, self._seal(state, "records", *key)) for key, state in states],
        )

    def applied_among(self, change_ids: Iterable[str]) -> set[str]:
        """Those of `change_ids` already applied to the server layer."""
        wanted = json.dumps(list(change_ids))
        rows = self._db.execute(
            "SELECT a.change_id FROM json_each(?) k JOIN applied a ON a.change_id = k.value",
            [wanted],
        )
        return {change_id for (change_id,) in rows}

    def mark_all_applied(self, changes: Sequence[Change]) -> None:
        """Remember pulled changes."""
        self._db.executemany(
            "INSERT OR IGNORE INTO applied (change_id, record_type, record_id) VALUES (?, ?, ?)",
            [(c.change_id, c.record_type, c.record_id) for c in changes],
        )

    def evict(self, key: RecordKey, erased: bool = False) -> None:
        """Forget a record that left this device's view.

        Its applied change ids go too: if the record comes back into view, the
        server sends its whole history again, and every change must then apply.
        Own changes to it stop overlaying, whatever their state, or they would
        show a copy of the record built from them alone (unanswered ones show again
        if it comes back: `DeviceClient._own_changes_on_top`). They stay otherwise:
        unanswered ones are answered (most likely `not_permitted`, and kept by the
        office for a person to judge), and answered ones are sent again should the
        office be restored from a backup that lost them (`forget_server_layer`).
        An `erased` record's go, answered or not: the office keeps none of their
        content. Those already in a batch awaiting its answer go with the answer.
        """
        self._db.execute("DELETE FROM records WHERE record_type = ? AND record_id = ?", key)
        self._db.execute("DELETE FROM applied WHERE record_type = ? AND record_id = ?", key)
        if erased:
            self._db.execute("INSERT OR IGNORE INTO erased VALUES (?, ?)", key)
            self._db.execute(
                "DELETE FROM outbox WHERE record_type = ? AND record_id = ? AND state != 'sent'",
                key,
            )
        self._db.execute(
            "UPDATE outbox SET overlay = 0 WHERE record_type = ? AND record_id = ?", key
        )

    def is_erased(self, key: RecordKey) -> bool:
        """Whether the office erased this record (an `erased` eviction said so)."""
        found = self._db.execute(
            "SELECT 1 FROM erased WHERE record_type = ? AND record_id = ?", key
        ).fetchone()
        return found is not None

    # -- rebuilding the server layer from a whole pull ---------------------------------

    def stage(self, items: bytes) -> None:
        """Keep one page of a rebuilding pull (its items, encoded) until the last page."""
        (number,) = self._db.execute("SELECT coalesce(max(number), 0) + 1 FROM staged").fetchone()
        self._db.execute(
            "INSERT INTO staged VALUES (?, ?)", [number, self._seal(items, "staged", str(number))]
        )

    def staged(self) -> Iterator[bytes]:
        """The staged pages' items, in the order pulled."""
        rows = self._db.execute("SELECT number, items FROM staged ORDER BY number")
        for number, sealed in rows.fetchall():
            yield self._open(sealed, "staged", str(number))

    def drop_staged(self) -> None:
        self._db.execute("DELETE FROM staged")

    def drop_server_layer(self) -> None:
        """Drop every record and applied change id; the outbox stays as it is."""
        self._db.execute("DELETE FROM records")
        self._db.execute("DELETE FROM applied")

    def forget_server_layer(self) -> None:
        """Drop every record and applied change id, for a pull from no cursor to build the
        server layer again as the office now holds it.

        This device's changes the office had accepted, or may have, go back to
        `pending`: a restored office may have lost them, and sending them again costs
        nothing where it has not (they are answered `duplicate`, and then show only as
        the office holds them: `resent`). Local reads replay
        those to records still in this device's view until the pull brings them back
        (the restore may have lost them), but not those to records that left it: they
        must not bring a copy back (a pull from "states" replays no old eviction).
        """
        # Batches awaiting their answer are made again too, so that every change goes
        # in the order it was made: one of theirs first would make an older change that
        # the restore lost `stale_stamp`.
        self._db.execute("DELETE FROM batches")
        self._db.execute(
            "UPDATE outbox SET state = 'pending', batch_id = NULL, seq = NULL, resent = 1,"
            " reason = NULL, detail = NULL, overlay = overlay OR EXISTS (SELECT 1 FROM records r"
            " WHERE r.record_type = outbox.record_type AND r.record_id = outbox.record_id)"
            " WHERE state IN ('applied', 'conflict', 'sent')"
            " OR (state = 'duplicate' AND reason IS NULL)"
        )
        self.drop_server_layer()

    # -- the outbox ---------------------------------------------------------------------

    def append(self, change: Change, raw: bytes) -> None:
        """Queue a change as `pending`; `raw` are the exact bytes that will be pushed."""
        self._db.execute(
            "INSERT INTO outbox (change_id, record_type, record_id, raw) VALUES (?, ?, ?, ?)",
            [
                change.change_id,
                change.record_type,
                change.record_id,
                self._seal(raw, "outbox", change.change_id),
            ],
        )

    def overlay(self, key: RecordKey) -> list[bytes]:
        """The wire bytes of the own changes that local reads replay on `key`, in order."""
        rows = self._db.execute(
            "SELECT change_id, raw FROM outbox WHERE record_type = ? AND record_id = ? AND overlay"
            " ORDER BY position",
            key,
        )
        return [self._open(raw, "outbox", change_id) for change_id, raw in rows]

    def overlaying(self) -> list[tuple[RecordKey, bytes]]:
        """Every own change that local reads replay, as (record, wire bytes), in order."""
        rows = self._db.execute(
            "SELECT change_id, record_type, record_id, raw FROM outbox WHERE overlay"
            " ORDER BY position"
        )
        return [((t, i), self._open(raw, "outbox", change_id)) for change_id, t, i, raw in rows]

    def own_changes_on(self, keys: Container[RecordKey]) -> list[OwnChange]:
        """Own changes to `keys` that local reads replay or that await their answer."""
        rows = self._db.execute(
            "SELECT change_id, record_type, record_id, raw, overlay, state IN ('pending', 'sent')"
            " FROM outbox WHERE overlay OR state IN ('pending', 'sent') ORDER BY position"
        )
        return [
            OwnChange(change_id, (t, i), self._open(raw, "outbox", change_id), bool(o), bool(u))
            for change_id, t, i, raw, o, u in rows
            if (t, i) in keys
        ]

    def set_overlay(self, change_ids: Iterable[str], shown: bool) -> None:
        """Whether local reads replay these own changes on top of the server layer."""
        self._db.executemany(
            "UPDATE outbox SET overlay = ? WHERE change_id = ?", [(shown, c) for c in change_ids]
        )

    def unbatched(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` pending changes (id, bytes), oldest first."""
        rows = self._db.execute(
            "SELECT change_id, raw FROM outbox WHERE state = 'pending' ORDER BY position LIMIT ?",
            [limit],
        )
        return [(change_id, self._open(raw, "outbox", change_id)) for change_id, raw in rows]

    def add_batch(self, batch_id: str, change_ids: Sequence[str], body: bytes) -> None:
        """Assign changes to a batch and keep its body (its changes' bytes); they become `sent`."""
        self._db.execute(
            "INSERT INTO batches (batch_id, body) VALUES (?, ?)",
            [batch_id, self._seal(body, "batches", batch_id)],
        )
        self._db.executemany(
            "UPDATE outbox SET state = 'sent', batch_id = ? WHERE change_id = ?",
            [(batch_id, change_id) for change_id in change_ids],
        )

    def open_batches(self) -> list[tuple[str, bytes]]:
        """The batches still waiting for an answer (id, body), oldest first."""
        rows = self._db.execute("SELECT batch_id, body FROM batches ORDER BY number")
        return [(batch_id, self._open(body, "batches", batch_id)) for batch_id, body in rows]

    def batch_change_ids(self, batch_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT change_id FROM outbox WHERE batch_id = ? ORDER BY position", [batch_id]
        )
        return [change_id for (change_id,) in rows]

    def record_answers(self, batch_id: str, results: Sequence[ChangeResult]) -> bool:
        """Store the server's answer to every change of a batch and close the batch;
        whether any answer said its record was erased (its content is then dropped).

        The detail is sealed: the server's text may quote a refused value.
        """
        self._db.executemany(
            "UPDATE outbox SET state = ?, seq = ?, reason = ?, detail = ?, resent = 0,"
            " overlay = overlay AND ? AND NOT (resent AND ?) WHERE change_id = ?",
            [
                (
                    r.status,
                    r.seq,
                    r.reason,
                    self._seal_detail(r),
                    accepted(r),
                    r.status == "duplicate",
                    r.change_id,
                )
                for r in results
            ],
        )
        erased = [r.change_id for r in results if r.reason == Reason.RECORD_ERASED]
        for key in self._records_of(erased):  # perhaps no `erased` eviction reached us
            self.evict(key, erased=True)
        self._db.execute("DELETE FROM batches WHERE batch_id = ?", [batch_id])
        # The office keeps nothing of a change to an erased record: nor does the device.
        self._db.execute(
            "DELETE FROM outbox WHERE batch_id = ? AND EXISTS (SELECT 1 FROM erased e"
            " WHERE e.record_type = outbox.record_type AND e.record_id = outbox.record_id)",
            [batch_id],
        )
        return bool(erased)

    def _records_of(self, change_ids: Sequence[str]) -> set[RecordKey]:
        rows = self._db.execute(
            "SELECT DISTINCT o.record_type, o.record_id FROM json_each(?) k"
            " JOIN outbox o ON o.change_id = k.value",
            [json.dumps(change_ids)],
        )
        return {(t, i) for t, i in rows}

    def _seal_detail(self, result: ChangeResult) -> bytes | None:
        # Stored as a BLOB in the TEXT column: SQLite keeps a BLOB as it is in any column.
        if result.detail is None:
            return None
        return self._seal(result.detail.encode(), "outbox", result.change_id, "detail")

    def outbox(self) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT change_id, record_type, record_id, state, seq, reason, detail, batch_id"
            " FROM outbox ORDER BY position"
        )
        return [
            OutboxEntry._make([*entry, self._open_detail(entry[0], detail), batch_id])
            for *entry, detail, batch_id in rows
        ]

    def _open_detail(self, change_id: str, sealed: bytes | None) -> str | None:
        if sealed is None:
            return None
        return self._open(sealed, "outbox", change_id, "detail").decode()


def _bind(row: Sequence[str]) -> bytes:
    """What a sealed value belongs to: its table and row key, NUL-separated."""
    return "\x00".join(row).encode()


def _passphrase_key(passphrase: str, kdf: KdfParams) -> AESGCM:
    # NFC: the same passphrase typed with another input method may arrive in another form.
    return AESGCM(derive_key(unicodedata.normalize("NFC", passphrase), kdf))


def _decode_lock(stored: MetaValue | None) -> Lock:
    if isinstance(stored, bytes):
        with suppress(msgspec.DecodeError):
            return msgspec.msgpack.decode(stored, type=Lock)
    raise Unreadable("meta/lock: missing or damaged")


def _unwrap(lock: Lock, passphrase: str) -> bytes:
    """The replica key; `Unreadable` if the passphrase is wrong."""
    try:
        return open_sealed(
            _passphrase_key(passphrase, lock.kdf), lock.wrapped_key, _bind(("meta", LOCK))
        )
    except Unreadable:
        raise Unreadable("the replica does not open: wrong passphrase") from None
