"""Lawful erasure of a case: destroy its data key, evict it from every device, audit it.

The case's parties that no other case names go with it. Destroying the data
keys (`server.storage.vault`) is what erases: every copy of the sealed
bodies, in this store and in any backup of it, stops opening. The store
then drops what it still held of them (sealed blobs, conflicts, index
entries), and every user who could read them gets an eviction at a new log
position, so their devices delete their copies on the next pull. The linked
records it keeps (a party another case names, a warning, an agreement) lose
the case's readers as a push unlinking them would: at the same position,
whoever may no longer see one gets an `access_removed` eviction. An erasure
that stopped half way (its keys destroyed, nothing else done) is finished by
running it again, or by `lianxin serve` as it starts; `lianxin audit verify`
reports one.
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
    """Erase case `case_id` and its unshared parties; raises KeyError if there is no such case.

    The writer gate is held from reading the links to the end: a push that links one of
    the parties to another case meanwhile (a running server) would make it shared.
    """
    case = ("case", case_id)
    db = store.db
    with store.transaction():
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
                "SELECT record_type, record_id FROM links WHERE case_id = ? ORDER BY 1, 2",
                [case_id],
            )
        ]
        shared = {
            (t, i)
            for t, i in db.execute(
                "SELECT DISTINCT record_type, record_id FROM links WHERE case_id != ?", [case_id]
            )
        }
        return erase_records(
            store,
            [case, *(k for k in linked if k[0] == "party" and k not in shared)],
            reason,
            actor,
            now_ms,
        )


def erase_records(
    store: SqliteStore, targets: list[RecordKey], reason: str, actor: str, now_ms: int
) -> Erasure:
    """Erase exactly `targets` (the first names the audit entry), as `erase_case` erases.

    For a restore (`server.backup.finish_erasures`): old data restored with a
    newer key store holds records whose key is destroyed already, each to be
    cleared as its erasure cleared it live, and no record besides (a party
    unshared in the old data may have been shared, and so kept, live).
    """
    db = store.db
    store.vault.erase_all(targets, reason, now_ms)
    store.forget_cached(targets)
    erased_cases = [i for t, i in targets if t == "case"]
    with store.transaction():
        seq = store.last_seq() + 1
        marker = f"erasure-{uuid.uuid4().hex}"
        result = ChangeResult(change_id=marker, status="rejected", reason=Reason.RECORD_ERASED)
        # A log position of its own, after every cursor, for the evictions to sit at.
        db.execute(
            "INSERT INTO changes (seq, change_id, record_type, record_id, device_id, hlc, status,"
            " result, raw) VALUES (?, ?, ?, ?, ?, 0, 'erased', ?, x'')",
            [seq, marker, *targets[0], actor, msgspec.msgpack.encode(result)],
        )
        targets_sql = f"(record_type, record_id) IN (VALUES {','.join('(?, ?)' for _ in targets)})"
        parts = [part for key in targets for part in key]
        readers = db.execute(
            f"SELECT user_id, record_type, record_id FROM access WHERE {targets_sql}", parts
        ).fetchall()
        db.conn.executemany(
            "INSERT OR IGNORE INTO evictions (seq, user_id, record_type, record_id, reason)"
            " VALUES (?, ?, ?, ?, 'erased')",
            [(seq, *reader) for reader in readers],
        )
        # The records the erased cases link and keep, and the cases that link an erased
        # record but stay (a party shared in restored old data): their flags move too.
        linked = [
            (t, i)
            for case_id in erased_cases
            for t, i in db.execute(
                "SELECT record_type, record_id FROM links WHERE case_id = ? ORDER BY 1, 2",
                [case_id],
            )
        ]
        linking = {
            case_id
            for (case_id,) in db.execute(f"SELECT case_id FROM links WHERE {targets_sql}", parts)
        } - set(erased_cases)
        people = {
            (kind, value) for _, kind, value in repeats.holdings(db, [*erased_cases, *linking])
        }
        for table in ("access", "conflicts", "links"):
            db.conn.executemany(
                f"DELETE FROM {table} WHERE record_type = ? AND record_id = ?", targets
            )
        db.conn.executemany("DELETE FROM links WHERE case_id = ?", [(i,) for i in erased_cases])
        # The kept records no longer have this case linking them: recompute their readers
        # and org unit with the push path's rules, so that the erased case's mediator (or
        # a supervisor of its unit only) is evicted from a shared party or a linked warning
        # and gets none of its later changes, instead of following it for ever.
        kept = [k for k in dict.fromkeys(linked) if k not in targets]
        update_access(store, dict.fromkeys(kept, seq), None)
        for table, column in (("records", "state"), ("changes", "raw"), ("quarantine", "raw")):
            db.conn.executemany(
                f"UPDATE {table} SET {column} = x'' WHERE record_type = ? AND record_id = ?",
                targets,
            )
        forget(store, targets)
        index.forget(store, targets)
        repeats.refresh_around(db, linking, people)
        audit.append(
            db,
            now_ms,
            actor,
            "erase",
            "/".join(targets[0]),
            {
                "reason": reason,
                "records": [f"{t}/{i}" for t, i in targets],
                "evicted_users": len({user for user, *_ in readers}),
            },
        )
    return Erasure(targets, len({user for user, *_ in readers}), kept)
