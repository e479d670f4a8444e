"""Pull pages read along indexes are exactly the pages of the one plain query they replace,
cut at the same count and the same bytes."""

import random

import pytest

from server.settings import PAGE_BYTES
from server.storage.pull import Page, read_page
from tests.conftest import make_store

# The definition (PROTOCOL.md section 12), as one query that reads everything the user
# may see: each change at position max(seq, since_seq), in (position, seq) order.
REFERENCE = (
    "SELECT max(c.seq, a.since_seq) AS p, c.seq, c.record_type, c.record_id, c.change_id, c.raw,"
    " c.order_stamp FROM access a"
    " JOIN changes c ON c.record_type = a.record_type AND c.record_id = a.record_id"
    " WHERE a.user_id = ? AND (max(c.seq, a.since_seq) > ?"
    " OR (max(c.seq, a.since_seq) = ? AND c.seq > ?))"
    " ORDER BY p, c.seq LIMIT ?"
)


def reference_page(conn, user_id, position, seq, limit, last, max_bytes=PAGE_BYTES) -> Page:
    found = conn.execute(REFERENCE, [user_id, position, position, seq, limit + 1]).fetchall()
    rows = []
    for row in found[:limit]:  # whole changes while they fit; at least one
        if rows and sum(len(r[5]) for r in [*rows, row]) > max_bytes:
            break
        rows.append(row)
    has_more = len(rows) < len(found)
    end, end_seq = (rows[-1][0], rows[-1][1]) if has_more else (last, last)
    evictions = conn.execute(
        "SELECT seq, record_type, record_id, reason FROM evictions"
        " WHERE user_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
        [user_id, position, end],
    ).fetchall()
    return Page(rows, evictions, has_more, end, end_seq)


def random_log(conn, rng: random.Random) -> int:
    """A log of changes to records, users granted records at various times; the last seq."""
    records = [("case", f"k{n}") for n in range(rng.randint(1, 60))]
    last = rng.randint(0, 400)
    conn.executemany(
        "INSERT INTO changes (seq, change_id, record_type, record_id, device_id, hlc, status,"
        " result, raw, order_stamp) VALUES (?, ?, ?, ?, 'dev', ?, 'applied', x'', ?, ?)",
        [
            (s, f"c{s}", *rng.choice(records), s, raw(s, rng), rng.choice([None, s * 7]))
            for s in range(1, last + 1)
        ],
    )
    # A few grant times shared by many records (a supervisor added late), others spread.
    shared = [rng.randint(0, last) for _ in range(3)]
    for user in ("sparse", "dense", "late"):
        share = {"sparse": 0.1, "dense": 0.9, "late": 0.6}[user]
        for record_type, record_id in records:
            if rng.random() < share:
                since = rng.choice(shared) if user == "late" else rng.randint(0, last)
                conn.execute(
                    "INSERT INTO access (user_id, record_type, record_id, since_seq)"
                    " VALUES (?, ?, ?, ?)",
                    [user, record_type, record_id, since],
                )
        for _ in range(rng.randint(0, 5)):
            conn.execute(
                "INSERT OR IGNORE INTO evictions (seq, user_id, record_type, record_id, reason)"
                " VALUES (?, ?, 'case', ?, 'access_removed')",
                [rng.randint(1, max(last, 1)), user, rng.choice(records)[1]],
            )
    return last


def raw(seq, rng):
    """A change's stored bytes, of one of several sizes."""
    return f"raw{seq}".encode().ljust(rng.choice([4, 100, 3000]), b".")


@pytest.mark.parametrize("seed", range(40))
def test_every_page_equals_the_reference_query(tmp_path, seed):
    rng = random.Random(seed)
    store = make_store(tmp_path / "store.db")
    conn = store.db.conn
    last = random_log(conn, rng)
    for user in ("sparse", "dense", "late", "nobody"):
        # Walk the whole log page by page as a device would, with a window small enough
        # to exercise both ways of reading recent changes.
        position = seq = 0
        for _ in range(1000):
            limit = rng.choice([1, 2, 3, 7, 50, 1000])
            window = rng.choice([1, 2, 5, 16, None])
            size = rng.choice([1, 5000, 20_000, PAGE_BYTES])
            expected = reference_page(conn, user, position, seq, limit, last, size)
            got = read_page(
                conn, user, position, seq, limit, last, max_bytes=size, log_window=window
            )
            assert got == expected, (user, position, seq, limit, window, size)
            position, seq = got.end, got.end_seq
            if not got.has_more:
                break
        # And from cursors in the middle of a record's entering history.
        for _ in range(20):
            position = rng.randint(0, last)
            seq = rng.randint(0, position)
            limit = rng.choice([1, 4, 30])
            expected = reference_page(conn, user, position, seq, limit, last)
            got = read_page(conn, user, position, seq, limit, last, log_window=3)
            assert got == expected, (user, position, seq, limit)
    store.close()
