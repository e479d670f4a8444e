"""Field-level merge, policy by policy, on small hand-made histories.

Every example that involves concurrency is checked in every arrival order
that respects causality (DESIGN.md: "Merging must not depend on arrival
order"). The laws over generated histories are in test_merge_properties.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from schemas import Add, Append, Change, Delete, Reason, Remove, Restore
from schemas.records import Note, Signature
from schemas.state import RecordState
from sync import merge
from sync.clock import pack
from tests.conftest import WALL_MS
from tests.sync.causal import had_seen

CASE = ("case", "k-1")
AGREEMENT = ("agreement", "a-1")


def stamp(seconds: int, counter: int = 0) -> int:
    """A stamp `seconds` after 2026-11-18 (negative: before)."""
    return pack(WALL_MS + seconds * 1000, counter)


def change(
    device: str,
    at: int,
    *,
    saw: tuple[Change, ...] = (),
    set: dict[str, Any] | None = None,
    ops: list[Any] | tuple[Any, ...] = (),
    record: tuple[str, str] = CASE,
) -> Change:
    """A change by `device` at second `at`, whose device had seen the changes in `saw`."""
    seen: dict[str, int] = {}
    for earlier in saw:
        if earlier.device_id != device:
            seen[earlier.device_id] = max(seen.get(earlier.device_id, -1), earlier.hlc)
    return Change(
        change_id=f"{device}@{at}",
        record_type=record[0],
        record_id=record[1],
        device_id=device,
        hlc=stamp(at),
        seen=seen,
        set=set or {},
        ops=list(ops),
    )


def merged(changes: list[Change] | tuple[Change, ...]) -> RecordState:
    """The state after applying `changes` in this order; every one must apply."""
    state = None
    for each in changes:
        outcome = merge.apply_change(state, each)
        assert outcome.rejected is None, (each.change_id, outcome.rejected)
        state = outcome.state
    assert state is not None
    return state


def causal_orders(changes: list[Change]) -> list[tuple[Change, ...]]:
    """Every order of `changes` in which no change comes before one its device had seen."""
    return [
        order
        for order in itertools.permutations(changes)
        if all(
            not had_seen(earlier, later)
            for n, earlier in enumerate(order)
            for later in order[n + 1 :]
            if (earlier.record_type, earlier.record_id) == (later.record_type, later.record_id)
        )
    ]


def in_every_order(changes: list[Change]) -> RecordState:
    """Merge `changes` in every causal order; all must give one record and one set of conflicts."""
    orders = causal_orders(changes)
    assert len(orders) > 1, "the example has only one causal order"
    states = [merged(order) for order in orders]
    first = states[0]
    for order, state in zip(orders[1:], states[1:], strict=True):
        where = [c.change_id for c in order]
        assert merge.materialize(state) == merge.materialize(first), where
        assert merge.is_deleted(state) == merge.is_deleted(first), where
        assert merge.conflicts(state) == merge.conflicts(first), where
    return first


def outcomes(order: tuple[Change, ...] | list[Change]) -> tuple[Any, list, dict[str, Reason]]:
    """Record, conflicts and rejections after applying `order`, rejections allowed."""
    state = None
    rejected = {}
    for each in order:
        outcome = merge.apply_change(state, each)
        if outcome.rejected is not None:
            rejected[each.change_id] = outcome.rejected.reason
        else:
            state = outcome.state
    assert state is not None
    return merge.materialize(state), merge.conflicts(state), rejected


def candidates(conflict) -> set[tuple]:
    """A conflict's candidates as (value, author device, stamp, change id), values as JSON."""
    return {authored(c, c.value) for c in conflict.candidates}


def authored(each: Any, value: Any) -> tuple:
    return (msgspec.json.encode(value), each.device_id, each.hlc, each.change_id)


def rejection(state: RecordState | None, each: Change) -> Reason:
    """Why `each` is refused on `state`; the state itself must come out untouched."""
    before = msgspec.msgpack.encode(state)
    outcome = merge.apply_change(state, each)
    assert outcome.state is None
    assert outcome.rejected is not None, f"{each.change_id} was accepted"
    assert outcome.rejected.detail
    assert msgspec.msgpack.encode(state) == before
    return outcome.rejected.reason


# -- lww ---------------------------------------------------------------------------------------


