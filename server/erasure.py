"""Lawful erasure of a case: destroy its data key, evict it from every device, audit it.

The case's parties that no other case names go with it. Destroying the data
keys (`server.storage.vault`) is what erases: every copy of the sealed
bodies, in this store and in any backup of it, stops opening. The store
then drops what it still held of them (sealed blobs, conflicts, index
entries), and every user who could read them gets an eviction at a new log
position, so their devices delete their copies on the next pull. The linked
records it keeps (a party another case names, a warning, an agreement) lose
the case's readers as a push unlinking them would: at the same position,
whoever may no longer see one gets an `access_removed` eviction. Running it
again finishes an erasure that stopped half way.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import msgspec

from schemas.changes import ChangeResult, Reason
from server import audit
from server.storage import index, repeats
from server.storage.access import update_access
from server.storage.people import forget
from server.storage.sqlite import SqliteStore
from sync.store import RecordKey


class Erasure(NamedTuple):
    records: list[RecordKey]
    evicted_users: int
    kept: list[RecordKey]  # linked records another case still names, or not a party


def erase_case(store: SqliteStore, case_id: str, reason: str, actor: str, now_ms: int) -> Erasure:
    """Erase case `case_id` and its unshared parties; raises KeyError if there is no such case."""
    case = ("case", case_id)
    db = store.db
    if (
        db.execute(
            "SELECT 1 FROM records WHERE record_type = 'case' AND record_id = ?", [case_id]
        ).fetchone()
        is None
    ):
        raise KeyError(case_id)
    linked = [
        (t, i)
        for t, i in db.execute(
            "SELECT record_type, record_id FROM links WHERE case_id = ? ORDER BY 1, 2", [case_id]
        )
    ]
    shared = {
        (t, i)
        for t, i in db.execute(
            "SELECT DISTINCT record_type, record_id FROM links WHERE case_id != ?", [case_id]
        )
    }
    targets = [case, *(k for k in linked if k[0] == "party" and k not in shared)]
    for key in targets:
        store.vault.erase(key, reason, now_ms)
    store.forget_cached(targets)
    with store.transaction():
        seq = store.last_seq() + 1
        marker = f"erasure-{uuid.uuid4().hex}"
        result = ChangeResult(change_id=marker, status="rejected", reason=Reason.RECORD_ERASED)
        # A log position of its own, after every cursor, for the evictions to sit at.
        db.execute(
            "INSERT INTO changes (seq, change_id, record_type, record_id, device_id, hlc, status,"
            " result, raw) VALUES (?, ?, 'case', ?, ?, 0, 'erased', ?, x'')",
            [seq, marker, case_id, actor, msgspec.msgpack.encode(result)],
        )
        readers = db.execute(
            "SELECT user_id, record_type, record_id FROM access"
            f" WHERE (record_type, record_id) IN (VALUES {','.join('(?, ?)' for _ in targets)})",
            [part for key in targets for part in key],
        ).fetchall()
        db.conn.executemany(
            "INSERT OR IGNORE INTO evictions (seq, user_id, record_type, record_id, reason)"
            " VALUES (?, ?, ?, ?, 'erased')",
            [(seq, *reader) for reader in readers],
        )
        people = {(kind, value) for _, kind, value in repeats.holdings(db, [case_id])}
        for table in ("access", "conflicts", "links"):
            db.conn.executemany(
                f"DELETE FROM {table} WHERE record_type = ? AND record_id = ?", targets
            )
        db.execute("DELETE FROM links WHERE case_id = ?", [case_id])
        # The kept records no longer have this case linking them: recompute their readers
        # and org unit with the push path's rules, so that the erased case's mediator (or
        # a supervisor of its unit only) is evicted from a shared party or a linked warning
        # and gets none of its later changes, instead of following it for ever.
        kept = [k for k in linked if k not in targets]
        update_access(store, dict.fromkeys(kept, seq), None)
        for table, column in (("records", "state"), ("changes", "raw"), ("quarantine", "raw")):
            db.conn.executemany(
                f"UPDATE {table} SET {column} = x'' WHERE record_type = ? AND record_id = ?",
                targets,
            )
        forget(store, targets)
        index.forget(store, targets)
        repeats.refresh_around(db, set(), people)
        audit.append(
            db,
            now_ms,
            actor,
            "erase",
            f"case/{case_id}",
            {
                "reason": reason,
                "records": [f"{t}/{i}" for t, i in targets],
                "evicted_users": len({user for user, *_ in readers}),
            },
        )
    return Erasure(targets, len({user for user, *_ in readers}), kept)
