"""Record states as checkpoints plus the change log, behind a bounded cache of newest states.

`records.state` holds a record's merge state as of `records.seq`; `states()` answers
from the writer's cache or merges the changes logged after the checkpoint. These
tests check what a user of the store sees: the newest state after crashes, rollbacks,
other writers and erasure, and checkpoints that stay consistent, bounded and current.
"""

import contextlib
import sqlite3
import tempfile
import threading
from contextlib import closing
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas import Add, Append, Change, Delete, Remove, Restore
from schemas.state import RecordState
from server.storage import sqlite as sqlite_store
from server.storage.sqlite import CACHED_STATES, PACKED_STATES, SqliteStore, bind
from server.storage.vault import Vault
from sync import merge
from sync.atrest import open_sealed
from sync.clock import Clock, pack
from sync.engine import apply, apply_batch
from tests.conftest import WALL_MS, shared_keys

_decode_state = msgspec.msgpack.Decoder(RecordState).decode
K1 = ("case", "k-1")
K2 = ("case", "k-2")
NOTE_AT = "2026-11-18T09:00:00Z"
# A device whose clock runs two days ahead: the server clamps its stamps for ordering.
FUTURE_MS = 2 * 24 * 60 * 60 * 1000


def open_store(
    path: Path, cached_states: int = CACHED_STATES, packed_states: int = PACKED_STATES
) -> SqliteStore:
    """A store on `path` with its data keys beside it, as `tests.conftest.make_store`."""
    keys = Vault(path.with_name(path.name + ".keys"), shared_keys())
    return SqliteStore(path, keys, cached_states, packed_states)


def crash(store: SqliteStore) -> None:
    """The process dies: its connections go, and nothing it only had in memory is written."""
    for _, reader in store._readers:
        reader.close()
    store.db.conn.close()
    store.vault.close()


def server_clock() -> Clock:
    return Clock(lambda: WALL_MS)


def change(n, key=K1, device="dev-a", seen=None, ops=(), **fields):
    return Change(
        change_id=f"{device}-{n}",
        record_type=key[0],
        record_id=key[1],
        device_id=device,
        hlc=pack(WALL_MS, n),
        seen=seen or {},
        set=fields,
        ops=list(ops),
    )


def fold(changes):
    """Each record's state from its accepted changes, merged directly in server order."""
    states = {}
    for c in changes:
        key = (c.record_type, c.record_id)
        outcome = merge.apply_change(states.get(key), c)
        assert outcome.state is not None, outcome
        states[key] = outcome.state
    return states


def checkpoints(store: SqliteStore) -> dict[tuple[str, str], tuple[int, bool, RecordState]]:
    """Every `records` row: its seq, its deleted flag and its decoded checkpoint state."""
    rows = store.db.execute(
        "SELECT record_type, record_id, seq, deleted, state FROM records"
    ).fetchall()
    keys = store.vault.data_keys((t, i) for t, i, *_ in rows)
    return {
        (t, i): (
            seq,
            bool(deleted),
            _decode_state(open_sealed(keys[(t, i)], sealed, bind("records", (t, i)))),
        )
        for t, i, seq, deleted, sealed in rows
    }


def last_seqs(store: SqliteStore) -> dict[tuple[str, str], int]:
    rows = store.db.execute(
        "SELECT record_type, record_id, max(seq) FROM changes GROUP BY 1, 2"
    ).fetchall()
    return {(t, i): seq for t, i, seq in rows}


def logged_after_checkpoint(store: SqliteStore, key) -> int:
    """How many changes of `key` a read without the cache merges on top of its checkpoint."""
    return store.db.execute(
        "SELECT count(*) FROM changes AS c JOIN records AS r"
        " ON r.record_type = c.record_type AND r.record_id = c.record_id"
        " WHERE c.record_type = ? AND c.record_id = ? AND c.seq > r.seq",
        key,
    ).fetchone()[0]


# --- 1. The property: random batches, crashes, other writers and flushes -------------------

DEVICES = ["dev-a", "dev-b", "dev-z"]  # dev-z's stamps are clamped
TITLES = ["Leak", "Noise", "Fence", "Parking"]
TAGS = ["drains", "noise", "urgent"]
STATUSES = ["new", "assigned", "in_mediation", "resolved", "closed", "referred", "withdrawn"]
KINDS = ["title", "summary", "add", "remove", "note", "status", "delete", "restore", "repeat"]

