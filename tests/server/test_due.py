"""Work a migration leaves for the next start (`server/storage/due.py`)."""

import functools
import sqlite3
import time

import msgspec
import pytest

from schemas import Add, Delete
from schemas.state import RecordState
from server import audit, erasure
from server.service import SyncService
from server.settings import Settings
from server.storage import due
from server.storage.sqlite import SqliteStore
from server.storage.state_cache import Checkpoint
from sync import merge
from sync.clock import Clock
from sync.store import BatchWrite, ConflictUpdate
from tests.conftest import make_store, migrate_again, office_keys
from tests.server.test_app import GONGSHU, XIHU
from tests.server.test_authorization import CREATE, a_case_naming, records_held
from tests.sync.causal import logged as logged_changes


def test_a_case_erased_after_it_was_listed_does_not_stop_the_next_start(office):
    informant = office.enroll("informant", name="informant")
    mediator = office.enroll("mediator", name="med")
    mediator.push(a_case_naming(mediator, mediator.enrollment.user_id))
    service = office.http.app.state.service
    supervisor = office.directory.add_user("sup", "supervisor", ["Hangzhou"], office.wall.ms)
    naming = Add(field="mediators", value=informant.enrollment.user_id)
    service.act(supervisor, [mediator.change("case", "k-1", ops=[naming])])
    office.store.db.execute("DROP TABLE due")
    migrate_again(office.store.db, "0014")
    listed = office.store.db.execute(
        "SELECT work, record_id FROM due WHERE work != 'states' ORDER BY 1"
    ).fetchall()
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


def test_states_stored_by_an_older_merge_are_merged_again_from_the_log(office):
    # 0016: an older merge opened a deleted conflict for a device's own edit after its own
    # delete, and kept no place for log entries. Its checkpoint and conflict row are
    # replaced by what the log gives today, once, at the next start.
    mediator = office.enroll("mediator", name="med")
    mediator.push(a_case_naming(mediator, mediator.enrollment.user_id))
    mediator.push([mediator.change("case", "k-1", ops=[Delete()])], "b-2")
    mediator.push([mediator.change("case", "k-1", set={"title": "Drains (duplicate)"})], "b-3")
    store, key = office.store, ("case", "k-1")
    today = store.states([key])[key]
    assert store.open_conflicts() == []
    older = msgspec.structs.replace(
        today,
        edits=None,
        deleted=[msgspec.structs.replace(d, contested=False) for d in today.deleted],
    )
    (spurious,) = merge.conflicts(older)  # what the older merge kept open
    seq = store.last_seq()
    with store.transaction():
        store._write_checkpoints([Checkpoint(key, seq, True, msgspec.msgpack.encode(older))])
        store.write(BatchWrite([], {}, [], [ConflictUpdate(key, "_record", spurious, seq)]))
    store.forget_cached([key])
    assert store.states([key])[key].edits is None
    assert store.open_conflicts() == [spurious]
    migrate_again(store.db, "0016")

    service = office.http.app.state.service
    SyncService(service.settings, store, office.keys, service.clock, office.wall)

    assert store.db.execute("SELECT count(*) FROM due").fetchone() == (0,)
    store.forget_cached([key])
    assert store.states([key])[key] == today
    assert store.open_conflicts() == []
    (entry,) = [e for e in audit.entries(store.db, "catch_up")]
    assert entry.detail == {"states": 2}  # the case and its party


def an_old_change_todays_checks_refuse(office):
    """A case whose logged creation holds a value an older version accepted (checks
    tighten), and every record listed for `states` again; returns the case's state."""
    mediator = office.enroll("mediator", name="med")
    mediator.push(a_case_naming(mediator, mediator.enrollment.user_id))
    store, key = office.store, ("case", "k-1")
    before = store.states([key])[key]
    (change,) = [c for c in logged_changes(store) if c.record_id == "k-1"]
    older = msgspec.structs.replace(change, set={**change.set, "households": -1})
    sealed = store.seal_value("changes", key, change.change_id, msgspec.msgpack.encode(older))
    with store.transaction():
        store.db.execute(
            "UPDATE changes SET raw = ? WHERE change_id = ?", [sealed, change.change_id]
        )
    migrate_again(store.db, "0016")
    return before


