"""A store that fails under a batch: 503 with a code, the batch absent, the server still serving.

Issue 8, point 2. The faults are real SQLite ones where SQLite can make them
(a full disk through `PRAGMA max_page_count`, a writer lock held by another
connection, a file that is not a database); an I/O error, which SQLite gives
only when the disk fails, is injected at the writer connection the store
exposes (`store.db.conn`), at the statement named.
"""

import hashlib
import sqlite3
from contextlib import closing

import msgspec
import pytest

from server.errors import storage_fault
from sync import errors

DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}
SQLITE_IOERR_WRITE = 778  # sqlite3.h: SQLITE_IOERR | (3 << 8)


def store_hash(store):
    """A hash of every table of the store but what each request itself bookkeeps.

    The request's nonce and its device's last-seen time are spent before the
    batch is opened (PROTOCOL.md section 10); everything else must not move.
    """
    digest = hashlib.sha256()
    tables = store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'nonces' ORDER BY name"
    ).fetchall()
    for (table,) in tables:
        cursor = store.db.execute(f"SELECT * FROM {table} ORDER BY 1")
        kept = [i for i, column in enumerate(cursor.description) if column[0] != "last_seen_ms"]
        digest.update(table.encode())
        for row in cursor:
            digest.update(repr([row[i] for i in kept]).encode())
    return digest.hexdigest()


def case_edits(phone, count, prefix):
    """`count` case creations big enough that storing them needs new pages."""
    return [
        phone.change(
            "case",
            f"k-{prefix}-{n}",
            {"title": f"Drains {n}", "summary": "积水 " * 200, "location": DAGUAN},
        )
        for n in range(count)
    ]


def stored_change_ids(store):
    return {row[0] for row in store.db.execute("SELECT change_id FROM changes")}


def assert_refused(answer, code, retry_after):
    assert answer.status_code == 503, answer.content
    assert msgspec.msgpack.decode(answer.content)["error"] == code
    assert answer.headers["retry-after"] == str(retry_after)


def assert_applied(answer, changes):
    assert answer.status_code == 200, answer.content
    results = msgspec.msgpack.decode(answer.content)["results"]
    assert [r["status"] for r in results] == ["applied"] * len(changes)


@pytest.fixture
def mediator(office):
    phone = office.enroll("mediator")
    # Something stored already, so "unchanged" is about more than an empty store.
    assert_applied(phone.push(case_edits(phone, 3, "old"), "b-old"), [0] * 3)
    return phone


def test_disk_full_during_a_batch_answers_503_and_stores_none_of_it(office, mediator):
    db = office.store.db
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (default_limit,) = db.execute("PRAGMA max_page_count").fetchone()
    before = store_hash(office.store)
    changes = case_edits(mediator, 40, "full")

    (spent,) = db.execute("SELECT count(*) FROM nonces").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: not one page more
    assert_refused(mediator.push(changes, "b-full"), "storage_unavailable", 30)
    # The request was authenticated (its nonce spent): the disk filled up under the batch.
    assert db.execute("SELECT count(*) FROM nonces").fetchone() == (spent + 1,)
    assert store_hash(office.store) == before
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    db.execute(f"PRAGMA max_page_count = {default_limit}")  # space freed
    assert_applied(mediator.push(changes, "b-full"), changes)  # the same batch, retried
    assert {c.change_id for c in changes} <= stored_change_ids(office.store)


class FailingConnection:
    """The store's writer connection, failing with a disk I/O error at one statement."""

    def __init__(self, conn, failing_statement):
        self._conn = conn
        self._failing = failing_statement
        self.failed = 0

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def _check(self, sql):
        if sql.lstrip().upper().startswith(self._failing) and not self.failed:
            self.failed += 1
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = SQLITE_IOERR_WRITE
            error.sqlite_errorname = "SQLITE_IOERR_WRITE"
            raise error

    def execute(self, sql, *args):
        self._check(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql, *args):
        self._check(sql)
        return self._conn.executemany(sql, *args)


# The change log is written first, the records next, the commit last: an error at
# any of them leaves the batch half written unless the whole transaction rolls back.
@pytest.mark.parametrize("statement", ["INSERT INTO RECORDS", "INSERT INTO QUARANTINE", "COMMIT"])
def test_io_error_during_a_batch_answers_503_and_stores_none_of_it(office, mediator, statement):
    before = store_hash(office.store)
    changes = case_edits(mediator, 20, "io")
    real = office.store.db.conn
    failing = FailingConnection(real, statement)
    office.store.db.conn = failing
    try:
        assert_refused(mediator.push(changes, "b-io"), "storage_unavailable", 30)
        assert failing.failed == 1, f"no {statement} ran: the fault was never injected"
        assert not real.in_transaction
        assert store_hash(office.store) == before
        # The server keeps serving: the same batch goes through on the same connection.
        assert_applied(mediator.push(changes, "b-io"), changes)
    finally:
        office.store.db.conn = real
    assert {c.change_id for c in changes} <= stored_change_ids(office.store)
    pulled, _ = mediator.pull_all()
    assert len(pulled) == 3 + len(changes)


def test_another_writer_holding_the_store_answers_503_busy_never_500(office, mediator, tmp_path):
    # A real lock: another process's connection (`lianxin keys rotate`, a backup) writing.
    office.store.db.execute("PRAGMA busy_timeout = 100")  # give up fast, not after 5 s
    other = sqlite3.connect(tmp_path / "lianxin.db", isolation_level=None)
    before = store_hash(office.store)
    changes = case_edits(mediator, 5, "busy")
    other.execute("BEGIN IMMEDIATE")
    try:
        for attempt in range(3):
            assert_refused(mediator.push(changes, f"b-busy-{attempt}"), "storage_busy", 1)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store_hash(office.store) == before
    assert_applied(mediator.push(changes, "b-busy-0"), changes)


def test_storage_errors_mean_busy_failing_or_refused():
    """Real SQLite errors, classified by their result code, never by their wording."""
    with closing(sqlite3.connect(":memory:")) as memory:
        with pytest.raises(sqlite3.Error) as no_table:
            memory.execute("SELECT * FROM no_such_table")
        memory.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        memory.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.Error) as duplicate:
            memory.execute("INSERT INTO t VALUES (1)")
    assert type(storage_fault(no_table.value)) is errors.Unavailable
    assert type(storage_fault(duplicate.value)) is errors.Unavailable
    assert isinstance(storage_fault(sqlite3.Error("no code at all")), errors.Unavailable)


def test_a_file_that_is_not_a_database_is_storage_unavailable(tmp_path):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 512)
    with closing(sqlite3.connect(damaged)) as db, pytest.raises(sqlite3.DatabaseError) as error:
        db.execute("SELECT * FROM sqlite_master")
    assert isinstance(storage_fault(error.value), errors.StorageUnavailable)
