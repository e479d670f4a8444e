"""Per-record data keys, wrapped under the office master key, in a key store of their own.

Every record gets a random 256-bit data key the first time anything of it is
stored; its bodies are sealed under that key (`sync.atrest`) with the record
and row bound in. The data keys are wrapped (AES-256-GCM) under the current
master key of `server.keys` and kept in their own SQLite file, apart from the
data and backed up apart from it: erasing a record destroys its key, which
leaves every copy of its bodies unreadable, backups of the data included, and
restoring an old data backup cannot bring the key back.

    data_keys (record_type, record_id) → master_id, wrapped, erased_ms, reason
              (an erased key keeps its row, with wrapped NULL)

Unwrapped keys are cached in memory as their 32 bytes (up to 50,000), and
ready ciphers only for the 2,048 most recently used records: an `AESGCM`
holds about 2.5 KB of OpenSSL state, so caching 50,000 of them took 125 MB,
most of the server's memory after a supervisor's whole pull
(docs/BENCHMARKS.md, session 9), while building one costs 1.5 µs a use.
Another process (the CLI erasing a record or re-wrapping keys after a
rotation) commits to the same file; the cache is dropped whenever SQLite's
`data_version` says someone else wrote. It never moves for this connection's
own commits, so the vault must not read it afresh after them: that would
swallow a commit another process made in between, and keep serving a key
that process erased.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.keys import OfficeKeys
from sync.atrest import new_key, open_sealed, seal
from sync.errors import Unreadable

log = logging.getLogger("lianxin.store")

RecordKey = tuple[str, str]
_CHUNK = 400
# About 5 MB of ciphers: as many records as the writer keeps decoded states of, more
# than a batch or an incremental pull works on.
CIPHERS = 2_048


def _bind(key: RecordKey) -> bytes:
    return b"data key\x00%s\x00%s" % (key[0].encode(), key[1].encode())


def _chunks(items: list[RecordKey]) -> Iterator[list[RecordKey]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Vault:
    """The data keys of one office. Thread-safe: one connection behind a lock."""

    def __init__(self, path: Path, keys: OfficeKeys, cache_size: int = 50_000) -> None:
        self.path = path
        self.keys = keys
        self._cache: dict[RecordKey, bytes | None] = {}  # None: erased
        self._cache_size = cache_size
        self._ciphers: OrderedDict[RecordKey, AESGCM] = OrderedDict()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        # Keys are the one thing that must be on disk before the data they open.
        self._db.execute("PRAGMA synchronous = FULL")
        # Zero the bytes of a destroyed key instead of leaving them in a free page.
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS data_keys (record_type TEXT NOT NULL,"
            " record_id TEXT NOT NULL, master_id TEXT, wrapped BLOB,"
            " erased_ms INTEGER, reason TEXT,"
            " PRIMARY KEY (record_type, record_id))"
        )
        # A row while an erasure's destroyed keys may still be in the -wal file.
        self._db.execute("CREATE TABLE IF NOT EXISTS unfolded (erased_ms INTEGER NOT NULL)")
        self._version = self._data_version()
        self._fold_due = self._unfolded()

    def close(self) -> None:
        if self._fold_due:
            self._fold(wait_ms=1000)
        self._db.close()

    def _unfolded(self) -> bool:
        return self._db.execute("SELECT 1 FROM unfolded LIMIT 1").fetchone() is not None

    def _fold(self, wait_ms: int) -> bool:
        """Empty the write-ahead log into the file, where `secure_delete` zeroed what an
        erasure destroyed; whether it did. A reader in another process (a backup being
        taken) holds it up: then the `unfolded` row stays, and this vault tries again,
        without waiting, each time it is used, as does every other process's vault that
        sees the row (the erasure was perhaps a command's, which has ended since)."""
        self._db.execute(f"PRAGMA busy_timeout = {wait_ms}")
        try:
            (busy, _, _) = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._db.execute("PRAGMA busy_timeout = 10000")
        self._fold_due = bool(busy)
        if not busy:
            self._db.execute("DELETE FROM unfolded")
        return not busy

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, rolled back on any error (a key another process made or
        erased meanwhile): the connection is never left inside it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _data_version(self) -> int:
        version: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _fresh_cache(self) -> None:
        version = self._data_version()
        if version != self._version:  # another process wrote: an erasure, perhaps
            self._version = version
            self._cache.clear()
            self._ciphers.clear()
            self._fold_due = self._unfolded()
        if self._fold_due:
            self._fold(wait_ms=0)
        if len(self._cache) > self._cache_size:
            self._cache.clear()

    def data_keys(
        self, records: Iterable[RecordKey], create: bool = False
    ) -> dict[RecordKey, AESGCM | None]:
        """The data key of each record (None once erased); new keys for the rest if `create`.

        New keys are committed before this returns, so data sealed under them
        can never reach the disk without its key.
        """
        with self._lock:
            found = self._secrets(records, create)
            return {k: None if s is None else self._cipher(k, s) for k, s in found.items()}

    def _cipher(self, key: RecordKey, secret: bytes) -> AESGCM:
        cipher = self._ciphers.get(key)
        if cipher is None:
            cipher = self._ciphers[key] = AESGCM(secret)
            if len(self._ciphers) > CIPHERS:
                self._ciphers.popitem(last=False)
        else:
            self._ciphers.move_to_end(key)
        return cipher

    def erased(self, records: Iterable[RecordKey]) -> set[RecordKey]:
        """Which of `records` had their data key destroyed (read without unwrapping any)."""
        wanted = set(records)
        if not wanted:  # most pushes ask about no record: no lock, no query
            return set()
        with self._lock:
            self._fresh_cache()
            gone = {k for k in wanted if k in self._cache and self._cache[k] is None}
            for chunk in _chunks([k for k in wanted if k not in self._cache]):
                marks = ",".join("(?, ?)" for _ in chunk)
                gone.update(
                    self._db.execute(
                        f"SELECT d.record_type, d.record_id FROM (VALUES {marks}) AS k"
                        " JOIN data_keys AS d ON d.record_type = k.column1"
                        " AND d.record_id = k.column2 WHERE d.wrapped IS NULL",
                        [part for key in chunk for part in key],
                    )
                )
        return gone

    def _secrets(
        self, records: Iterable[RecordKey], create: bool = False
    ) -> dict[RecordKey, bytes | None]:
        """What `data_keys` answers, as each key's 32 bytes; call with the lock held."""
        wanted = set(records)
        self._fresh_cache()
        found = {k: self._cache[k] for k in wanted if k in self._cache}
        missing = [k for k in wanted if k not in found]
        for chunk in _chunks(missing):
            marks = ",".join("(?, ?)" for _ in chunk)
            rows = self._db.execute(
                f"SELECT d.record_type, d.record_id, d.master_id, d.wrapped"
                f" FROM (VALUES {marks}) AS k JOIN data_keys AS d"
                " ON d.record_type = k.column1 AND d.record_id = k.column2",
                [part for key in chunk for part in key],
            )
            for record_type, record_id, master_id, wrapped in rows:
                key = (record_type, record_id)
                found[key] = None if wrapped is None else self._unwrap(key, master_id, wrapped)
        new = [k for k in missing if k not in found] if create else []
        if new:
            secrets = {k: new_key() for k in new}
            master = self.keys.masters[self.keys.master_id]
            with self._writing():  # fails if another process made or erased one meanwhile
                self._db.executemany(
                    "INSERT INTO data_keys (record_type, record_id, master_id, wrapped)"
                    " VALUES (?, ?, ?, ?)",
                    [(*k, self.keys.master_id, seal(master, secrets[k], _bind(k))) for k in new],
                )
            found.update(secrets)
        self._cache.update(found)
        return found

    def _unwrap(self, key: RecordKey, master_id: str, wrapped: bytes) -> bytes:
        master = self.keys.masters.get(master_id)
        if master is None and self.keys.reload():  # rotated by another process
            master = self.keys.masters.get(master_id)
        if master is None:
            raise Unreadable(f"data key of {key[0]}/{key[1]} is under unknown key {master_id}")
        return open_sealed(master, wrapped, _bind(key))

    def erase(self, key: RecordKey, reason: str, now_ms: int) -> bool:
        """Destroy a record's data key for good; False if it was erased already."""
        return self.erase_all([key], reason, now_ms) == 1

    def erase_all(self, keys: Sequence[RecordKey], reason: str, now_ms: int) -> int:
        """Destroy these records' data keys for good, all or none (an erasure killed half way
        is then finished from the keys destroyed); how many were not erased already.

        A record with no key yet (a party its case named before a phone pushed it) is
        marked erased all the same: it may never be stored.
        """
        with self._lock:
            with self._writing():
                done = sum(
                    self._db.execute(
                        "INSERT INTO data_keys (record_type, record_id, erased_ms, reason)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (record_type, record_id) DO UPDATE"
                        " SET wrapped = NULL, master_id = NULL, erased_ms = excluded.erased_ms,"
                        " reason = excluded.reason WHERE wrapped IS NOT NULL",
                        [*key, now_ms, reason],
                    ).rowcount
                    for key in keys
                )
                self._db.execute("INSERT INTO unfolded (erased_ms) VALUES (?)", [now_ms])
            # The WAL still holds the pages with the keys until a checkpoint rewrites them.
            if not self._fold(wait_ms=2000):
                log.warning("destroyed data keys stay in %s-wal until its reader ends", self.path)
            for key in keys:
                self._cache.pop(key, None)
                self._ciphers.pop(key, None)
        return done

    def rewrap(self, limit: int = 1000) -> int:
        """Re-wrap up to `limit` data keys still under an older master key; how many it did."""
        with self._lock:
            # Another `keys rotate` may have made a newer master since: re-wrap under that.
            self.keys.reload()
            current = self.keys.master_id
            rows = self._db.execute(
                "SELECT record_type, record_id, master_id, wrapped FROM data_keys"
                " WHERE wrapped IS NOT NULL AND master_id != ? LIMIT ?",
                [current, limit],
            ).fetchall()
            master = self.keys.masters[current]
            updates = []
            for record_type, record_id, master_id, wrapped in rows:
                key = (record_type, record_id)
                secret = open_sealed(self.keys.masters[master_id], wrapped, _bind(key))
                updates.append((current, seal(master, secret, _bind(key)), *key, master_id))
            with self._writing():
                self._db.executemany(
                    "UPDATE data_keys SET master_id = ?, wrapped = ?"
                    " WHERE record_type = ? AND record_id = ? AND master_id = ?",
                    updates,
                )
        return len(updates)

    def count_under(self) -> dict[str, int]:
        """How many live data keys each master key wraps."""
        with self._lock:
            rows = self._db.execute(
                "SELECT master_id, count(*) FROM data_keys WHERE wrapped IS NOT NULL"
                " GROUP BY master_id"
            )
            return dict(rows.fetchall())