change_specs = st.tuples(
    st.integers(0, 3),  # record
    st.integers(0, len(DEVICES) - 1),  # device
    st.sampled_from(KINDS),
    st.integers(0, 6),  # value
    st.booleans(),  # whether the device had seen the record's newest state
)
batches = st.lists(change_specs, min_size=1, max_size=4)
events = st.one_of(
    st.tuples(st.just("batch"), batches),
    st.tuples(st.just("batch"), batches),
    st.tuples(st.just("other"), batches),
    st.tuples(st.just("crash")),
    st.tuples(st.just("flush")),
)


class Model:
    """The change log as the server should keep it, and states folded from it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.log: list[tuple[int, tuple[str, str], Change, int]] = []  # seq, key, change, batch
        self.newest: dict[tuple[str, str], RecordState] = {}
        self.known: set[str] = set()
        self.sent: list[Change] = []
        self.batches = 0
        self.stamp = 0

    def state_at(self, key, seq: int) -> RecordState:
        state = None
        for at, k, c, _ in self.log:
            if k == key and at <= seq:
                state = merge.apply_change(state, c, min(c.hlc, self.limit)).state
        assert state is not None
        return state

    def seqs(self, key) -> list[int]:
        return [seq for seq, k, *_ in self.log if k == key]

    def batches_after(self, key, seq: int) -> int:
        return len({batch for at, k, _, batch in self.log if k == key and at > seq})

    def build(self, spec, n_records: int) -> Change:
        record, device_no, kind, value, saw = spec
        if kind == "repeat" and self.sent:
            return self.sent[value % len(self.sent)]  # a device retrying: a duplicate
        self.stamp += 1
        device = DEVICES[device_no]
        wall = WALL_MS + (FUTURE_MS if device == "dev-z" else 0)
        key = ("case", f"k-{record % n_records}")
        newest = self.newest.get(key)
        seen = dict(newest.vv) if saw and newest is not None else {}
        fields, ops = {}, []
        match kind:
            case "title" | "repeat":
                fields["title"] = TITLES[value % len(TITLES)]
            case "summary":
                fields["summary"] = f"summary {value}"
            case "add":
                ops.append(Add(field="tags", value=TAGS[value % len(TAGS)]))
            case "remove":
                ops.append(Remove(field="tags", value=TAGS[value % len(TAGS)]))
            case "note":  # the same entry id with other text is refused
                entry = {"entry_id": f"n-{value % 2}", "at": NOTE_AT, "by": "sun"}
                ops.append(Append(field="notes", entry={**entry, "text": f"text {value}"}))
            case "status":
                fields["status"] = STATUSES[value]
            case "delete":
                ops.append(Delete())
            case "restore":
                ops.append(Restore())
        made = Change(
            change_id=f"{device}-{self.stamp}",
            record_type=key[0],
            record_id=key[1],
            device_id=device,
            hlc=pack(wall, self.stamp),
            seen=seen,
            set=fields,
            ops=ops,
        )
        self.sent.append(made)
        return made

    def expect(self, changes: list[Change], last_seq: int) -> list[tuple]:
        """Apply a batch to the model; the answers the engine should give."""
        self.batches += 1
        answers = []
        for c in changes:
            if c.change_id in self.known:
                answers.append(("duplicate", None))
                continue
            self.known.add(c.change_id)
            key = (c.record_type, c.record_id)
            outcome = merge.apply_change(self.newest.get(key), c, min(c.hlc, self.limit))
            if outcome.state is None:
                answers.append(("rejected", outcome.rejected.reason))
            else:
                last_seq += 1
                self.newest[key] = outcome.state
                self.log.append((last_seq, key, c, self.batches))
                answers.append(("accepted", last_seq))
        return answers


def answers_of(results) -> list[tuple]:
    return [
        ("accepted", r.seq)
        if r.status in ("applied", "conflict")
        else (r.status, r.reason if r.status == "rejected" else None)
        for r in results
    ]


def check(store: SqliteStore, model: Model, max_pending: int) -> None:
    """What a user of the store can check after any step."""
    keys = [("case", f"k-{i}") for i in range(4)]
    assert store.states(keys) == model.newest
    rows = checkpoints(store)
    assert rows.keys() == model.newest.keys()  # every record has its row
    for key, (seq, deleted, state) in rows.items():
        # A checkpoint is the record's state as of a change of its own.
        assert seq in model.seqs(key)
        assert state == model.state_at(key, seq)
        # Lists read `records.deleted`: it must be the newest state's, not the checkpoint's.
        assert deleted == merge.is_deleted(model.newest[key])
        # A read after a crash merges at most MAX_PENDING - 1 batches' changes again.
        assert model.batches_after(key, seq) < max_pending


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n_records=st.integers(2, 4),
    cached_states=st.integers(1, 2),
    packed_states=st.integers(0, 2),
    max_pending=st.integers(2, 3),
    steps=st.lists(events, min_size=1, max_size=12),
)
# Found by this test: a batch that creates a record, pushing a dirty cached one out of a
# one-state cache, and deletes that cached record (see the test after this one).
@example(
    n_records=2,
    cached_states=1,
    packed_states=0,
    max_pending=2,
    steps=[
        ("batch", [(0, 0, "title", 0, False)]),
        ("batch", [(0, 0, "title", 1, False)]),
        ("batch", [(1, 0, "title", 0, False), (0, 0, "delete", 0, False)]),
    ],
)
def test_states_and_checkpoints_match_the_log_through_crashes_and_other_writers(
    n_records, cached_states, packed_states, max_pending, steps
):
    """Whatever batches, crashes, other writers and flushes happen, `states()` is the
    fold of the accepted changes in server order; every checkpoint is the record's state
    at one of its logged changes with the newest deleted flag and a bounded number of
    batches after it; and a flush leaves current every checkpoint the store could know."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_store, "MAX_PENDING", max_pending)
        path = Path(tmp) / "lianxin.db"
        clock = server_clock()
        model = Model(clock.limit())
        store = open_store(path, cached_states, packed_states)
        # Records whose checkpoint may lag after a flush: their newer states were
        # in a cache that was lost (a crash) or dropped (another writer committed).
        lost: set[tuple[str, str]] = set()
        try:
            for event in steps:
                if event[0] in ("batch", "other"):
                    changes = [model.build(spec, n_records) for spec in event[1]]
                    writer = (
                        store
                        if event[0] == "batch"
                        else open_store(path, cached_states, packed_states)
                    )
                    try:
                        expected = model.expect(changes, writer.last_seq())
                        results = apply_batch(writer, changes, server_clock())
                    finally:
                        if writer is not store:
                            writer.close()  # writes the checkpoints it holds
                    assert answers_of(results) == expected
                    if writer is not store:
                        lost |= model.newest.keys()
                    lost -= {(c.record_type, c.record_id) for c in changes}
                elif event[0] == "crash":
                    crash(store)
                    store = open_store(path, cached_states, packed_states)
                    lost |= model.newest.keys()
                else:
                    store.flush()
                    last = last_seqs(store)
                    for key, (seq, *_) in checkpoints(store).items():
                        if key not in lost:
                            assert seq == last[key], key
                check(store, model, max_pending)
        finally:
            store.close()