def test_concurrent_different_values_conflict_keeping_every_value_and_author():
    # Scenario 3: two mediators edit the same field offline.
    a = change("dev-a", 10, set={"title": "Drains overflow"})
    b = change("dev-b", 20, set={"title": "Grease on the block"})

    state = in_every_order([a, b])

    assert merge.materialize(state).title == "Grease on the block"
    (conflict,) = merge.conflicts(state)
    assert (conflict.record_type, conflict.record_id, conflict.field) == ("case", "k-1", "title")
    assert (conflict.kind, conflict.winner) == ("value", "Grease on the block")
    assert candidates(conflict) == {
        authored(a, "Drains overflow"),
        authored(b, "Grease on the block"),
    }


@pytest.mark.parametrize(
    ("a_at", "b_at", "winner"),
    [
        (20, 10, "from dev-a"),  # the higher stamp wins ...
        (10, 20, "from dev-b"),
        (10, 10, "from dev-b"),  # ... and on equal stamps, the higher device id
    ],
)
def test_the_shown_value_of_a_conflict_is_decided_by_stamp_then_device(a_at, b_at, winner):
    a = change("dev-a", a_at, set={"summary": "from dev-a"})
    b = change("dev-b", b_at, set={"summary": "from dev-b"})

    state = in_every_order([a, b])

    assert merge.materialize(state).summary == winner
    (conflict,) = merge.conflicts(state)
    assert conflict.winner == winner


def test_the_same_value_written_concurrently_is_not_a_conflict():
    a = change("dev-a", 10, set={"priority": "urgent"})
    b = change("dev-b", 20, set={"priority": "urgent"})

    state = in_every_order([a, b])

    assert merge.materialize(state).priority == "urgent"
    assert merge.conflicts(state) == []


def test_different_fields_edited_concurrently_merge_silently():
    a = change("dev-a", 10, set={"title": "Drains overflow"})
    b = change("dev-b", 20, set={"priority": "high", "households": 10})

    state = in_every_order([a, b])

    record = merge.materialize(state)
    assert (record.title, record.priority, record.households) == ("Drains overflow", "high", 10)
    assert merge.conflicts(state) == []


def test_an_edit_that_saw_the_old_value_replaces_it_even_from_a_clock_hours_behind():
    a = change("dev-a", 3600, set={"title": "Drains overflow"})
    b = change("dev-b", -7200, saw=(a,), set={"title": "Drains fixed"})  # three hours behind

    state = merged([a, b])

    assert merge.materialize(state).title == "Drains fixed"
    assert merge.conflicts(state) == []


def test_a_settlement_that_saw_both_values_closes_the_conflict():
    a = change("dev-a", 10, set={"title": "Drains overflow"})
    b = change("dev-b", 20, set={"title": "Grease on the block"})
    settled = change("dev-sup", 30, saw=(a, b), set={"title": "Drains and grease"})

    state = in_every_order([a, b, settled])

    assert merge.materialize(state).title == "Drains and grease"
    assert merge.conflicts(state) == []


def test_a_settlement_that_saw_only_one_value_leaves_a_conflict_with_the_other():
    a = change("dev-a", 10, set={"title": "Drains overflow"})
    b = change("dev-b", 20, set={"title": "Grease on the block"})
    settled = change("dev-sup", 30, saw=(a,), set={"title": "Drains and grease"})

    state = in_every_order([a, b, settled])

    (conflict,) = merge.conflicts(state)
    assert candidates(conflict) == {
        authored(b, "Grease on the block"),
        authored(settled, "Drains and grease"),
    }


# -- set ---------------------------------------------------------------------------------------


def test_concurrent_adds_are_unioned():
    a = change("dev-a", 10, ops=[Add(field="tags", value="drains")])
    b = change(
        "dev-b", 20, ops=[Add(field="tags", value="grease"), Add(field="mediators", value="m-li")]
    )

    state = in_every_order([a, b])

    record = merge.materialize(state)
    assert (record.tags, record.mediators) == (["drains", "grease"], ["m-li"])
    assert merge.conflicts(state) == []


def test_a_remove_takes_the_adds_it_had_seen():
    a = change(
        "dev-a", 10, ops=[Add(field="tags", value="drains"), Add(field="tags", value="noise")]
    )
    b = change("dev-b", 20, saw=(a,), ops=[Remove(field="tags", value="drains")])

    assert merge.materialize(merged([a, b])).tags == ["noise"]


