"""Read one pull page: what a user may see, after a cursor, in log order.

A user sees each change of each record in `access` at *position*
`max(change seq, since_seq)`: changes made while the record is in view come
at their own seq, and when a record enters the view at `since_seq` its
earlier history comes at that position. A page is the next `limit` changes
in (position, seq) order after the cursor, plus the evictions up to where the
page ends (PROTOCOL.md section 12).

One query over `max(...)` cannot use an index: it read every change of every
record the user may see, on every pull. So a page is read in ordered parts,
each along an index, and merged:

- *recent*: changes logged since the cursor to records already in view
  (`seq >= since_seq`, position = seq);
- *entering*, when the cursor stopped inside the history of the records
  that entered at `position` (a supervisor added to an office that already
  holds 100,000 cases gets them all at one position): the rest of it;
- *entered later*: the history of records that entered after the cursor
  (`seq < since_seq`, position = since_seq), bounded by where the other
  parts fill the page, so a page never reads grants beyond it.

The first two are a stretch of the log filtered by `access`. They are read by
walking the log and probing `access` by primary key, which stops as soon as
the page is full; or, when the user's records are few beside a long stretch
of log (a mediator back after weeks offline, one case assigned), through
`changes (record_type, record_id, seq)` record by record, then sorted. Every
part picks positions and sizes first (`length()` reads no blob); the page
ends at `limit` changes or once they pass `max_bytes`, and only then are the
change bodies it holds read.
"""

from __future__ import annotations

import heapq
import sqlite3
from typing import NamedTuple

from schemas.wire import EvictionReason
from server.settings import PAGE_BYTES

# (position, seq, record type, record id, change id, sealed change, order stamp)
Row = tuple[int, int, str, str, str, bytes, int | None]
# (position, seq, bytes of the sealed change)
Key = tuple[int, int, int]

# Log rows walked before asking whether reading record by record is cheaper.
MIN_LOG_WINDOW = 4096
# Walking the log costs about one primary-key probe per logged change; reading by
# record costs an index seek per record, plus sorting what it finds. Read by record
# when there are fewer records than this share of the log still to walk.
RECORDS_PER_LOGGED_CHANGE = 1 / 8

# Each stretch of log is read one of two ways, for the changes logged from one seq
# to another to the records in view since before them (recent) or entering at
# one position (entering); both in seq order.
_WALK = {
    "recent": "SELECT c.seq, c.seq, length(c.raw) FROM changes c CROSS JOIN access a"
    " WHERE c.seq BETWEEN ? AND ? AND a.user_id = ? AND a.record_type = c.record_type"
    " AND a.record_id = c.record_id AND a.since_seq <= c.seq ORDER BY c.seq LIMIT ?",
    "entering": "SELECT a.since_seq, c.seq, length(c.raw) FROM changes c CROSS JOIN access a"
    " WHERE c.seq BETWEEN ? AND ? AND a.user_id = ?"
    " AND a.record_type = c.record_type AND a.record_id = c.record_id AND a.since_seq = ?"
    " ORDER BY c.seq LIMIT ?",
}
_BY_RECORD = {
    "recent": "SELECT c.seq, c.seq, length(c.raw) FROM access a CROSS JOIN changes c"
    " ON c.record_type = a.record_type AND c.record_id = a.record_id"
    " AND c.seq >= a.since_seq AND c.seq BETWEEN ? AND ?"
    " WHERE a.user_id = ? ORDER BY c.seq LIMIT ?",
    "entering": "SELECT a.since_seq, c.seq, length(c.raw) FROM access a CROSS JOIN changes c"
    " ON c.record_type = a.record_type AND c.record_id = a.record_id AND c.seq BETWEEN ? AND ?"
    " WHERE a.user_id = ? AND a.since_seq = ? ORDER BY c.seq LIMIT ?",
}
_RECORDS = {
    "recent": "SELECT count(*) FROM (SELECT 1 FROM access WHERE user_id = ? LIMIT ?)",
    "entering": "SELECT count(*) FROM (SELECT 1 FROM access WHERE user_id = ? AND since_seq = ?"
    " LIMIT ?)",
}
_ENTERED_LATER = (
    "SELECT a.since_seq, c.seq, length(c.raw) FROM access a CROSS JOIN changes c"
    " ON c.record_type = a.record_type AND c.record_id = a.record_id AND c.seq < a.since_seq"
    " WHERE a.user_id = ? AND a.since_seq BETWEEN ? AND ? ORDER BY a.since_seq, c.seq LIMIT ?"
)
_EVICTIONS = (
    "SELECT seq, record_type, record_id, reason FROM evictions"
    " WHERE user_id = ? AND seq > ? AND seq <= ? ORDER BY seq"
)
_CHUNK = 500  # seqs per IN list


