"""Keep the `access`, `links` and `evictions` tables in step with applied changes.

Runs inside the push transaction, after the engine: every record a batch
touched (and every record a touched case links or linked) gets its readers
recomputed by `sync.access.readers`; new readers are granted from this
sequence on (a pull then sends them the record's whole history), and lost
readers get an eviction.
"""

from __future__ import annotations

import json

from server.storage.sqlite import SqliteStore
from sync.access import Scope, readers, scope
from sync.store import RecordKey


def update_access(store: SqliteStore, touched: dict[RecordKey, int], creator: str | None) -> None:
    """Recompute readers after a batch; `touched` maps each record to its last seq."""
    db = store.db
    if creator is not None:
        db.conn.executemany(
            "UPDATE records SET created_by = ? WHERE record_type = ? AND record_id = ?"
            " AND created_by IS NULL",
            [(creator, t, i) for t, i in touched],
        )
    states = store.states(touched)
    scopes: dict[RecordKey, Scope] = {key: scope(state) for key, state in states.items()}
    due = dict(touched)
    for (record_type, case_id), seq in touched.items():
        if record_type != "case":
            continue
        old = {
            tuple(row)
            for row in db.execute(
                "SELECT record_type, record_id FROM links WHERE case_id = ?", [case_id]
            )
        }
        new = scopes[("case", case_id)].links
        db.execute("DELETE FROM links WHERE case_id = ?", [case_id])
        db.conn.executemany(
            "INSERT INTO links (case_id, record_type, record_id) VALUES (?, ?, ?)",
            [(case_id, t, i) for t, i in new],
        )
        for key in old | new:
            due.setdefault(key, seq)
    supervisors = [
        (user_id, json.loads(units))
        for user_id, units in db.execute(
            "SELECT user_id, org_units FROM users WHERE role = 'supervisor'"
        )
    ]
    for key, seq in due.items():
        record_type, record_id = key
        own = scopes.get(key) or _scope_of(store, key)
        linking = [
            (
                _creator(store, ("case", case_id)),
                scopes.get(("case", case_id)) or _scope_of(store, ("case", case_id)),
            )
            for (case_id,) in db.execute(
                "SELECT case_id FROM links WHERE record_type = ? AND record_id = ?", key
            ).fetchall()
        ]
        if own is None:
            continue
        now = readers(_creator(store, key), own, linking, supervisors)
        org_unit = own.org_unit or next((s.org_unit for _, s in linking if s and s.org_unit), None)
        db.execute(
            "UPDATE records SET org_unit = ? WHERE record_type = ? AND record_id = ?",
            [org_unit, record_type, record_id],
        )
        before = {
            user
            for (user,) in db.execute(
                "SELECT user_id FROM access WHERE record_type = ? AND record_id = ?", key
            )
        }
        db.conn.executemany(
            "INSERT INTO access (user_id, record_type, record_id, since_seq) VALUES (?, ?, ?, ?)",
            [(user, record_type, record_id, seq) for user in now - before],
        )
        lost = before - now
        db.conn.executemany(
            "DELETE FROM access WHERE user_id = ? AND record_type = ? AND record_id = ?",
            [(user, record_type, record_id) for user in lost],
        )
        db.conn.executemany(
            "INSERT OR IGNORE INTO evictions (seq, user_id, record_type, record_id, reason)"
            " VALUES (?, ?, ?, ?, 'access_removed')",
            [(seq, user, record_type, record_id) for user in lost],
        )


def _creator(store: SqliteStore, key: RecordKey) -> str | None:
    row = store.db.execute(
        "SELECT created_by FROM records WHERE record_type = ? AND record_id = ?", key
    ).fetchone()
    return row[0] if row else None


def _scope_of(store: SqliteStore, key: RecordKey) -> Scope | None:
    state = store.states([key]).get(key)
    return scope(state) if state else None


def existing(store: SqliteStore, keys: list[RecordKey]) -> set[RecordKey]:
    """Which of `keys` are records already in the store."""
    return _present(store, "records t", "", keys)


def readable(store: SqliteStore, user_id: str, keys: list[RecordKey]) -> set[RecordKey]:
    """Which of `keys` `user_id` may see."""
    return _present(store, "access t", " AND t.user_id = ?", keys, user_id)


def _present(
    store: SqliteStore, table: str, condition: str, keys: list[RecordKey], *params: str
) -> set[RecordKey]:
    found: set[RecordKey] = set()
    for start in range(0, len(keys), 400):
        chunk = keys[start : start + 400]
        marks = ",".join("(?, ?)" for _ in chunk)
        # A join on VALUES uses the primary key; `(a, b) IN (VALUES ...)` would scan.
        rows = store.db.execute(
            f"SELECT t.record_type, t.record_id FROM (VALUES {marks}) AS k JOIN {table}"
            f" ON t.record_type = k.column1 AND t.record_id = k.column2{condition}",
            [*(part for key in chunk for part in key), *params],
        )
        found.update((t, i) for t, i in rows)
    return found
