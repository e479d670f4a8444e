"""Keep the `access`, `links` and `evictions` tables in step with applied changes.

Runs inside the push transaction, after the engine: every record a batch
touched (and every record a touched case links or linked) gets its readers
recomputed by `sync.access.readers`; new readers are granted from this
sequence on (a pull then sends them the record's whole history), and lost
readers get an eviction. Cases go first; a party, agreement or warning then
takes, besides its own readers, those of the cases linking it, from their
`access` rows.

Each step reads what it needs for the whole batch in one query per table
(joined on a `VALUES` list of keys), so a batch costs a handful of queries
rather than a few per record.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from schemas.state import RecordState
from server.storage.sqlite import SqliteStore
from sync.access import LINK_FIELDS, Scope, readers, scope, within
from sync.store import RecordKey

# Keys per VALUES list: two bound parameters each, well under SQLite's limit.
_CHUNK = 400
# Only these types are ever linked by a case, so only they can have linking cases.
LINKED_TYPES = frozenset(LINK_FIELDS.values())


def update_access(
    store: SqliteStore,
    touched: dict[RecordKey, int],
    creator: str | None,
    states: Mapping[RecordKey, RecordState] | None = None,
) -> list[RecordKey]:
    """Recompute readers after a batch; `touched` maps each record to its last seq.
    Returns the records whose readers it worked out: `touched` and what their cases
    link or linked.

    `states` are record states the caller already holds (those the batch
    wrote); any other state needed is read from the store.
    """
    if not touched:
        return []
    db = store.db
    if creator is not None:
        db.conn.executemany(
            "UPDATE records SET created_by = ? WHERE record_type = ? AND record_id = ?"
            " AND created_by IS NULL",
            [(creator, t, i) for t, i in touched],
        )
    known = states or {}
    fresh = {key: known[key] for key in touched if key in known}
    fresh.update(store.states(key for key in touched if key not in fresh))
    scopes: dict[RecordKey, Scope] = {key: scope(state) for key, state in fresh.items()}
    due = dict(touched)
    cases = [("case", case_id) for record_type, case_id in touched if record_type == "case"]
    old_links: dict[str, set[RecordKey]] = defaultdict(set)
    for case_id, record_type, record_id in _rows(
        store,
        "SELECT k.column2, t.record_type, t.record_id FROM {keys}"
        " JOIN links t ON t.case_id = k.column2 AND k.column1 = 'case'",
        cases,
    ):
        old_links[case_id].add((record_type, record_id))
    dropped, added = [], []
    for key in cases:
        case_id = key[1]
        old, new = old_links.get(case_id, set()), scopes[key].links
        dropped += [(case_id, t, i) for t, i in old - new]
        added += [(case_id, t, i) for t, i in new - old]
        for link in old | new:
            due.setdefault(link, touched[key])
    db.conn.executemany(
        "DELETE FROM links WHERE case_id = ? AND record_type = ? AND record_id = ?", dropped
    )
    db.conn.executemany(
        "INSERT INTO links (case_id, record_type, record_id) VALUES (?, ?, ?)", added
    )

    keys = list(due)
    unread = [key for key in keys if key not in scopes]
    scopes.update((key, scope(state)) for key, state in store.states(unread).items())
    creators: dict[RecordKey, str | None] = {}
    org_units: dict[RecordKey, str | None] = {}
    current: dict[RecordKey, dict[str, int]] = defaultdict(dict)  # reader: since_seq
    for record_type, record_id, created_by, org_unit, user_id, since in _rows(
        store,
        "SELECT t.record_type, t.record_id, t.created_by, t.org_unit, a.user_id, a.since_seq"
        " FROM {keys}"
        " JOIN records t ON t.record_type = k.column1 AND t.record_id = k.column2"
        " LEFT JOIN access a ON a.record_type = t.record_type AND a.record_id = t.record_id",
        keys,
    ):
        creators[(record_type, record_id)] = created_by
        org_units[(record_type, record_id)] = org_unit
        if user_id is not None:
            current[(record_type, record_id)][user_id] = since
    supervisors = [
        (user_id, json.loads(units))
        for user_id, units in db.execute(
            "SELECT user_id, org_units FROM users WHERE role = 'supervisor'"
        )
    ]
    mediators = mediators_among(store, (user for s in scopes.values() for user in s.named_users))

    # The supervisors whose org units hold any of `units`: what `readers` filters the
    # list down to, worked out once per set of units rather than once per record.
    @functools.cache
    def seeing(units: frozenset[str]) -> list[tuple[str, list[str]]]:
        return [pair for pair in supervisors if any(within(unit, pair[1]) for unit in units)]

    def regrant(
        due_keys: list[RecordKey],
        via_cases: Mapping[RecordKey, set[str]],
        unit_via_case: Mapping[RecordKey, str],
    ) -> None:
        moved, granted, dropped, evicted = [], [], [], []
        for key in due_keys:
            own = scopes.get(key)
            if own is None:
                continue  # linked, but not (yet) a record
            record_type, record_id = key
            units = frozenset({own.org_unit} if own.org_unit else ())
            now = readers(creators.get(key), own, (), seeing(units), mediators=mediators)
            now |= via_cases.get(key, set())
            org_unit = own.org_unit or unit_via_case.get(key)
            if org_unit != org_units.get(key):
                moved.append((org_unit, record_type, record_id))
            before, seq = current.get(key, {}), due[key]
            granted += [(user, record_type, record_id, seq) for user in now - before.keys()]
            gone = before.keys() - now
            dropped += [(user, record_type, record_id) for user in gone]
            # A row granted at this very position (by an earlier chunk of the same
            # catch-up, or a move before the log got here) was never served: taking it
            # back needs no eviction. Unless this user's own push takes it back: their
            # phone shows the record from the change it made, until an eviction.
            evicted += [
                (seq, user, record_type, record_id, before[user])
                for user in gone
                if before[user] != seq or user == creator
            ]
        db.conn.executemany(
            "UPDATE records SET org_unit = ? WHERE record_type = ? AND record_id = ?", moved
        )
        # An eviction at this very position was never served either (a supervisor moved
        # away and back before the next logged change): granted again, it must not be,
        # and the phones hold the record since they held it before.
        unserved: dict[tuple[str, str, str, int], int | None] = {}
        if granted:  # only this batch's positions, or the next one, can hold such
            for user, record_type, record_id, seq, since in db.execute(
                "SELECT user_id, record_type, record_id, seq, held_since FROM evictions"
                " WHERE seq >= ?",
                [min(seq for *_, seq in granted)],
            ):
                unserved[(user, record_type, record_id, seq)] = since
        db.conn.executemany(
            "DELETE FROM evictions WHERE user_id = ? AND record_type = ? AND record_id = ?"
            " AND seq = ?",
            [row for row in granted if row in unserved],
        )
        db.conn.executemany(
            "INSERT INTO access (user_id, record_type, record_id, since_seq) VALUES (?, ?, ?, ?)",
            [(*row[:3], row[3] if unserved.get(row) is None else unserved[row]) for row in granted],
        )
        db.conn.executemany(
            "DELETE FROM access WHERE user_id = ? AND record_type = ? AND record_id = ?", dropped
        )
        db.conn.executemany(
            "INSERT OR IGNORE INTO evictions"
            " (seq, user_id, record_type, record_id, held_since, reason)"
            " VALUES (?, ?, ?, ?, ?, 'access_removed')",
            evicted,
        )

    # Cases first: a record they link is seen by whoever sees a case linking it, so once
    # the cases' own rows are right, a linked record takes its readers and its org unit
    # from them in SQL. (Reading every linking case's state instead cost a batch that
    # touched a party of many cases the decoding of all those cases.)
    regrant([key for key in keys if key[0] not in LINKED_TYPES], {}, {})
    linked = [key for key in keys if key[0] in LINKED_TYPES and key in scopes]
    # A case whose erasure stopped after destroying its key keeps its rows until the
    # erasure runs again; like a case that no longer opens, it lends nothing meanwhile.
    linking = {
        ("case", case_id)
        for (case_id,) in _rows(
            store,
            "SELECT DISTINCT l.case_id FROM {keys}"
            " JOIN links l ON l.record_type = k.column1 AND l.record_id = k.column2",
            linked,
        )
    }
    erased = json.dumps(sorted(case_id for _, case_id in store.erased(linking)))
    via_cases: dict[RecordKey, set[str]] = defaultdict(set)
    # CROSS JOIN keeps this order: left to itself, SQLite walked every case's access rows.
    # And the index named: with no statistics, it built a temporary index over all of
    # `access` for each chunk instead (a supervisor's move over a city took minutes).
    for record_type, record_id, user_id in _rows(
        store,
        "SELECT DISTINCT l.record_type, l.record_id, a.user_id FROM {keys}"
        " CROSS JOIN links l ON l.record_type = k.column1 AND l.record_id = k.column2"
        " CROSS JOIN access a INDEXED BY access_record"
        " ON a.record_type = 'case' AND a.record_id = l.case_id"
        " WHERE l.case_id NOT IN (SELECT value FROM json_each(?))",
        linked,
        erased,
    ):
        via_cases[(record_type, record_id)].add(user_id)
    unit_via_case = {
        (record_type, record_id): unit
        for record_type, record_id, unit in _rows(
            store,
            "SELECT k.column1, k.column2, (SELECT c.org_unit FROM links l"
            " JOIN records c ON c.record_type = 'case' AND c.record_id = l.case_id"
            " WHERE l.record_type = k.column1 AND l.record_id = k.column2"
            " AND c.org_unit IS NOT NULL AND l.case_id NOT IN (SELECT value FROM json_each(g.ids))"
            " ORDER BY l.case_id LIMIT 1) FROM {keys}, (SELECT ? AS ids) AS g",
            [key for key in linked if scopes[key].org_unit is None],
            erased,
        )
        if unit is not None
    }
    regrant(linked, via_cases, unit_via_case)
    return keys


def mediators_among(
    store: SqliteStore, user_ids: Iterable[str], *, at_the_office: bool = False
) -> set[str]:
    """Which of `user_ids` are users of this office whose role is mediator (and, if
    `at_the_office`, who are not disabled: cases are assigned to those alone)."""
    ids = sorted(set(user_ids))
    if not ids:
        return set()
    rows = store.db.execute(
        "SELECT user_id FROM users WHERE role = 'mediator'"
        " AND user_id IN (SELECT value FROM json_each(?))"
        " AND (? = 0 OR disabled_at_ms IS NULL)",
        [json.dumps(ids), at_the_office],
    )
    return {user_id for (user_id,) in rows}


def presence(
    store: SqliteStore, user_id: str, keys: list[RecordKey]
) -> tuple[set[RecordKey], set[RecordKey]]:
    """Which of `keys` are records already in the store, and which of those `user_id` may see."""
    present: set[RecordKey] = set()
    visible: set[RecordKey] = set()
    for record_type, record_id, readable in _rows(
        store,
        "SELECT t.record_type, t.record_id, a.user_id IS NOT NULL FROM {keys}"
        " JOIN records t ON t.record_type = k.column1 AND t.record_id = k.column2"
        " LEFT JOIN access a ON a.user_id = ? AND a.record_type = t.record_type"
        " AND a.record_id = t.record_id",
        keys,
        user_id,
    ):
        present.add((record_type, record_id))
        if readable:
            visible.add((record_type, record_id))
    return present, visible


def _rows(
    store: SqliteStore, sql: str, keys: Iterable[RecordKey], *params: str
) -> Iterator[tuple[Any, ...]]:
    """Run `sql`, whose `{keys}` is a `VALUES` list `k` of (record_type, record_id), per chunk.

    `params` are bound after the keys.
    """
    keys = list(keys)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ",".join("(?, ?)" for _ in chunk)
        # A join on VALUES uses the table's index; `(a, b) IN (VALUES ...)` would scan.
        yield from store.db.execute(
            sql.format(keys=f"(VALUES {marks}) AS k"),
            [*(part for key in chunk for part in key), *params],
        )
