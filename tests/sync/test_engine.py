"""Applying batches: bad changes are quarantined with a precise reason and touch nothing else."""

import msgspec
import pytest

from schemas import Add, Append, Change, Reason
from server.erasure import erase_case
from sync.clock import pack, wall_of
from sync.engine import apply_batch
from sync.merge import materialize
from tests.conftest import WALL_MS, make_store

SIGNATURE = {
    "signer": "p-1",
    "signed_at": "2026-11-18T08:00:00Z",
    "content_hash": "ab" * 32,
    "signature": "AAAA",
}


def change(n, record_type="case", record_id="k-1", set=None, ops=(), device="dev-a", seen=None):
    return Change(
        change_id=f"{device}-{n}",
        record_type=record_type,
        record_id=record_id,
        device_id=device,
        hlc=pack(WALL_MS, n),
        seen=seen or {},
        set=set or {},
        ops=list(ops),
    )


GOOD = [
    change(1, set={"title": "Drains", "status": "new"}),
    change(2, "agreement", "a-1", set={"terms": "Trap in 14 days", "status": "draft"}),
    change(3, "agreement", "a-1", ops=[Append(field="signatures", entry=SIGNATURE)]),
]
BAD = [
    (change(10, "caze", "k-9", set={"title": "x"}), Reason.UNKNOWN_RECORD_TYPE, "caze"),
    (change(11, set={"colour": "red"}), Reason.UNKNOWN_FIELD, "colour"),
    (change(12, set={"households": "many"}), Reason.INVALID_VALUE, "households: Expected `int`"),
    (change(13, set={"status": "closed"}), Reason.ILLEGAL_TRANSITION, "new cannot move to closed"),
    (change(14, "agreement", "a-1", set={"terms": "No trap"}), Reason.AGREEMENT_SEALED, "terms"),
    (change(15, set={"tags": ["a"]}), Reason.WRONG_OPERATION, "tags"),
    (change(16, ops=[Add(field="title", value="x")]), Reason.WRONG_OPERATION, "title"),
    (change(17), Reason.EMPTY_CHANGE, "must set"),
    # A new change id with a stamp this device already used on the record.
    (
        msgspec.structs.replace(GOOD[0], change_id="dev-a-reused", set={"title": "y"}),
        Reason.STALE_STAMP,
        "not after",
    ),
]


def records(store):
    return {(s.record_type, s.record_id): materialize(s) for s in store.all_states()}


def test_each_bad_change_is_quarantined_with_its_reason_and_changes_nothing_else(
    tmp_path, server_clock
):
    clean = make_store(tmp_path / "clean.db")
    apply_batch(clean, GOOD, server_clock)
    mixed = make_store(tmp_path / "mixed.db")
    # Bad changes among good ones, in one batch.
    results = apply_batch(
        mixed,
        [*GOOD[:2], *(c for c, _, _ in BAD[:2]), GOOD[2], *(c for c, _, _ in BAD[2:])],
        server_clock,
    )

    by_id = {r.change_id: r for r in results}
    for bad, reason, detail in BAD:
        result = by_id[bad.change_id]
        assert (result.status, result.reason) == ("rejected", reason), bad.change_id
        assert detail in result.detail
    quarantined = {row.change_id: row.reason for row in mixed.quarantined()}
    assert quarantined == {bad.change_id: reason for bad, reason, _ in BAD}
    assert records(mixed) == records(clean)
    assert [c.change.change_id for c in mixed.changes_since(0, 100)] == [c.change_id for c in GOOD]


def test_a_change_id_another_device_used_is_refused_not_taken_as_a_duplicate(store, server_clock):
    mine = change(1, set={"title": "Drains", "status": "new"})
    apply_batch(store, [mine], server_clock)
    before = (records(store), store.last_seq(), store.quarantined())
    squatter = msgspec.structs.replace(
        change(2, record_id="k-2", set={"title": "Noise"}, device="dev-b"),
        change_id=mine.change_id,
    )

    (answer,) = apply_batch(store, [squatter], server_clock)
    (again,) = apply_batch(store, [mine], server_clock)

    assert (answer.status, answer.reason, answer.seq) == ("rejected", Reason.CHANGE_ID_TAKEN, None)
    assert (again.status, again.seq) == ("duplicate", 1)  # its own device's, as ever
    assert (records(store), store.last_seq(), store.quarantined()) == before


