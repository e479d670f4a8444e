"""`case_index.repeat`: does a case share a person with a case the office received earlier?

A person is a party record, or a phone or ID number digest of one in the
blind index (`server.storage.people`; a name alone is only a possible match
and does not count). A case is a repeat petition when another case holding
one of its people was received before it (by `received_ms`, then case id).

The flag is kept in step in the transaction of every batch that can move
it, so the statistics count repeats from `case_index` alone instead of
ranking every person in the office on each view. What moves it: a case's
party links, a party's digests (both written by the batch) and an erasure.
The cases to work out again are then every case that held or now holds a
person whose holders changed: an earlier case gaining a person makes later
ones repeats, and losing one may make them first again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

import sqlite_utils

from schemas.changes import Change, Delete, Restore

# What makes a person; a name alone is only a possible match.
STRONG = ("phone", "id_number")

Person = tuple[str, str]  # ("party", record id) or (kind, digest)
Holding = tuple[str, str, str]  # (case id, *person)

# Every case's parties and their strong digests, for the cases (or people) in `?` (JSON).
# CROSS JOIN fixes the order: from the few ids asked about through the indexes, never a
# scan of every party's digests.
BY_CASE = f"""
SELECT l.case_id, 'party', l.record_id FROM json_each(?) w
CROSS JOIN links l ON l.case_id = w.value AND l.record_type = 'party'
UNION ALL
SELECT l.case_id, p.kind, p.digest FROM json_each(?) w
CROSS JOIN links l ON l.case_id = w.value AND l.record_type = 'party'
CROSS JOIN people_index p ON p.record_type = 'party' AND p.record_id = l.record_id
WHERE p.kind IN {STRONG}
"""
BY_PERSON = """
SELECT l.case_id, 'party', l.record_id FROM json_each(?) w
CROSS JOIN links l ON l.record_type = 'party' AND l.record_id = w.value
UNION ALL
SELECT l.case_id, p.kind, p.digest FROM json_each(?) w
CROSS JOIN people_index p ON p.kind = w.value ->> 0 AND p.digest = w.value ->> 1
  AND p.record_type = 'party'
CROSS JOIN links l ON l.record_type = 'party' AND l.record_id = p.record_id
"""


def holdings(db: sqlite_utils.Database, case_ids: Iterable[str]) -> set[Holding]:
    """Who each of `case_ids` holds: (case, kind, value) for each of its people."""
    ids = json.dumps(sorted(set(case_ids)))
    return set(db.execute(BY_CASE, [ids, ids]).fetchall())


def holders(db: sqlite_utils.Database, people: Iterable[Person]) -> set[Holding]:
    """Every case holding one of `people`, as (case, kind, value)."""
    people = set(people)
    parties = json.dumps(sorted(value for kind, value in people if kind == "party"))
    digests = json.dumps(sorted([kind, value] for kind, value in people if kind != "party"))
    return set(db.execute(BY_PERSON, [parties, digests]).fetchall())


def refresh(db: sqlite_utils.Database, case_ids: Iterable[str] | None) -> None:
    """Work out the flag of `case_ids` (of every case, if None) from what the store holds."""
    if case_ids is None:
        case_ids = [case_id for (case_id,) in db.execute("SELECT case_id FROM case_index")]
    ids = set(case_ids)
    if not ids:
        return
    mine = holdings(db, ids)
    shared = holders(db, {(kind, value) for _, kind, value in mine})
    involved = json.dumps(sorted(ids | {case for case, _, _ in shared}))
    received = dict(
        db.execute(
            "SELECT case_id, received_ms FROM case_index"
            " WHERE case_id IN (SELECT value FROM json_each(?))",
            [involved],
        ).fetchall()
    )
    first: dict[Person, tuple[int, str]] = {}
    for case, kind, value in shared:
        if case in received:
            rank = (received[case], case)
            first[(kind, value)] = min(first.get((kind, value), rank), rank)
    flags = dict.fromkeys(ids, 0)
    for case, kind, value in mine:
        if case in received and first[(kind, value)] < (received[case], case):
            flags[case] = 1
    db.conn.executemany(
        "UPDATE case_index SET repeat = ? WHERE case_id = ? AND repeat != ?",
        [(flag, case, flag) for case, flag in flags.items()],
    )


class Watched(NamedTuple):
    """The cases a batch may move the flag of, and who they held before it."""

    case_ids: set[str]
    before: set[Holding]


def watch(db: sqlite_utils.Database, changes: Iterable[Change]) -> Watched:
    """Before a batch's writes: the cases whose people `changes` could change (those
    relinking parties, and those linking a changed party), and who they hold now."""
    cases, parties = set(), set()
    for change in changes:
        if change.record_type == "party":
            parties.add(change.record_id)
        elif change.record_type == "case" and _relinks(change):
            cases.add(change.record_id)
    if parties:
        cases |= {case for case, _, _ in holders(db, {("party", p) for p in parties})}
    return Watched(cases, holdings(db, cases))


def _relinks(change: Change) -> bool:
    return "parties" in change.set or any(
        isinstance(op, Delete | Restore) or getattr(op, "field", None) == "parties"
        for op in change.ops
    )


def update(db: sqlite_utils.Database, watched: Watched) -> None:
    """After the batch's writes (links, blind index, `case_index`): the flags it moved."""
    changed = watched.before ^ holdings(db, watched.case_ids)
    if changed:
        refresh_around(db, {case for case, _, _ in changed}, {(k, v) for _, k, v in changed})


def refresh_around(db: sqlite_utils.Database, case_ids: set[str], people: set[Person]) -> None:
    """Work the flag out again for `case_ids` and every case holding one of `people`."""
    refresh(db, case_ids | {case for case, _, _ in holders(db, people)})
