"""`case_index` and `warning_index`: what the console lists and counts by, kept in step.

Updated in the transaction of every batch (and every office action) from
the record states it wrote, for the records it created or whose indexed
fields it edited (`reindexed`); `seq` is the change that last moved a row.
Only classifying fields are copied (status, org unit, category, assignees,
household count, priority, due date) plus when the office first received
the record and when it was last resolved; titles and texts stay sealed in
the records.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping

from schemas.changes import Change
from schemas.records import Agreement, Case, EarlyWarning
from schemas.state import RecordState
from server.storage import repeats
from server.storage.sqlite import SqliteStore
from sync.access import org_unit
from sync.clock import wall_of
from sync.merge import materialize, rank_key
from sync.store import RecordKey

RESOLVED = ("resolved", "closed")
# The fields each index copies; the rest of a record is never materialized here.
CASE_FIELDS = ("status", "location", "category", "mediators", "households", "priority", "due")
WARNING_FIELDS = ("status", "location", "category", "severity", "informant", "case")
_INDEXED = {"case": frozenset(CASE_FIELDS), "warning": frozenset(WARNING_FIELDS)}


def reindexed(changes: Iterable[Change], new: Collection[RecordKey]) -> set[RecordKey]:
    """The records whose index rows `changes` may change: new records, records of
    types indexed whole (agreements), and cases and warnings with an edit to a
    field their index copies. A note or a summary leaves the row as it was."""
    keys = set()
    for change in changes:
        key = (change.record_type, change.record_id)
        fields = _INDEXED.get(change.record_type)
        if (
            key in new
            or fields is None
            or not fields.isdisjoint(change.set)
            or any(getattr(op, "field", None) in fields for op in change.ops)
        ):
            keys.add(key)
    return keys


def index_records(
    store: SqliteStore,
    written: Mapping[RecordKey, tuple[RecordState, int]],
    now_ms: int,
) -> None:
    """Bring the index rows of the cases and warnings among `written` (state, seq) up to date."""
    cases, warnings = [], []
    for (record_type, record_id), (state, seq) in written.items():
        if record_type == "case":
            case = materialize(state, CASE_FIELDS)
            assert isinstance(case, Case)
            cases.append(
                (
                    record_id,
                    case.status,
                    org_unit(case.location),
                    case.category,
                    json.dumps(sorted(case.mediators)),
                    case.households,
                    case.priority,
                    case.due.isoformat() if case.due else None,
                    now_ms,
                    now_ms if case.status in RESOLVED else None,
                    seq,
                )
            )
        elif record_type == "warning":
            warning = materialize(state, WARNING_FIELDS)
            assert isinstance(warning, EarlyWarning)
            warnings.append(
                (
                    record_id,
                    warning.status,
                    org_unit(warning.location),
                    warning.category,
                    warning.severity,
                    warning.informant,
                    warning.case,
                    now_ms,
                    seq,
                )
            )
    db = store.db.conn
    # `received_ms` is when the office first heard of the record; `resolved_ms` when it
    # last became resolved (kept while it stays resolved or closed, cleared if reopened).
    db.executemany(
        "INSERT INTO case_index (case_id, status, org_unit, category, mediators, households,"
        " priority, due, received_ms, resolved_ms, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (case_id) DO UPDATE SET status = excluded.status,"
        " org_unit = excluded.org_unit, category = excluded.category,"
        " mediators = excluded.mediators, households = excluded.households,"
        " priority = excluded.priority, due = excluded.due, seq = excluded.seq,"
        " resolved_ms = CASE WHEN excluded.resolved_ms IS NULL THEN NULL"
        " ELSE coalesce(case_index.resolved_ms, excluded.resolved_ms) END",
        cases,
    )
    db.executemany(
        "INSERT INTO warning_index (warning_id, status, org_unit, category, severity, informant,"
        " case_id, received_ms, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (warning_id) DO UPDATE SET status = excluded.status,"
        " org_unit = excluded.org_unit, category = excluded.category,"
        " severity = excluded.severity, informant = excluded.informant,"
        " case_id = excluded.case_id, seq = excluded.seq",
        warnings,
    )
    _index_agreements(store, written, now_ms)


# -- agreements (migration 0010_stats): what the statistics count executed agreements by ---

EXECUTED = ("executed", "superseded")  # a superseded agreement was executed first


def _index_agreements(
    store: SqliteStore, written: Mapping[RecordKey, tuple[RecordState, int]], now_ms: int
) -> None:
    """Each written agreement's status, and when the office first saw it executed."""
    rows = []
    for (record_type, record_id), (state, seq) in written.items():
        if record_type == "agreement":
            agreement = materialize(state, ("status",))
            assert isinstance(agreement, Agreement)
            executed = now_ms if agreement.status in EXECUTED else None
            rows.append((record_id, agreement.status, executed, seq))
    store.db.conn.executemany(
        "INSERT INTO agreement_index (agreement_id, status, executed_ms, seq) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (agreement_id) DO UPDATE SET status = excluded.status, seq = excluded.seq,"
        " executed_ms = coalesce(agreement_index.executed_ms, excluded.executed_ms)",
        rows,
    )