def test_a_concurrent_add_survives_a_remove():
    a = change("dev-a", 10, ops=[Add(field="tags", value="drains")])
    removed = change("dev-b", 20, saw=(a,), ops=[Remove(field="tags", value="drains")])
    # dev-c adds the same tag without having seen the remove, with an earlier stamp.
    again = change("dev-c", 15, saw=(a,), ops=[Add(field="tags", value="drains")])

    state = in_every_order([a, removed, again])

    assert merge.materialize(state).tags == ["drains"]
    assert merge.conflicts(state) == []


def test_a_remove_does_not_take_an_add_it_had_not_seen_even_with_a_later_stamp():
    a = change("dev-a", 10, ops=[Add(field="mediators", value="m-wang")])
    b = change("dev-b", 3600, ops=[Remove(field="mediators", value="m-wang")])

    assert merge.materialize(in_every_order([a, b])).mediators == ["m-wang"]


def test_an_element_removed_and_added_again_is_present():
    a = change("dev-a", 10, ops=[Add(field="tags", value="drains")])
    b = change("dev-b", 20, saw=(a,), ops=[Remove(field="tags", value="drains")])
    c = change("dev-a", 30, saw=(b,), ops=[Add(field="tags", value="drains")])

    assert merge.materialize(merged([a, b, c])).tags == ["drains"]


# -- log ---------------------------------------------------------------------------------------


def note(entry_id: str, text: str, by: str = "m-li") -> dict[str, Any]:
    return {"entry_id": entry_id, "at": "2026-11-18T09:30:00Z", "by": by, "text": text}


def test_concurrent_appends_are_unioned_and_none_is_lost():
    a = change("dev-a", 10, ops=[Append(field="notes", entry=note("n-1", "visited no. 14"))])
    b = change(
        "dev-b",
        20,
        ops=[
            Append(field="notes", entry=note("n-2", "owner agrees to a trap")),
            Append(field="notes", entry=note("n-3", "drains checked")),
        ],
    )

    state = in_every_order([a, b])

    notes = merge.materialize(state).notes
    assert {n.entry_id for n in notes} == {"n-1", "n-2", "n-3"}
    assert msgspec.convert(note("n-2", "owner agrees to a trap"), Note) in notes
    assert merge.conflicts(state) == []


def test_the_same_entry_id_with_other_content_is_rejected():
    a = change("dev-a", 10, ops=[Append(field="notes", entry=note("n-1", "visited no. 14"))])
    b = change("dev-b", 20, saw=(a,), ops=[Append(field="notes", entry=note("n-1", "rewritten"))])

    assert rejection(merged([a]), b) == Reason.LOG_ENTRY_CONFLICT


def test_two_devices_that_chose_one_entry_id_keep_both_entries_in_every_order():
    a = change("dev-a", 10, ops=[Append(field="notes", entry=note("n-1", "visited no. 14"))])
    b = change("dev-b", 20, ops=[Append(field="notes", entry=note("n-1", "owner called"))])
    again = change("dev-c", 30, ops=[Append(field="notes", entry=note("n-1", "owner called"))])

    state = in_every_order([a, b, again])

    texts = [n.text for n in merge.materialize(state).notes]
    assert texts == ["visited no. 14", "owner called"]  # by rank; the same content once
    assert merge.conflicts(state) == []
    # An entry is still never edited: a device that had seen them may not reword one.
    reworded = note("n-1", "visited no. 16")
    for saw in ((a,), (b,)):
        edit = change("dev-d", 40, saw=saw, ops=[Append(field="notes", entry=reworded)])
        assert rejection(state, edit) == Reason.LOG_ENTRY_CONFLICT
    # One it had seen it may append again unchanged, though it had seen both.
    again = change(
        "dev-d", 40, saw=(a, b), ops=[Append(field="notes", entry=note("n-1", "owner called"))]
    )
    assert (
        merge.materialize(merge.apply_change(state, again).state).notes
        == merge.materialize(state).notes
    )