@pytest.mark.parametrize(("cached_states", "packed_states"), [(1, 0), (3, 0), (1, 1), (2, 3)])
def test_a_checkpoint_due_in_a_batch_is_not_overwritten_by_its_evicted_older_state(
    tmp_path, cached_states, packed_states
):
    """A batch that creates as many records as the cache holds, pushing out a record whose
    newest state is only cached, and then deletes that record, must leave its row current
    and deleted: lists read `records.deleted`, and close() must not leave it behind."""
    path = tmp_path / "lianxin.db"
    store = open_store(path, cached_states, packed_states)
    clock = server_clock()
    apply_batch(store, [change(1, title="Leak")], clock)  # new: its checkpoint is written
    apply_batch(store, [change(2, summary="Ceiling stained")], clock)  # cached only
    room = cached_states + packed_states
    new = [change(3 + i, ("case", f"k-new-{i}"), title="Noise") for i in range(room)]
    delete = change(3 + room, ops=[Delete()])
    results = apply_batch(store, [*new, delete], clock)
    delete_seq = 3 + room
    newest_deleted = merge.is_deleted(store.record(*K1))
    seq, deleted, _ = checkpoints(store)[K1]
    store.close()
    again = open_store(path)
    seq_after_close, deleted_after_close, _ = checkpoints(again)[K1]
    again.close()
    assert results[-1].seq == delete_seq
    assert newest_deleted
    assert (seq, deleted) == (delete_seq, True)
    assert (seq_after_close, deleted_after_close) == (delete_seq, True)


