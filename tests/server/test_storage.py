"""The SQLite store: migrations, atomic batches, idempotency, one serializer."""

import os
import sqlite3
import threading

import pytest
import sqlite_utils

from schemas import Change
from server.storage import migrations
from server.storage.migrations import MIGRATIONS
from sync.clock import pack
from sync.engine import apply_batch
from tests.conftest import WALL_MS, make_store


def change(n, record_id="k-1", device="dev-a", **fields):
    return Change(
        change_id=f"{device}-{n}",
        record_type="case",
        record_id=record_id,
        device_id=device,
        hlc=pack(WALL_MS, n),
        set=fields or {"title": f"title {n}"},
    )


def table_rows(store, table):
    return store.db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def test_migrations_run_once_and_are_recorded(tmp_path):
    first = make_store(tmp_path / "x.db")
    assert first.migrations_applied == [name for name, _ in MIGRATIONS]
    first.close()
    again = make_store(tmp_path / "x.db")
    assert again.migrations_applied == []
    names = [row[0] for row in again.db.execute("SELECT name FROM migrations")]
    assert names == [name for name, _ in MIGRATIONS]
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_sequence_numbers_strictly_increase_across_batches(store, server_clock):
    first = apply_batch(store, [change(1), change(2, "k-2")], server_clock)
    second = apply_batch(store, [change(3), change(4, "k-3")], server_clock)
    assert [r.seq for r in first + second] == [1, 2, 3, 4]
    assert [c.seq for c in store.changes_since(1, 10)] == [2, 3, 4]
    assert [c.change.change_id for c in store.changes_since(0, 2)] == ["dev-a-1", "dev-a-2"]


def test_retried_batch_gives_the_same_answers_and_writes_nothing_twice(store, server_clock):
    batch = [change(1), change(2, title="x"), change(3, status="closed")]
    first = apply_batch(store, batch, server_clock)
    counts = store.counts()
    again = apply_batch(store, batch, server_clock)
    assert [r.status for r in again] == ["duplicate"] * 3
    assert [(r.seq, r.reason) for r in again] == [(r.seq, r.reason) for r in first]
    assert store.counts() == counts


def test_a_change_repeated_inside_one_batch_is_applied_once(store, server_clock):
    results = apply_batch(store, [change(1), change(1)], server_clock)
    assert [r.status for r in results] == ["applied", "duplicate"]
    assert store.counts()["changes"] == 1


def test_a_failing_batch_leaves_nothing_behind_and_the_store_keeps_serving(store, server_clock):
    apply_batch(store, [change(1)], server_clock)
    before = {t: table_rows(store, t) for t in ("records", "changes", "quarantine", "conflicts")}
    # A real SQLite failure in the middle of the batch's writes.
    store.db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON changes WHEN NEW.change_id = 'dev-a-3'"
        " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    batch = [change(2, "k-2"), change(3, "k-3"), change(4, status="closed")]
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        apply_batch(store, batch, server_clock)
    assert {t: table_rows(store, t) for t in before} == before
    store.db.execute("DROP TRIGGER boom")
    assert [r.status for r in apply_batch(store, batch, server_clock)] == [
        "applied",
        "applied",
        "rejected",
    ]


def test_concurrent_writers_get_one_gapless_sequence(store, server_clock):
    def push(device):
        for n in range(20):
            batch = [change(10 * n + i, f"k-{device}-{n}-{i}", device) for i in range(5)]
            apply_batch(store, batch, server_clock)

    threads = [threading.Thread(target=push, args=(f"dev-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [c.seq for c in store.changes_since(0, 10_000)]
    assert seqs == list(range(1, 4 * 20 * 5 + 1))


def test_readers_see_committed_state_without_waiting_for_the_writer(store, server_clock):
    apply_batch(store, [change(1)], server_clock)
    seen = []

    def read():
        with store.snapshot() as conn:
            seen.append(conn.execute("SELECT count(*) FROM changes").fetchone()[0])

    with store.transaction():
        apply_batch(store, [change(2, "k-2")], server_clock)  # written, not yet committed
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), "the reader waited for the writer"
    assert seen == [1]
    read()
    assert seen == [1, 2]


def test_inside_the_writers_transaction_a_snapshot_sees_what_it_wrote(store, server_clock):
    apply_batch(store, [change(1)], server_clock)

    def count(conn):
        return conn.execute("SELECT count(*) FROM changes").fetchone()[0]

    with store.transaction():
        apply_batch(store, [change(2, "k-2")], server_clock)
        with store.snapshot() as conn:
            assert count(conn) == 2  # the batch reads back what it wrote
    with store.snapshot() as outer:
        assert count(outer) == 2  # the view begins at its first read
        apply_batch(store, [change(3, "k-3")], server_clock)
        with store.snapshot() as inner:  # joins the outer view
            assert count(inner) == 2
    with store.snapshot() as conn:
        assert count(conn) == 3


def test_read_connections_of_threads_that_ended_are_closed(store, server_clock):
    apply_batch(store, [change(1)], server_clock)

    def read():
        with store.snapshot() as conn:
            conn.execute("SELECT count(*) FROM changes").fetchone()

    def open_descriptors():
        return len(os.listdir("/proc/self/fd"))

    read()
    before = open_descriptors()
    for _ in range(30):  # worker pools retire idle threads and start new ones
        reader = threading.Thread(target=read)
        reader.start()
        reader.join()
    assert open_descriptors() - before <= 4


def test_a_migration_killed_half_way_leaves_nothing_and_runs_again_whole(tmp_path, monkeypatch):
    # The store's connection commits each statement alone: a migration adding a column
    # was left half done by a kill, and every later start failed on the column it had.
    db = sqlite_utils.Database(sqlite3.connect(tmp_path / "old.db", isolation_level=None))
    *earlier, (name, step) = migrations.MIGRATIONS
    monkeypatch.setattr(migrations, "MIGRATIONS", earlier)
    migrations.migrate(db)
    schema = db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()

    def killed(db):
        step(db)
        raise KeyboardInterrupt  # the process dies before the migration is recorded

    monkeypatch.setattr(migrations, "MIGRATIONS", [*earlier, (name, killed)])
    with pytest.raises(KeyboardInterrupt):
        migrations.migrate(db)
    assert db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    monkeypatch.setattr(migrations, "MIGRATIONS", [*earlier, (name, step)])
    assert migrations.migrate(db) == [name]