def test_a_note_made_beside_a_delete_is_in_its_conflict_whatever_its_entry_id():
    a = change("dev-a", 10, ops=[Append(field="notes", entry=note("n-1", "visited no. 14"))])
    delete = change("dev-d", 30, saw=(a,), ops=[Delete()])
    for entry_id in ("n-2", "n-1"):  # an id of its own; the id dev-a chose too
        b = change("dev-b", 20, ops=[Append(field="notes", entry=note(entry_id, "owner called"))])
        state = in_every_order([a, delete, b])
        assert [n.text for n in merge.materialize(state).notes] == [
            "visited no. 14",
            "owner called",
        ]
        (conflict,) = [c for c in merge.conflicts(state) if c.kind == "deleted"]
        assert [c.value for c in conflict.candidates] == [{"notes": note(entry_id, "owner called")}]


def test_appending_an_entry_the_log_already_holds_changes_nothing():
    a = change("dev-a", 10, ops=[Append(field="notes", entry=note("n-1", "visited no. 14"))])
    again = change("dev-a", 20, ops=[Append(field="notes", entry=note("n-1", "visited no. 14"))])

    state = merged([a, again])

    assert [n.entry_id for n in merge.materialize(state).notes] == ["n-1"]


# -- status ------------------------------------------------------------------------------------


def test_the_case_state_machine_accepts_its_legal_path():
    path = ["new", "assigned", "in_mediation", "resolved", "in_mediation", "resolved", "closed"]
    changes = [change("dev-a", 10 * n, set={"status": s}) for n, s in enumerate(path, 1)]

    assert merge.materialize(merged(changes)).status == "closed"


def test_a_record_whose_status_was_never_set_moves_on_from_its_default():
    warning = ("warning", "w-1")
    reported = change("inf", 1, set={"description": "Blocked fire lane"}, record=warning)
    converted = change("office", 2, saw=(reported,), set={"status": "converted"}, record=warning)
    assert merge.materialize(merged([reported, converted])).status == "converted"
    # A case never given a status is `new`: it may be referred, not yet mediated.
    created = change("a", 1, set={"title": "Noise"})
    referred = change("a", 2, set={"status": "referred"})
    assert merge.materialize(merged([created, referred])).status == "referred"
    too_far = change("a", 2, set={"status": "in_mediation"})
    assert rejection(merged([created]), too_far) == Reason.ILLEGAL_TRANSITION


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ([], "resolved"),  # a case starts as new or assigned
        (["new"], "closed"),
        (["new", "assigned"], "new"),
        (["new", "withdrawn"], "assigned"),  # nothing leaves an end state
        (["assigned", "resolved", "closed"], "in_mediation"),
    ],
)
def test_an_illegal_transition_is_rejected(path, target):
    earlier = [change("dev-a", 10 * n, set={"status": s}) for n, s in enumerate(path, 1)]
    # Another device that had seen every earlier move tries the illegal one.
    illegal = change("dev-b", 1000, saw=tuple(earlier), set={"status": target})

    state = merged(earlier) if earlier else None
    assert rejection(state, illegal) == Reason.ILLEGAL_TRANSITION


def test_a_transition_is_judged_from_the_status_its_device_had_seen():
    assigned = change("dev-a", 10, set={"status": "assigned"})
    withdrawn = change("dev-b", 20, saw=(assigned,), set={"status": "withdrawn"})
    # dev-c had not seen the withdrawal: moving on from "assigned" is legal for it.
    mediating = change("dev-c", 30, saw=(assigned,), set={"status": "in_mediation"})

    assert merge.apply_change(merged([assigned, withdrawn]), mediating).rejected is None


def test_concurrent_transitions_conflict_and_the_end_state_wins_by_rank():
    assigned = change("dev-a", 10, set={"status": "assigned"})
    withdrawn = change("dev-b", 20, saw=(assigned,), set={"status": "withdrawn"})
    # A later stamp, but a lower-ranked status.
    mediating = change("dev-c", 30, saw=(assigned,), set={"status": "in_mediation"})

    state = in_every_order([assigned, withdrawn, mediating])

    assert merge.materialize(state).status == "withdrawn"
    (conflict,) = merge.conflicts(state)
    assert (conflict.field, conflict.kind, conflict.winner) == ("status", "status", "withdrawn")
    assert candidates(conflict) == {
        authored(withdrawn, "withdrawn"),
        authored(mediating, "in_mediation"),
    }


def test_a_status_settlement_that_saw_both_transitions_closes_the_conflict():
    assigned = change("dev-a", 10, set={"status": "assigned"})
    withdrawn = change("dev-b", 20, saw=(assigned,), set={"status": "withdrawn"})
    mediating = change("dev-c", 30, saw=(assigned,), set={"status": "in_mediation"})
    settled = change("dev-sup", 40, saw=(withdrawn, mediating), set={"status": "withdrawn"})

    state = in_every_order([assigned, withdrawn, mediating, settled])

    assert merge.materialize(state).status == "withdrawn"
    assert merge.conflicts(state) == []