def test_a_record_whose_old_change_fails_todays_checks_is_kept_and_the_start_goes_on(office):
    # Merged again from the log, the case would be refused. The office must still start;
    # the case keeps its checkpoint and is named in the audit.
    before = an_old_change_todays_checks_refuse(office)
    store, key = office.store, ("case", "k-1")

    service = office.http.app.state.service
    SyncService(service.settings, store, office.keys, service.clock, office.wall)

    assert store.db.execute("SELECT count(*) FROM due").fetchone() == (0,)
    store.forget_cached([key])
    assert store.states([key])[key] == before
    (entry,) = audit.entries(store.db, "catch_up")
    assert entry.detail == {"states": 1, "states_kept": ["case/k-1"]}  # the party was rebuilt
    # A device that builds its copy from nothing gets the case as the office keeps it; by
    # its history it could not (its own merge refuses the logged creation).
    laptop = office.enroll("supervisor", ("Hangzhou",), name="sup")
    page = laptop.pulled("states")
    sent = [msgspec.msgpack.decode(item["state"], type=RecordState) for item in page["items"]]
    assert [s for s in sent if s.record_id == "k-1"] == [before]


def test_a_start_killed_between_chunks_goes_on_from_there_and_logs_everything(office, monkeypatch):
    an_old_change_todays_checks_refuse(office)
    store = office.store
    calls = 0
    rebuild = SqliteStore.rebuild

    def killed_at_the_second_chunk(self, keys):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return rebuild(self, keys)

    monkeypatch.setattr(SqliteStore, "rebuild", killed_at_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        due._rebuild_states(store, office.wall.ms, size=1)
    monkeypatch.undo()
    assert audit.entries(store.db, "catch_up") == []

    assert due.catch_up(store, office.keys.index_key, office.wall.ms) == {
        "states": 1,
        "states_kept": 1,
    }
    (entry,) = audit.entries(store.db, "catch_up")
    assert entry.detail == {"states": 1, "states_kept": ["case/k-1"]}
    assert store.db.execute("SELECT count(*) FROM due").fetchone() == (0,)


def test_a_change_todays_checks_refuse_is_left_out_and_its_record_still_takes_pushes(office):
    # Read after a checkpoint that lags, such a change used to fail every read and every
    # push of its record (500s, and a jammed outbox). Left out, as devices leave it out.
    mediator = office.enroll("mediator", name="med")
    mediator.push(a_case_naming(mediator, mediator.enrollment.user_id))
    created = office.store.states([("case", "k-1")])[("case", "k-1")]
    edit = mediator.change("case", "k-1", set={"households": 4})
    mediator.push([edit], "b-2")  # in the writer's cache: the checkpoint lags
    store, key = office.store, ("case", "k-1")
    older = msgspec.structs.replace(edit, set={"households": -1})
    sealed = store.seal_value("changes", key, edit.change_id, msgspec.msgpack.encode(older))
    with store.transaction():
        store.db.execute("UPDATE changes SET raw = ? WHERE change_id = ?", [sealed, edit.change_id])
    store.forget_cached([key])

    assert merge.materialize(store.states([key])[key]) == merge.materialize(created)
    later = mediator.change("case", "k-1", set={"priority": "high"})
    (answer,) = msgspec.msgpack.decode(mediator.push([later], "b-3").content)["results"]
    assert answer["status"] == "applied"


def test_due_readers_and_people_are_worked_through_a_few_records_at_a_time(office):
    # A city's every party can be due; their states are read a chunk at a time, and
    # the outcome is that of doing them all at once.
    informant = office.enroll("informant", name="informant")
    mediator = office.enroll("mediator", name="med")
    informant_id = informant.enrollment.user_id
    made = []
    for n in (1, 2, 3):
        made += [
            mediator.change("party", f"p-{n}", {"name": f"He {n}", "phone": f"138 0000 123{n}"}),
            mediator.change(
                "case",
                f"k-{n}",
                CREATE["case"],
                [
                    Add(field="parties", value=f"p-{n}"),
                    Add(field="mediators", value=mediator.enrollment.user_id),
                ],
            ),
        ]
    mediator.push(made)
    service = office.http.app.state.service
    supervisor = office.directory.add_user("sup", "supervisor", ["Hangzhou"], office.wall.ms)
    naming = Add(field="mediators", value=informant_id)
    named = service.act(
        supervisor, [mediator.change("case", f"k-{n}", ops=[naming]) for n in (1, 2, 3)]
    )
    assert [r.status for r in named] == ["applied"] * 3
    with office.store.transaction():  # what an older office granted an informant named there
        office.store.db.conn.executemany(
            "INSERT INTO access (user_id, record_type, record_id, since_seq) VALUES (?, ?, ?, 1)",
            [
                (informant_id, t, f"{p}-{n}")
                for t, p in (("case", "k"), ("party", "p"))
                for n in (1, 2, 3)
            ],
        )
    assert len(records_held(informant)) == 6
    office.store.db.execute("DROP TABLE due")
    migrate_again(office.store.db, "0014")
    office.store.db.execute("DELETE FROM people_index")

    assert due.catch_up(office.store, office.keys.index_key, office.wall.ms, size=2) == {
        "states": 6,
        "people": 3,
        "readers": 3,
    }
    assert records_held(informant) == set()
    assert len(records_held(mediator)) == 6
    indexed = office.store.db.execute("SELECT DISTINCT record_id FROM people_index").fetchall()
    assert sorted(indexed) == [("p-1",), ("p-2",), ("p-3",)]
    assert office.store.db.execute("SELECT count(*) FROM due").fetchone() == (0,)


def test_a_case_an_older_rule_let_others_read_is_redone_whatever_its_index_says(office):
    # Review finding: a linked record takes its readers from its cases' access rows now.
    # A case stored before `case_index` was filled has no row there, so 0014 missed its
    # stale rows, which would then pass to the party it links. 0017 reads `access` itself.
    informant = office.enroll("informant", name="informant")
    mediator = office.enroll("mediator", name="med")
    outsider = office.directory.add_user("far", "supervisor", ["Ningbo"], office.wall.ms)
    mediator.push(a_case_naming(mediator, mediator.enrollment.user_id))
    stale = [(informant.enrollment.user_id, "case", "k-1"), (outsider.user_id, "case", "k-1")]
    stale += [(user, "party", "p-1") for user, _, _ in stale]
    with office.store.transaction():  # what an older office granted, and its index lost
        office.store.db.conn.executemany(
            "INSERT INTO access (user_id, record_type, record_id, since_seq) VALUES (?, ?, ?, 1)",
            stale,
        )
        office.store.db.execute("DELETE FROM case_index")
    assert records_held(informant) == {("case", "k-1"), ("party", "p-1")}
    office.store.db.execute("DROP TABLE due")
    migrate_again(office.store.db, "0014")
    listed = office.store.db.execute("SELECT work, record_id FROM due WHERE work = 'readers'")
    assert listed.fetchall() == [("readers", "k-1")]

    due.catch_up(office.store, office.keys.index_key, office.wall.ms)
    left = office.store.db.execute("SELECT user_id, record_type, record_id FROM access")
    assert not set(stale) & set(left.fetchall())
    assert records_held(informant) == set()
    assert records_held(mediator) == {("case", "k-1"), ("party", "p-1")}


@pytest.mark.parametrize("size", [500, 1])
def test_a_catch_up_in_chunks_evicts_no_one_from_what_they_never_read(office, size):
    # Review finding: in chunks, k-1's recomputes p-1 from k-2's stale rows before k-2's
    # chunk fixes them, granting the informant p-1 and then taking it back, which wrote an
    # eviction of a record the informant never held. Nothing was ever served in between.
    informant = office.enroll("informant", name="informant").enrollment.user_id
    mediator = office.enroll("mediator", name="med")
    me = mediator.enrollment.user_id
    naming = [Add(field="parties", value="p-1"), Add(field="mediators", value=me)]
    made = [mediator.change("party", "p-1", {"name": "He", "phone": "138 0000 1234"})]
    made += [mediator.change("case", f"k-{n}", CREATE["case"], naming) for n in (1, 2)]
    mediator.push(made)
    db = office.store.db
    with office.store.transaction():  # what an older rule left on k-2 alone
        db.execute("INSERT INTO access VALUES (?, 'case', 'k-2', 1)", [informant])
        db.conn.executemany("INSERT INTO due VALUES ('readers', 'case', ?)", [("k-1",), ("k-2",)])

    due.catch_up(office.store, office.keys.index_key, office.wall.ms, size=size)
    assert db.execute("SELECT count(*) FROM access WHERE user_id = ?", [informant]).fetchone() == (
        0,
    )
    evicted = db.execute(
        "SELECT record_type, record_id FROM evictions WHERE user_id = ?", [informant]
    )
    assert evicted.fetchall() == [("case", "k-2")]


def test_records_stored_before_the_console_indexes_enter_them_dated_as_received(office):
    # Cases, warnings and agreements untouched since 0006 and 0010 made their indexes
    # had no row: no list, no figure showed them. The start writes the rows the office
    # would have written as it received them.
    informant = office.enroll("informant", name="informant")
    mediator = office.enroll("mediator", name="med")
    me = mediator.enrollment.user_id
    mediator.push(a_case_naming(mediator, me), batch_id="b-1")
    informant.push([informant.change("warning", "w-1", CREATE["warning"])])
    office.wall.tick(86_400_000)
    again = [Add(field="parties", value="p-1"), Add(field="mediators", value=me)]
    later = [mediator.change("case", "k-2", CREATE["case"], again)]
    later.append(mediator.change("agreement", "a-1", {**CREATE["agreement"], "case": "k-1"}))
    mediator.push(later, batch_id="b-2")
    office.wall.tick(86_400_000)
    resolving = [{"status": "assigned"}, {"status": "resolved"}]
    answers = mediator.pushed([mediator.change("case", "k-1", s) for s in resolving], "b-3")
    office.wall.tick(86_400_000)
    supervisor = office.directory.add_user("sup", "supervisor", ["Hangzhou"], office.wall.ms)
    service = office.http.app.state.service
    acted = service.act(supervisor, [mediator.change("case", "k-2", s) for s in resolving])
    assert [r["status"] for r in answers["results"]] + [r.status for r in acted] == ["applied"] * 4
    office.wall.tick(86_400_000)
    closing = mediator.pushed([mediator.change("case", "k-1", {"status": "closed"})], "b-4")
    assert closing["results"][0]["status"] == "applied"  # still dated by when it was resolved
    office.wall.tick(86_400_000)
    db = office.store.db
    tables = ("case_index", "warning_index", "agreement_index")
    rows = {table: f"SELECT * FROM {table} ORDER BY 1" for table in tables}
    written = {table: db.execute(query).fetchall() for table, query in rows.items()}
    assert [row[0] for row in written["case_index"]] == ["k-1", "k-2"]
    assert [row[1] for row in written["case_index"]] == ["closed", "resolved"]
    assert written["case_index"][1][-1] == 1  # k-2 is a repeat petition: p-1 came with k-1
    for table in tables:  # as an office from before those indexes holds them
        db.execute(f"DELETE FROM {table}")
    migrate_again(db, "0018")
    listed = db.execute("SELECT record_id FROM due WHERE work = 'index' ORDER BY 1")
    assert listed.fetchall() == [("a-1",), ("k-1",), ("k-2",), ("w-1",)]

    assert due.catch_up(office.store, office.keys.index_key, office.wall.ms) == {"index": 4}
    for table, query in rows.items():
        assert db.execute(query).fetchall() == written[table]


def test_a_supervisors_move_is_done_a_chunk_at_a_time_and_a_stopped_one_at_the_next_start(
    office, monkeypatch
):
    # A move over a city's records held the writer gate for all of them (about 17 s at
    # 100,000), and pushes meanwhile were answered `storage_busy`.
    mediator = office.enroll("mediator", name="med")
    made = [mediator.change("party", f"p-{m}", {"name": f"He {m}"}) for m in range(3)]
    for n in range(12):  # every party linked by cases in both districts
        location = XIHU if n % 2 == 0 else GONGSHU
        link = [Add(field="parties", value=f"p-{n % 3}")]
        made.append(mediator.change("case", f"k-{n}", {"title": "x", "location": location}, link))
    mediator.push(made)
    chen = office.enroll("supervisor", org_units=["Hangzhou/Gongshu"])
    _, cursor = chen.pull_all()
    done = []

    def stopped_after_two_chunks(store, touched, *args):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(touched)
        return update_access(store, touched, *args)

    update_access = due.update_access
    monkeypatch.setattr(due, "redo_readers", functools.partial(due.redo_readers, size=3))
    monkeypatch.setattr(due, "update_access", stopped_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        office.directory.move(chen.enrollment.user_id, ["Hangzhou/Xihu"])
    monkeypatch.undo()
    db = office.store.db
    # What the stopped move did stays: the new units, and two chunks of cases.
    assert office.directory.user(chen.enrollment.user_id).org_units == ["Hangzhou/Xihu"]
    assert [len(chunk) for chunk in done] == [3, 3] and all(
        t == "case" for chunk in done for t, _ in chunk
    )
    # Six cases left; the parties they link were done with the first six.
    assert db.execute("SELECT count(*) FROM due WHERE work = 'readers'").fetchone() == (6,)

    due.catch_up(office.store, office.keys.index_key, office.wall.ms)  # the next start
    assert db.execute("SELECT count(*) FROM due").fetchone() == (0,)
    access = db.execute("SELECT * FROM access ORDER BY 1, 2, 3").fetchall()
    everything = db.execute("SELECT record_type, record_id FROM records").fetchall()
    with office.store.transaction():  # all at once: nothing left to change
        update_access(office.store, dict.fromkeys(everything, office.store.last_seq() + 1), None)
    assert db.execute("SELECT * FROM access ORDER BY 1, 2, 3").fetchall() == access
    mediator.push([mediator.change("case", "k-new", {"title": "x", "location": XIHU})], "b-2")
    page = chen.pulled(cursor)
    evicted = {i["record_id"] for i in page["items"] if i["type"] == "evict"}
    assert evicted == {f"k-{n}" for n in range(1, 12, 2)}
    xihu = {("case", f"k-{n}") for n in range(0, 12, 2)} | {("case", "k-new")}
    assert records_held(chen) == xihu | {("party", f"p-{m}") for m in range(3)}