def test_a_state_in_the_second_tier_is_answered_without_reading_the_store(tmp_path):
    """A state pushed out of the decoded tier is kept encoded: reading it touches no
    checkpoint, and its checkpoint is written only when it leaves the encoded tier too."""
    store = open_store(tmp_path / "lianxin.db", cached_states=1, packed_states=2)
    clock = server_clock()
    k3, k4 = ("case", "k-3"), ("case", "k-4")
    sent = [change(1, title="Leak"), change(2, summary="Ceiling stained")]
    for c in sent:  # K1 new (checkpoint written), then edited (newer only in the cache)
        apply_batch(store, [c], clock)
    apply_batch(store, [change(3, K2, title="Noise")], clock)  # pushes K1 into the second tier
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    assert store.states([K1]) == fold(sent)
    store.db.conn.set_trace_callback(None)
    assert not [s for s in statements if "records" in s or "changes" in s]
    assert checkpoints(store)[K1][0] == 1  # still the first one
    apply_batch(store, [change(4, k3, title="More")], clock)  # K2 joins K1 encoded
    assert checkpoints(store)[K1][0] == 1
    apply_batch(store, [change(5, k4, title="Most")], clock)  # K1 leaves the cache
    seq, deleted, state = checkpoints(store)[K1]
    assert (seq, deleted, state) == (2, False, fold(sent)[K1])
    store.close()


def test_a_batch_writes_a_record_checkpoint_once_even_when_reading_it_from_the_second_tier(
    tmp_path,
):
    """Reading a batch's uncached records must not push out, and write, the state of a
    record the batch found encoded and is about to write itself (found in review)."""
    store = open_store(tmp_path / "lianxin.db", cached_states=1, packed_states=1)
    clock = server_clock()
    a, c = ("case", "k-a"), ("case", "k-c")
    apply_batch(store, [change(1, c, title="On file")], clock)
    store._cache.clear()  # c has its row and is not cached, as after a restart
    apply_batch(store, [change(2, a, title="Leak")], clock)  # new: its row written
    apply_batch(store, [change(3, a, summary="Ceiling stained")], clock)  # newer than its row
    apply_batch(store, [change(4, K2, title="Noise")], clock)  # a moves to the second tier
    written: list[str] = []
    store.db.conn.set_trace_callback(written.append)
    apply_batch(store, [change(5, a, summary="Dripping"), change(6, c, summary="Dry")], clock)
    store.db.conn.set_trace_callback(None)
    assert [w for w in written if "INSERT INTO records" in w and "'k-a'" in w] == []
    store.close()


# --- 2. Rollback ------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_a_rolled_back_batch_leaves_no_state_behind(tmp_path):
    """A batch whose transaction fails after it wrote leaves `states()` as before it,
    and the next batch (resending the same change) applies on that older state."""
    store = open_store(tmp_path / "lianxin.db", cached_states=2)
    clock = server_clock()
    first = [change(1, title="Leak"), change(2, summary="Ceiling stained")]
    for c in first:
        apply_batch(store, [c], clock)
    before = store.states([K1, K2])
    lost = [change(3, title="Rolled back"), change(4, ops=[Delete()]), change(5, K2, title="x")]
    with pytest.raises(Boom), store.transaction():
        applied = apply(store, lost, clock)
        assert [r.status for r in applied.results] == ["applied"] * 3
        assert store.record(*K1).deleted  # written inside the transaction
        raise Boom
    assert store.states([K1, K2]) == before == fold(first)
    retry = [lost[0], change(6, ops=[Add(field="tags", value="urgent")])]
    assert [r.seq for r in apply_batch(store, retry, clock)] == [3, 4]
    assert store.states([K1, K2]) == fold(first + retry)
    case = merge.materialize(store.record(*K1))
    assert (case.title, case.summary, case.tags) == ("Rolled back", "Ceiling stained", ["urgent"])
    store.close()
    again = open_store(tmp_path / "lianxin.db")
    assert again.states([K1, K2]) == fold(first + retry)
    again.close()