def test_a_causally_later_transition_wins_over_a_higher_rank_and_a_higher_stamp():
    assigned = change("dev-a", 3000, set={"status": "assigned"})
    resolved = change("dev-a", 3600, saw=(assigned,), set={"status": "resolved"})
    reopened = change("dev-b", -3600, saw=(resolved,), set={"status": "in_mediation"})

    state = merged([assigned, resolved, reopened])

    assert merge.materialize(state).status == "in_mediation"
    assert merge.conflicts(state) == []


# -- sealed ------------------------------------------------------------------------------------


def signature(signer: str, signed_at: str = "2026-11-18T10:00:00Z") -> dict[str, Any]:
    return {
        "signer": signer,
        "signed_at": signed_at,
        "content_hash": "ab" * 32,
        "signature": signer.encode() * 4,
    }


def agreement(device: str, at: int, **kwargs: Any) -> Change:
    return change(device, at, record=AGREEMENT, **kwargs)


def test_terms_can_change_until_someone_signs():
    draft = agreement("dev-a", 10, set={"terms": "Trap within 14 days", "status": "draft"})
    edited = agreement("dev-b", 20, saw=(draft,), set={"terms": "Trap within 7 days"})

    assert merge.materialize(merged([draft, edited])).terms == "Trap within 7 days"


@pytest.mark.parametrize("field", ["terms", "required_signers"])
@pytest.mark.parametrize("editor", ["dev-a", "dev-b"])
def test_an_edit_after_the_device_saw_a_signature_is_rejected(field, editor):
    draft = agreement(
        "dev-a", 10, set={"terms": "Trap within 14 days", "required_signers": ["p-1"]}
    )
    signed = agreement(
        "dev-a", 20, ops=[Append(field="signatures", entry=signature("p-1"))], saw=(draft,)
    )
    value = {"terms": "Trap within 30 days", "required_signers": ["p-1", "p-2"]}[field]
    # The signing device itself, or another that pulled the signature.
    edit = agreement(editor, 30, saw=(draft, signed), set={field: value})

    assert rejection(merged([draft, signed]), edit) == Reason.AGREEMENT_SEALED


def test_signatures_from_two_devices_are_merged_by_signer():
    # Scenario 2: two mediators collect signatures on two phones, offline.
    draft = agreement("dev-o", 1, set={"terms": "Trap within 14 days", "status": "draft"})
    first = agreement(
        "dev-a", 10, saw=(draft,), ops=[Append(field="signatures", entry=signature("p-1"))]
    )
    second = agreement(
        "dev-b",
        20,
        saw=(draft,),
        ops=[
            Append(field="signatures", entry=signature("p-2")),
            Append(field="signatures", entry=signature("p-3")),
        ],
    )

    state = in_every_order([draft, first, second])

    signatures = merge.materialize(state).signatures
    assert sorted(s.signer for s in signatures) == ["p-1", "p-2", "p-3"]
    assert msgspec.convert(signature("p-2"), Signature) in signatures


# -- delete ------------------------------------------------------------------------------------


def test_a_delete_with_a_concurrent_edit_is_a_deleted_conflict_and_drops_nothing():
    created = change("dev-a", 10, set={"title": "Drains overflow"})
    deleted = change("dev-b", 20, saw=(created,), ops=[Delete()])
    edited = change(
        "dev-c",
        30,
        saw=(created,),
        set={"title": "Drains, again"},
        ops=[Append(field="notes", entry=note("n-1", "still flooding"))],
    )

    state = in_every_order([created, deleted, edited])

    assert merge.is_deleted(state)
    (conflict,) = merge.conflicts(state)
    assert (conflict.field, conflict.kind) == (merge.DELETED_FIELD, "deleted")
    # Each candidate names its field, so the title and the note stay apart.
    assert authored(edited, {"title": "Drains, again"}) in candidates(conflict)
    assert {c.change_id for c in conflict.candidates} == {edited.change_id}
    # The tombstone keeps the edit.
    record = merge.materialize(state)
    assert record.title == "Drains, again"
    assert [n.entry_id for n in record.notes] == ["n-1"]


