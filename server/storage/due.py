"""Work a migration leaves for the next start (table `due`): what a changed rule asks of
records already stored, which only the engine can redo, with their states and the keys.

- `readers`: who may see the record, and what a case links, is worked out again
  (`access.update_access`); users who lost it get evictions.
- `people`: a party's blind-index digests are made again (`people.index_parties`),
  and the repeat flags of the cases holding it follow.
- `index`: the record's rows in the console's indexes are written
  (`index.index_stored`), dated as the office received it; before `readers`
  and `people`, whose repeat flags read them.
- `states`: the record's state is merged again from its logged changes, and its
  open conflicts follow (`SqliteStore.rebuild`); done first, so the other kinds
  read the new states.

At a start, each item is done once and audited: `states` a chunk to a transaction
(a city's every record can be due), the rest in one transaction after them, their
states read a chunk at a time so that memory holds one chunk, not the city. A
supervisor's move lists their old and new units' records as `readers` and does
them at once, a chunk to a transaction (`redo_readers`); what a stopped move left
is done at the next start.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlite_utils

from server import audit
from server.storage import repeats
from server.storage.access import update_access
from server.storage.index import index_stored
from server.storage.people import index_parties
from server.storage.sqlite import SqliteStore
from sync.store import RecordKey


def catch_up(store: SqliteStore, index_key: bytes, now_ms: int, size: int = 500) -> dict[str, int]:
    """Do the work listed in `due`, `size` records at a time; returns how many records
    of each kind it did."""
    with store.snapshot() as conn:  # most starts have nothing to do: no write lock for them
        if conn.execute("SELECT 1 FROM due LIMIT 1").fetchone() is None:
            return {}
    # First, so the other kinds read the new states.
    done = _rebuild_states(store, now_ms, size)
    with store.transaction():
        db = store.db
        counts = dict(db.execute("SELECT work, count(*) FROM due GROUP BY work ORDER BY work"))
        if not counts:
            return done
        # After every cursor: phones drop what they no longer see with the office's
        # next logged change, and nothing of it reaches them meanwhile.
        seq = store.last_seq() + 1
        for chunk in _chunks(db, "index", size):
            held = store.states(chunk)
            index_stored(store, {key: held[key] for key in chunk if key in held})
        for chunk in _chunks(db, "readers", size):
            # A record erased since it was listed has no state, and nothing left to redo.
            held = store.states(chunk)
            update_access(store, dict.fromkeys([key for key in chunk if key in held], seq), None)
        for chunk in _chunks(db, "people", size):
            held = store.states(chunk)
            parties = {("party", i) for t, i in chunk if t == "party"}
            cases = {case for case, _, _ in repeats.holders(db, parties)}
            watched = repeats.Watched(cases, repeats.holdings(db, cases))
            index_parties(store, index_key, {key: held[key] for key in chunk if key in held})
            repeats.update(db, watched)
        db.execute("DELETE FROM due")
        audit.append(db, now_ms, "office", "catch_up", "due", counts)
    return {**done, **counts}


def redo_readers(store: SqliteStore, size: int = 500) -> int:
    """Do the `readers` work listed in `due`, cases first, `size` records to a transaction;
    how many records it did.

    Between two chunks a push may land: some records then have their new readers and
    some the old, as if the change of who may read what came a chunk at a time. Each
    chunk grants and evicts after every cursor, and a record a case links is done again
    with each case that links it, so the last chunk leaves every reader right (and a
    record done as a case's link is not done again on its own).
    """
    if store.db.conn.in_transaction:  # it would hold the writer gate for every chunk
        raise RuntimeError("redo_readers runs outside a transaction")
    done = 0
    for only_cases in (True, False):
        while True:
            with store.transaction():
                db = store.db
                chunk = db.execute(
                    "SELECT record_type, record_id FROM due WHERE work = 'readers'"
                    + (" AND record_type = 'case'" if only_cases else "")
                    + " LIMIT ?",
                    [size],
                ).fetchall()
                if not chunk:
                    break
                held = store.states(chunk)  # a record erased since: nothing left to redo
                seq = store.last_seq() + 1  # after every cursor, this chunk's own
                touched = {key: seq for key in chunk if key in held}
                redone = update_access(store, touched, None, held)
                db.conn.executemany(
                    "DELETE FROM due WHERE work = 'readers' AND record_type = ? AND record_id = ?",
                    [*chunk, *redone],
                )
            done += len(chunk)
    return done


def _chunks(db: sqlite_utils.Database, work: str, size: int) -> Iterator[list[RecordKey]]:
    """The records due `work`, `size` at a time, read as they are needed."""
    after = ("", "")
    while chunk := [
        (t, i)
        for t, i in db.execute(
            "SELECT record_type, record_id FROM due WHERE work = ?"
            " AND (record_type, record_id) > (?, ?) ORDER BY record_type, record_id LIMIT ?",
            [work, *after, size],
        )
    ]:
        yield chunk
        after = chunk[-1]


def _rebuild_states(store: SqliteStore, now_ms: int, size: int = 500) -> dict[str, int]:
    """Merge the records due as `states` again, `size` to a transaction, so that a city's
    every record can be due and a start killed half way keeps what it did. How many were
    rebuilt, and which were kept as they were, stay in `due` until the last chunk is done,
    which logs them in one `catch_up` entry."""
    while True:
        with store.transaction():
            db = store.db
            chunk = db.execute(
                "SELECT record_type, record_id FROM due WHERE work = 'states' LIMIT ?", [size]
            ).fetchall()
            progress = db.execute(
                "SELECT record_id FROM due WHERE work = 'states_rebuilt'"
            ).fetchone()
            rebuilt = int(progress[0]) if progress else 0
            db.execute("DELETE FROM due WHERE work = 'states_rebuilt'")
            if not chunk:
                if not progress:
                    return {}
                kept = db.execute(
                    "SELECT record_type, record_id FROM due WHERE work = 'states_kept'"
                ).fetchall()
                detail: dict[str, object] = {"states": rebuilt}
                counts = {"states": rebuilt}
                if kept:  # kept as they were: a logged change of theirs fails today's checks
                    detail["states_kept"] = [f"{t}/{i}" for t, i in kept]
                    counts["states_kept"] = len(kept)
                db.execute("DELETE FROM due WHERE work = 'states_kept'")
                audit.append(db, now_ms, "office", "catch_up", "due", detail)
                return counts
            done, left = store.rebuild(chunk)
            db.conn.executemany(
                "DELETE FROM due WHERE work = 'states' AND record_type = ? AND record_id = ?",
                chunk,
            )
            db.conn.executemany("INSERT OR IGNORE INTO due VALUES ('states_kept', ?, ?)", left)
            db.execute("INSERT INTO due VALUES ('states_rebuilt', '', ?)", [str(rebuilt + done)])