def forget(store: SqliteStore, keys: list[RecordKey]) -> None:
    """Drop the index rows of erased records."""
    db = store.db.conn
    db.executemany(
        "DELETE FROM case_index WHERE case_id = ?", [(i,) for t, i in keys if t == "case"]
    )
    db.executemany(
        "DELETE FROM warning_index WHERE warning_id = ?", [(i,) for t, i in keys if t == "warning"]
    )
    db.executemany(
        "DELETE FROM agreement_index WHERE agreement_id = ?",
        [(i,) for t, i in keys if t == "agreement"],
    )


def index_stored(store: SqliteStore, states: Mapping[RecordKey, RecordState]) -> None:
    """Index rows for records stored before their index was kept (0006 and 0010 made
    the tables empty, to be filled as records were written again), dated as the office
    received them, not now: `received_ms` by the record's first logged change,
    `resolved_ms` and `executed_ms` by the change that brought the record to where it
    stands (`_arrival`)."""
    db = store.db.conn
    for key, state in states.items():
        first, seq = db.execute(
            "SELECT (SELECT change_id FROM changes WHERE record_type = ?1 AND record_id = ?2"
            " ORDER BY seq LIMIT 1),"
            " (SELECT max(seq) FROM changes WHERE record_type = ?1 AND record_id = ?2)",
            key,
        ).fetchone()
        status_change = _arrival(state, key[0]) or first
        received = _received_ms(db, {first, status_change})
        index_records(store, {key: (state, seq)}, received[status_change])
        record_type, record_id = key
        if record_type in ("case", "warning"):
            db.execute(
                f"UPDATE {record_type}_index SET received_ms = ? WHERE {record_type}_id = ?",
                [received[first], record_id],
            )
    cases = {i for t, i in states if t == "case"}
    people = {(kind, value) for _, kind, value in repeats.holdings(store.db, cases)}
    repeats.refresh_around(store.db, cases, people)


def _arrival(state: RecordState, record_type: str) -> str | None:
    """The change id of the status write that the live index would have dated: a case's
    first into resolved or closed since it was last reopened, an agreement's first into
    executed or superseded (the index keeps those times while the status stays there)."""
    writes = sorted(state.history.get("status", ()), key=rank_key)
    if record_type == "agreement":
        return next((w.change_id for w in writes if w.value in EXECUTED), None)
    since = None
    for write in writes:
        since = (since or write) if write.value in RESOLVED else None
    return since.change_id if since else None


def _received_ms(db: sqlite3.Connection, change_ids: set[str]) -> dict[str, int]:
    """When the office received each change: its signed batch's time; for a change the
    office made itself (no batch), its stamp's wall time, which the office's clock set."""
    rows = db.execute(
        "SELECT c.change_id, b.received_at_ms, coalesce(c.order_stamp, c.hlc) FROM changes c"
        " LEFT JOIN batches b ON b.device_id = c.device_id AND b.batch_id = c.batch_id"
        " WHERE c.change_id IN (SELECT value FROM json_each(?))",
        [json.dumps(sorted(change_ids))],
    )
    return {change_id: ms if ms is not None else wall_of(stamp) for change_id, ms, stamp in rows}