@pytest.mark.parametrize("packed_states", [0, 8])
@pytest.mark.parametrize("outcome", ["rolled back", "committed"])
def test_another_thread_reads_only_committed_states_while_a_batch_is_open(
    tmp_path, outcome, packed_states
):
    """A console page reads in a worker thread while a push's transaction is open: it
    sees the states as committed, never the batch's (which may yet roll back), from
    the cache or from the store; once the batch commits it sees the batch's."""
    store = open_store(tmp_path / "lianxin.db", cached_states=1, packed_states=packed_states)
    clock = server_clock()
    first = [change(1, title="Leak"), change(2, K2, title="Drains")]
    apply_batch(store, first, clock)
    committed = store.states([K1, K2])
    batch = [change(3, title="Not yet"), change(4, K2, title="Not yet either")]
    seen: list = []
    opened, read = threading.Event(), threading.Event()

    def console_page():
        opened.wait(5)
        seen.append(store.states([K1, K2]))
        read.set()

    reader = threading.Thread(target=console_page)
    reader.start()
    with contextlib.suppress(Boom), store.transaction():
        apply(store, batch, clock)
        opened.set()
        read.wait(5)
        if outcome == "rolled back":
            raise Boom
    reader.join()

    assert seen == [committed] == [fold(first)]
    now = first + batch if outcome == "committed" else first
    assert store.states([K1, K2]) == fold(now)
    later: list = []
    reader = threading.Thread(target=lambda: later.append(store.states([K1, K2])))
    reader.start()
    reader.join()
    assert later == [fold(now)]
    store.close()


def test_encoded_states_are_the_committed_states_from_every_tier(tmp_path):
    """What a pull from "states" sends: each record's newest committed state, as bytes,
    whether its checkpoint is current, its newer state is cached decoded or encoded, or
    it is merged from the log; never a state a batch still open has written."""
    store = open_store(tmp_path / "lianxin.db", cached_states=1, packed_states=1)
    clock = server_clock()
    k3 = ("case", "k-3")
    sent = [change(1, title="Leak"), change(2, summary="Ceiling stained")]
    sent += [change(3, K2, title="Noise"), change(4, K2, summary="At night")]
    sent += [change(5, k3, title="Drains"), change(6, k3, summary="Blocked")]
    for c in sent:  # each edited after its checkpoint: one decoded, one encoded, one neither
        apply_batch(store, [c], clock)
    keys = [K1, K2, k3]
    committed = fold(sent)
    seen: list = []
    opened, read = threading.Event(), threading.Event()

    def first_pull():
        opened.wait(5)
        seen.append({k: _decode_state(v) for k, v in store.encoded_states(keys).items()})
        read.set()

    reader = threading.Thread(target=first_pull)
    reader.start()
    with contextlib.suppress(Boom), store.transaction():
        apply(store, [change(7, title="Not yet"), change(8, k3, title="Not yet")], clock)
        opened.set()
        read.wait(5)
        raise Boom
    reader.join()

    assert seen == [committed]
    assert {k: _decode_state(v) for k, v in store.encoded_states(keys).items()} == committed
    store.close()


# --- 3. Another connection ----------------------------------------------------------------


def test_a_second_store_on_the_file_sees_and_builds_on_the_first_ones_changes(tmp_path):
    """Two stores on one file: each sees what the other committed, also changes the
    other only had in its cache, and a change on top merges with them (none lost)."""
    a = open_store(tmp_path / "lianxin.db")
    b = open_store(tmp_path / "lianxin.db")
    clock = server_clock()
    title = change(1, title="Leak")
    summary = change(2, summary="Ceiling stained")  # newer than A's checkpoint
    apply_batch(a, [title], clock)
    apply_batch(a, [summary], clock)
    assert a.record(*K1) == fold([title, summary])[K1]  # A has it cached
    assert logged_after_checkpoint(a, K1) == 1

    edit = change(3, device="dev-b", seen={"dev-a": summary.hlc}, title="Leak, flat 401")
    assert apply_batch(b, [edit], clock)[0].status == "applied"
    assert b.record(*K1) == fold([title, summary, edit])[K1]
    assert a.record(*K1) == fold([title, summary, edit])[K1]

    tag = change(4, seen={"dev-b": edit.hlc}, ops=[Add(field="tags", value="urgent")])
    assert apply_batch(a, [tag], clock)[0].status == "applied"
    everything = fold([title, summary, edit, tag])[K1]
    assert a.record(*K1) == b.record(*K1) == everything
    case = merge.materialize(everything)
    assert (case.title, case.summary, case.tags) == (
        "Leak, flat 401",
        "Ceiling stained",
        ["urgent"],
    )
    a.close()
    b.close()
    again = open_store(tmp_path / "lianxin.db")
    assert again.record(*K1) == everything
    again.close()