def test_a_delete_that_saw_every_edit_is_no_conflict():
    created = change("dev-a", 10, set={"title": "Drains overflow"})
    deleted = change("dev-b", 20, saw=(created,), ops=[Delete()])

    state = merged([created, deleted])

    assert merge.is_deleted(state)
    assert merge.conflicts(state) == []


def test_a_restore_that_saw_the_delete_and_the_edit_settles_it():
    created = change("dev-a", 10, set={"title": "Drains overflow"})
    deleted = change("dev-b", 20, saw=(created,), ops=[Delete()])
    edited = change("dev-c", 30, saw=(created,), set={"title": "Drains, again"})
    restored = change("dev-sup", 40, saw=(deleted, edited), ops=[Restore()])

    state = in_every_order([created, deleted, edited, restored])

    assert not merge.is_deleted(state)
    assert merge.conflicts(state) == []
    assert merge.materialize(state).title == "Drains, again"


def test_a_devices_own_edits_after_its_delete_are_no_conflict():
    # DESIGN: a device's own earlier changes are always seen by its later ones.
    created = change("dev-a", 10, set={"title": "Drains"})
    deleted = change("dev-a", 20, ops=[Delete()])
    edited = change(
        "dev-a",
        30,
        set={"title": "Drains overflow"},
        ops=[Add(field="tags", value="drains"), Append(field="notes", entry=note("n-1", "dry"))],
    )

    state = merged([created, deleted, edited])

    assert merge.is_deleted(state)
    assert merge.conflicts(state) == []


def test_an_edit_made_after_seeing_another_devices_delete_is_no_conflict():
    created = change("dev-a", 10, set={"title": "Drains"})
    deleted = change("dev-b", 20, saw=(created,), ops=[Delete()])
    edited = change("dev-a", 30, saw=(deleted,), set={"status": "assigned"})

    assert merge.conflicts(merged([created, deleted, edited])) == []


def test_an_edit_beside_the_delete_stays_in_conflict_when_its_value_is_replaced():
    # Overwriting the concurrent edit does not settle whether the record is deleted:
    # the write that replaced it carries the conflict on until a delete or restore does.
    created = change("dev-a", 10, set={"title": "Drains"})
    deleted = change("dev-a", 20, ops=[Delete()])
    beside = change("dev-b", 25, saw=(created,), set={"title": "Drains, still flooding"})
    other = change("dev-c", 26, saw=(created,), set={"priority": "high"})
    replaced = change("dev-a", 30, saw=(beside,), set={"title": "Drains (duplicate)"})

    state = in_every_order([created, deleted, beside, other, replaced])

    (conflict,) = merge.conflicts(state)
    assert conflict.kind == "deleted"
    assert {c.change_id for c in conflict.candidates} == {other.change_id, replaced.change_id}
    # A delete that had seen it all settles it, in every order too.
    again = change("dev-sup", 40, saw=(deleted, beside, other, replaced), ops=[Delete()])
    assert merge.conflicts(in_every_order([created, deleted, beside, other, replaced, again])) == []


def test_a_new_status_after_seeing_the_delete_carries_a_concurrent_status_on():
    created = change("dev-a", 10, set={"title": "Drains", "status": "new"})
    deleted = change("dev-a", 20, ops=[Delete()])
    beside = change("dev-b", 25, saw=(created,), set={"status": "assigned"})
    moved = change("dev-a", 30, saw=(beside,), set={"status": "in_mediation"})

    (conflict,) = merge.conflicts(in_every_order([created, deleted, beside, moved]))

    assert [c.change_id for c in conflict.candidates] == [moved.change_id]


def test_a_removal_beside_the_delete_keeps_it_open_with_nothing_left_to_show():
    created = change("dev-a", 10, set={"title": "Drains"}, ops=[Add(field="tags", value="drains")])
    deleted = change("dev-x", 20, saw=(created,), ops=[Delete()])
    removed = change("dev-y", 25, saw=(created,), ops=[Remove(field="tags", value="drains")])

    (conflict,) = merge.conflicts(in_every_order([created, deleted, removed]))

    assert (conflict.kind, conflict.candidates) == ("deleted", [])
    settled = change("dev-sup", 40, saw=(created, deleted, removed), ops=[Delete()])
    assert merge.conflicts(merged([created, deleted, removed, settled])) == []


