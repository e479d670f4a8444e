"""Work a migration leaves for the next start (`server/storage/due.py`)."""

import sqlite3
import time

from schemas import Add
from server import erasure
from server.service import SyncService
from server.settings import Settings
from server.storage.migrations import migrate
from sync.clock import Clock
from tests.conftest import make_store, office_keys
from tests.server.test_authorization import a_case_naming


def test_a_case_erased_after_it_was_listed_does_not_stop_the_next_start(office):
    informant = office.enroll("informant", name="informant")
    mediator = office.enroll("mediator", name="med")
    mediator.push(a_case_naming(mediator, mediator.enrollment.user_id))
    service = office.http.app.state.service
    supervisor = office.directory.add_user("sup", "supervisor", ["Hangzhou"], office.wall.ms)
    naming = Add(field="mediators", value=informant.enrollment.user_id)
    service.act(supervisor, [mediator.change("case", "k-1", ops=[naming])])
    office.store.db.execute("DELETE FROM migrations WHERE name >= '0014'")
    office.store.db.execute("DROP TABLE due")
    migrate(office.store.db)
    listed = office.store.db.execute("SELECT work, record_id FROM due ORDER BY 1").fetchall()
    assert listed == [("people", "p-1"), ("readers", "k-1")]
    # `lianxin case erase k-1` (its store opening ran the migrations) before the next start.
    erasure.erase_case(office.store, "k-1", "court order", "operator:wang", office.wall.ms)

    SyncService(service.settings, office.store, office.keys, service.clock, office.wall)
    assert office.store.db.execute("SELECT count(*) FROM due").fetchone() == (0,)


def test_a_start_with_nothing_due_does_not_wait_for_another_writer(tmp_path):
    keys = office_keys()
    store = make_store(tmp_path / "lianxin.db", keys)
    other = sqlite3.connect(tmp_path / "lianxin.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a `lianxin` command beside the server, mid-write
    try:
        started = time.monotonic()
        SyncService(Settings(data_dir=tmp_path), store, keys, Clock(), lambda: 0)
        assert time.monotonic() - started < 2  # the writer gate would wait 5 s, then fail
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()