class Page(NamedTuple):
    """One pull page as rows: changes (see `Row`), evictions, and where it ends."""

    rows: list[Row]
    evictions: list[tuple[int, str, str, EvictionReason]]  # the `evictions` table's rows
    has_more: bool
    end: int
    end_seq: int


def read_page(
    conn: sqlite3.Connection,
    user_id: str,
    position: int,
    seq: int,
    limit: int,
    last: int,
    *,
    max_bytes: int = PAGE_BYTES,
    log_window: int | None = None,
) -> Page:
    """Read the page after cursor `(position, seq)` for `user_id`; `last` is the log's last seq.

    Call inside a transaction, so the page and `last` agree. `log_window`
    (log rows walked before considering the read by record) is for tests.
    """
    want = limit + 1
    window = log_window or max(MIN_LOG_WINDOW, 4 * want)
    inside = seq < position  # the cursor stopped inside the history entering at `position`
    # The next change at its own position: at `position` itself only if the cursor
    # stopped before it, inside that history.
    start = position if inside else position + 1
    parts = [_stretch(conn, "recent", user_id, start, last, want, window)]
    if inside:
        parts.append(
            _stretch(conn, "entering", user_id, seq + 1, position - 1, want, window, position)
        )
    # A full part ends the page where it ends: nothing entering later can be on it.
    bound = min((part[-1][0] for part in parts if len(part) == want), default=last)
    if position < bound:
        parts.append(conn.execute(_ENTERED_LATER, [user_id, position + 1, bound, want]).fetchall())
    found = list(heapq.merge(*parts, key=lambda key: (key[0], key[1])))[:want]
    keys = found[: min(limit, _fitting(found, max_bytes))]
    has_more = len(keys) < len(found)
    end, end_seq = (keys[-1][0], keys[-1][1]) if has_more else (last, last)
    evictions = conn.execute(_EVICTIONS, [user_id, position, end]).fetchall()
    return Page(_with_bodies(conn, keys), evictions, has_more, end, end_seq)


def _fitting(keys: list[Key], max_bytes: int) -> int:
    """How many of `keys`, from the first, fit in `max_bytes`; at least one."""
    total = 0
    for count, (_, _, size) in enumerate(keys):
        total += size
        if total > max_bytes:
            return max(count, 1)
    return len(keys)


def _stretch(
    conn: sqlite3.Connection,
    part: str,
    user_id: str,
    first: int,
    final: int,
    want: int,
    window: int,
    entering_at: int | None = None,
) -> list[Key]:
    """Up to `want` keys of `part` logged from seq `first` to `final`.

    `part` is "recent", or "entering" with `entering_at`, the position whose
    entering history this is.
    """
    group = [] if entering_at is None else [entering_at]
    stop = min(final, first + window - 1)
    rows: list[Key] = []
    if first <= stop:
        rows = conn.execute(_WALK[part], [first, stop, user_id, *group, want]).fetchall()
    if len(rows) == want or stop >= final:
        return rows
    # Few of the changes walked so far are in view: walk on, or read by record?
    enough = int((final - stop) * RECORDS_PER_LOGGED_CHANGE)
    records = conn.execute(_RECORDS[part], [user_id, *group, enough]).fetchone()[0]
    rest = [stop + 1, final, user_id, *group, want - len(rows)]
    if records < enough:
        return rows + conn.execute(_BY_RECORD[part], rest).fetchall()
    return rows + conn.execute(_WALK[part], rest).fetchall()


def _with_bodies(conn: sqlite3.Connection, keys: list[Key]) -> list[Row]:
    """The rows for `keys`, with each change's bytes and order stamp."""
    bodies: dict[int, tuple[str, str, str, bytes, int | None]] = {}
    seqs = [seq for _, seq, _ in keys]
    for start in range(0, len(seqs), _CHUNK):
        chunk = seqs[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found = conn.execute(
            "SELECT seq, record_type, record_id, change_id, raw, order_stamp FROM changes"
            f" WHERE seq IN ({marks})",
            chunk,
        )
        bodies.update((seq, body) for seq, *body in found)
    return [(position, seq, *bodies[seq]) for position, seq, _ in keys]