def test_removing_the_value_added_beside_the_delete_does_not_settle_it():
    created = change("dev-a", 10, set={"title": "Drains"})
    deleted = change("dev-x", 20, saw=(created,), ops=[Delete()])
    added = change("dev-y", 25, saw=(created,), ops=[Add(field="tags", value="urgent")])
    removed = change("dev-x", 30, saw=(added,), ops=[Remove(field="tags", value="urgent")])

    (conflict,) = merge.conflicts(in_every_order([created, deleted, added, removed]))

    assert (conflict.kind, conflict.candidates) == ("deleted", [])


def test_a_state_stored_before_edits_were_counted_keeps_its_deleted_conflict():
    created = change("dev-a", 10, set={"title": "Drains"})
    deleted = change("dev-a", 20, ops=[Delete()])
    beside = change("dev-b", 25, saw=(created,), set={"summary": "Met the owner"})
    today = merged([created, deleted, beside])
    # What an older version stored: no count of edits, no mark on the delete.
    older = msgspec.structs.replace(
        today,
        edits=None,
        deleted=[msgspec.structs.replace(d, contested=False) for d in today.deleted],
    )

    assert merge.conflicts(older) == merge.conflicts(today) != []
    later = change("dev-a", 30, set={"title": "Drains (duplicate)"})
    after = merge.apply_change(older, later).state
    assert after is not None and after.edits is not None
    assert merge.conflicts(after) == merge.conflicts(merged([created, deleted, beside, later]))


# -- rejections --------------------------------------------------------------------------------

CREATED = change(
    "dev-a",
    10,
    set={"title": "Drains overflow", "status": "new"},
    ops=[Add(field="tags", value="drains"), Append(field="notes", entry=note("n-1", "first"))],
)


def later(*, set=None, ops=(), record=CASE, at=20) -> Change:
    """dev-a's next change to the record (a new change id, even when the stamp is reused)."""
    made = change("dev-a", at, set=set, ops=ops, record=record)
    return msgspec.structs.replace(made, change_id=f"dev-a-next@{at}")


def refused(name: str, bad: Change, reason: Reason) -> Any:
    return pytest.param(bad, reason, id=name)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        refused(
            "unknown-type",
            later(record=("meeting", "k-1"), set={"title": "x"}),
            Reason.UNKNOWN_RECORD_TYPE,
        ),
        refused("set-unknown-field", later(set={"colour": "red"}), Reason.UNKNOWN_FIELD),
        refused(
            "add-unknown-field",
            later(ops=[Add(field="colour", value="red")]),
            Reason.UNKNOWN_FIELD,
        ),
        refused(
            "append-unknown-field",
            later(ops=[Append(field="minutes", entry=note("n-2", "x"))]),
            Reason.UNKNOWN_FIELD,
        ),
        refused("str-for-int", later(set={"households": "many"}), Reason.INVALID_VALUE),
        refused("not-a-choice", later(set={"priority": "whenever"}), Reason.INVALID_VALUE),
        refused("int-for-str", later(set={"title": 42}), Reason.INVALID_VALUE),
        refused("too-long", later(set={"title": "x" * 201}), Reason.INVALID_VALUE),
        refused("bad-element", later(ops=[Add(field="tags", value=7)]), Reason.INVALID_VALUE),
        refused(
            "bad-entry",
            later(ops=[Append(field="notes", entry={"entry_id": "n-2"})]),
            Reason.INVALID_VALUE,
        ),
        refused("set-a-set", later(set={"tags": ["drains"]}), Reason.WRONG_OPERATION),
        refused("set-a-log", later(set={"notes": []}), Reason.WRONG_OPERATION),
        refused(
            "add-to-lww",
            later(ops=[Add(field="title", value="x")]),
            Reason.WRONG_OPERATION,
        ),
        refused(
            "remove-from-lww",
            later(ops=[Remove(field="priority", value="low")]),
            Reason.WRONG_OPERATION,
        ),
        refused(
            "append-to-set",
            later(ops=[Append(field="tags", entry="drains")]),
            Reason.WRONG_OPERATION,
        ),
        refused(
            "add-to-log",
            later(ops=[Add(field="notes", value=note("n-2", "x"))]),
            Reason.WRONG_OPERATION,
        ),
        refused("empty", later(), Reason.EMPTY_CHANGE),
        # A stamp this device already used on the record, or an older one.
        refused("same-stamp", later(set={"title": "again"}, at=10), Reason.STALE_STAMP),
        refused("older-stamp", later(set={"title": "older"}, at=5), Reason.STALE_STAMP),
    ],
)
def test_a_change_that_can_never_apply_gets_its_reason_and_changes_nothing(bad, reason):
    assert rejection(merged([CREATED]), bad) == reason