# --- 4. Erasure ---------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["this store", "another process"])
def test_an_erased_record_is_not_answered_from_the_cache(tmp_path, by):
    """Once a record's data key is destroyed (by this store's vault or by another process
    on the key store), its cached state is no longer returned; other records still are."""
    store = open_store(tmp_path / "lianxin.db")
    clock = server_clock()
    apply_batch(store, [change(1, title="Leak"), change(2, K2, title="Noise")], clock)
    apply_batch(store, [change(3, summary="Ceiling stained")], clock)  # cached, not checkpointed
    assert store.states([K1, K2]).keys() == {K1, K2}
    if by == "this store":
        assert store.vault.erase(K1, "court order 2026-17", WALL_MS)
    else:
        cli = Vault(store.vault.path, shared_keys())
        assert cli.erase(K1, "court order 2026-17", WALL_MS)
        cli.close()
    assert store.states([K1, K2]) == {K2: fold([change(2, K2, title="Noise")])[K2]}
    assert store.record(*K1) is None
    result = apply_batch(store, [change(4, title="After")], clock)[0]
    assert (result.status, result.reason) == ("rejected", "record_erased")
    assert store.record(*K1) is None
    store.close()  # its flush skips what it can no longer seal
    again = open_store(tmp_path / "lianxin.db")
    assert again.states([K1, K2]).keys() == {K2}
    again.close()


# --- 5. The crash bound -------------------------------------------------------------------


def test_changes_after_a_checkpoint_stay_under_max_pending_and_survive_a_crash(tmp_path):
    """With the default MAX_PENDING, many one-change batches to a record never leave
    MAX_PENDING or more changes after its checkpoint, yet do not checkpoint every batch;
    a fresh store on the file after a crash returns the same newest state."""
    assert sqlite_store.MAX_PENDING == 16
    store = open_store(tmp_path / "lianxin.db")
    clock = server_clock()
    sent = []
    pending = []
    for n in range(1, 41):
        c = (
            change(n, title=f"title {n}")
            if n % 3
            else change(n, ops=[Add(field="tags", value=f"t{n}")])
        )
        assert apply_batch(store, [c], clock)[0].status == "applied"
        sent.append(c)
        pending.append(logged_after_checkpoint(store, K1))
    assert max(pending) < sqlite_store.MAX_PENDING
    assert max(pending) > 0  # not a checkpoint on every batch
    newest = store.record(*K1)
    assert newest == fold(sent)[K1]
    crash(store)
    again = open_store(tmp_path / "lianxin.db")
    assert again.record(*K1) == newest
    again.close()


# --- 6. close() writes checkpoints --------------------------------------------------------


@pytest.mark.parametrize("cached_states", [1, CACHED_STATES])
def test_close_writes_every_checkpoint(tmp_path, cached_states):
    """After `close()` every record's checkpoint is as of its last logged change, so a
    reopened store merges nothing again."""
    path = tmp_path / "lianxin.db"
    store = open_store(path, cached_states)
    clock = server_clock()
    sent = []
    for n in range(1, 25):
        key = ("case", f"k-{n % 3}")
        c = change(n, key, title=f"title {n}")
        if n % 7 == 0:
            c = change(n, key, ops=[Delete()] if n % 2 else [Restore()])
        sent.append(c)
        apply_batch(store, [c], clock)
    keys = {("case", f"k-{i}") for i in range(3)}
    assert any(logged_after_checkpoint(store, key) for key in keys)  # something to write
    store.close()
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT record_type, record_id, seq FROM records").fetchall()
        last = db.execute(
            "SELECT record_type, record_id, max(seq) FROM changes GROUP BY 1, 2"
        ).fetchall()
    assert sorted(rows) == sorted(last)
    again = open_store(path)
    assert {k: s for k, (_, _, s) in checkpoints(again).items()} == fold(sent)
    again.close()