def test_a_change_sent_again_after_its_record_was_erased_is_answered_erased(store, server_clock):
    mine = change(1, set={"title": "Drains", "status": "new"})
    apply_batch(store, [mine], server_clock)
    erase_case(store, "k-1", "court order", "operator:wang", WALL_MS)
    before = (store.last_seq(), store.quarantined())

    # A device that never learnt of the erasure sends it again (a lost answer, a restore).
    (again,) = apply_batch(store, [mine], server_clock)

    assert (again.status, again.reason, again.seq) == ("rejected", Reason.RECORD_ERASED, None)
    assert (store.last_seq(), store.quarantined()) == before


def test_conflict_result_names_every_candidate_with_its_author(store, server_clock):
    base = change(1, set={"summary": "start", "status": "new"})
    sun = change(2, set={"summary": "Stop at 22:00"}, device="dev-sun", seen={"dev-a": base.hlc})
    li = change(3, set={"summary": "Move the table"}, device="dev-li", seen={"dev-a": base.hlc})
    results = apply_batch(store, [base, sun, li], server_clock)
    assert [r.status for r in results] == ["applied", "applied", "conflict"]
    (conflict,) = results[2].conflicts
    assert conflict.field == "summary"
    assert {(c.device_id, c.value) for c in conflict.candidates} == {
        ("dev-sun", "Stop at 22:00"),
        ("dev-li", "Move the table"),
    }
    assert store.open_conflicts() == [conflict]

    settle = change(
        4,
        set={"summary": "Move the table"},
        device="dev-supervisor",
        seen={"dev-a": base.hlc, "dev-sun": sun.hlc, "dev-li": li.hlc},
    )
    assert apply_batch(store, [settle], server_clock)[0].status == "applied"
    assert store.open_conflicts() == []
    settled = store.db.execute("SELECT field, opened_seq, settled_seq FROM conflicts").fetchall()
    assert settled == [("summary", 3, 4)]


def test_a_stamp_of_the_receiving_clock_itself_is_never_clamped(store, server_clock):
    # A fast phone's change pulls the office clock to the drift bound; the office's own
    # change made from that clock at once (an agreement's execution, in the same push) is
    # above the bound too, but ranks by its own stamp: a restart goes on after it.
    future = change(1, set={"title": "from the future"}, device="dev-future")
    future = msgspec.structs.replace(future, hlc=pack(WALL_MS + 7 * 24 * 3600_000))
    (fast,) = apply_batch(store, [future], server_clock)
    own = change(2, set={"priority": "high"}, device="office-1")
    own = msgspec.structs.replace(own, hlc=server_clock.now())
    (answer,) = apply_batch(store, [own], server_clock)
    assert fast.clamped and not answer.clamped
    stored = store.db.execute("SELECT order_stamp FROM changes WHERE change_id = 'office-1-2'")
    assert stored.fetchone()[0] is None


@pytest.mark.parametrize("hours_ahead", [48, 24 * 365])
def test_an_absurd_future_stamp_is_clamped_for_ordering_and_flagged(
    store, server_clock, hours_ahead
):
    base = change(1, set={"title": "start"})
    future = Change(
        change_id="dev-future-1",
        record_type="case",
        record_id="k-1",
        device_id="dev-future",
        hlc=pack(WALL_MS + hours_ahead * 3600_000),
        seen={},
        set={"title": "from the future"},
    )
    honest = change(2, set={"title": "honest"}, device="dev-b")
    results = apply_batch(store, [base, future, honest], server_clock)
    assert results[1].clamped and not results[2].clamped
    # The server clock went no further than the drift bound, not to the absurd stamp.
    assert wall_of(server_clock.last) <= WALL_MS + server_clock.max_drift_ms + 1
    # Both later writes are concurrent; the clamped one no longer outranks by decades.
    winner = records(store)[("case", "k-1")].title
    conflict = store.open_conflicts()[0]
    assert {c.value for c in conflict.candidates} == {"start", "from the future", "honest"}
    assert (
        winner
        == max(
            conflict.candidates, key=lambda c: (min(c.hlc, server_clock.limit()), c.device_id)
        ).value
    )