def test_a_refused_choice_is_not_quoted_in_the_detail():
    # The detail is kept in clear (quarantine), out of reach of erasure: a name typed into
    # a fixed-choice field must not be copied there.
    outcome = merge.apply_change(merged([CREATED]), later(set={"priority": "He Jianguo"}))
    assert outcome.rejected is not None
    assert outcome.rejected.detail == "priority: Invalid enum value - at `$`"


def test_a_change_applies_whole_or_not_at_all():
    state = merged([CREATED])
    mixed = later(
        set={"title": "Renamed", "priority": "high"},
        ops=[Add(field="tags", value="grease"), Append(field="tags", entry="oops")],
    )

    assert rejection(state, mixed) == Reason.WRONG_OPERATION
    record = merge.materialize(state)
    assert (record.title, record.priority, record.tags) == ("Drains overflow", "normal", ["drains"])


# -- arrival order must not matter: regressions --------------------------------------------------


def test_a_deleted_conflict_lists_its_candidates_in_one_order_whatever_the_arrival_order():
    # One change writes two fields; the order in which fields were first written
    # on the server differs with arrival order, and must not leak into the conflict.
    priority = change("dev-b", 5, set={"priority": "high"})
    both = change("dev-a", 6, set={"title": "Drains overflow", "priority": "low"})
    deleted = change("dev-c", 7, ops=[Delete()])

    assert outcomes([priority, both, deleted]) == outcomes([both, priority, deleted])


def test_one_signature_appended_on_two_devices_gives_one_result_in_any_order():
    # Scenario 2: the same signature entry reaches the server from two phones.
    draft = agreement("dev-o", 1, set={"terms": "Trap within 14 days"})
    on_a = agreement(
        "dev-a", 10, saw=(draft,), ops=[Append(field="signatures", entry=signature("p-owner"))]
    )
    other = agreement(
        "dev-c", 20, saw=(draft,), ops=[Append(field="signatures", entry=signature("p-1"))]
    )
    on_b = agreement(
        "dev-b", 30, saw=(draft,), ops=[Append(field="signatures", entry=signature("p-owner"))]
    )
    # dev-d had pulled the signature from dev-b only: the terms are sealed for it.
    edit = agreement("dev-d", 40, saw=(draft, on_b), set={"terms": "Trap within 30 days"})

    a_first = outcomes([draft, on_a, other, on_b, edit])
    b_first = outcomes([draft, on_b, edit, other, on_a])

    assert a_first == b_first
    assert b_first[2] == {edit.change_id: Reason.AGREEMENT_SEALED}


def test_one_signer_signing_on_two_devices_gives_one_result_in_any_order():
    # "Nobody signs twice": the owner signs on both mediators' phones, offline.
    draft = agreement("dev-o", 1, set={"terms": "Trap within 14 days"})
    on_a = agreement(
        "dev-a",
        10,
        saw=(draft,),
        ops=[Append(field="signatures", entry=signature("p-owner", "2026-11-18T10:00:00Z"))],
    )
    on_b = agreement(
        "dev-b",
        20,
        saw=(draft,),
        ops=[Append(field="signatures", entry=signature("p-owner", "2026-11-18T11:00:00Z"))],
    )

    assert outcomes([draft, on_a, on_b]) == outcomes([draft, on_b, on_a])


def test_a_log_reads_in_one_order_whatever_the_arrival_order():
    # Two entries of one change tie on their stamp and device; a repeat of the second
    # from another device, arriving first, used to put it first.
    a = change(
        "dev-a",
        10,
        ops=[
            Append(field="notes", entry=note("n-9", "visited no. 14")),
            Append(field="notes", entry=note("n-10", "owner agrees to a trap")),
        ],
    )
    b = change(
        "dev-b", 20, ops=[Append(field="notes", entry=note("n-10", "owner agrees to a trap"))]
    )

    for order in ([a, b], [b, a]):
        assert [n.entry_id for n in merge.materialize(merged(order)).notes] == ["n-9", "n-10"]
