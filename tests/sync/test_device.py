"""The device replica: edits carry their causal context; received changes apply once."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from schemas import Add, Reason
from sync import merge
from sync.clock import Clock, pack
from sync.device import Replica
from tests.conftest import WALL_MS, Wall

HOUR_MS = 60 * 60 * 1000
CASE = ("case", "k-1")


def replica(device_id: str, wall: Wall) -> Replica:
    ids = itertools.count(1)
    return Replica(device_id, Clock(wall), new_id=lambda: f"{device_id}.{next(ids)}")


def test_an_edit_is_stamped_applied_locally_and_queued():
    wall = Wall(WALL_MS)
    phone = replica("dev-a", wall)

    first = phone.edit(*CASE, set={"title": "Drains overflow"})
    wall.ms -= HOUR_MS  # the phone's clock is set back an hour
    second = phone.edit(*CASE, ops=[Add(field="tags", value="drains")])

    assert (first.change_id, first.device_id, first.hlc) == ("dev-a.1", "dev-a", pack(WALL_MS))
    assert second.hlc > first.hlc
    assert first.seen == second.seen == {}  # its own changes need no listing
    assert phone.outbox == [first, second]
    record = phone.record(*CASE)
    assert (record.title, record.tags) == ("Drains overflow", ["drains"])


def test_an_edit_carries_what_the_device_had_seen_of_the_record():
    a, b = replica("dev-a", Wall(WALL_MS)), replica("dev-b", Wall(WALL_MS))
    made = a.edit(*CASE, set={"title": "Drains overflow"})
    a.edit("case", "k-2", set={"title": "Another case"})
    b.receive(made)

    edit = b.edit(*CASE, set={"priority": "high"})
    other = b.edit("case", "k-2", set={"priority": "low"})

    assert edit.seen == {"dev-a": made.hlc}
    assert other.seen == {}  # it never saw dev-a's change to k-2


def test_an_edit_that_can_never_apply_raises_and_leaves_nothing_behind():
    phone = replica("dev-a", Wall(WALL_MS))
    phone.edit(*CASE, set={"status": "new"})

    with pytest.raises(merge.Rejected) as refused:
        phone.edit(*CASE, set={"status": "closed"})

    assert refused.value.reason == Reason.ILLEGAL_TRANSITION
    assert len(phone.outbox) == 1
    assert phone.record(*CASE).status == "new"


def test_a_received_change_applies_once():
    a, b = replica("dev-a", Wall(WALL_MS)), replica("dev-b", Wall(WALL_MS))
    made = a.edit(*CASE, ops=[Add(field="tags", value="drains")])

    assert b.receive(made) is None
    state = b.states[CASE]
    assert b.receive(made) is None

    assert b.states[CASE] is state
    assert b.record(*CASE).tags == ["drains"]
    assert b.outbox == []  # received changes are not pushed again


def test_receiving_a_change_that_can_never_apply_says_why_and_keeps_the_record():
    a, b = replica("dev-a", Wall(WALL_MS)), replica("dev-b", Wall(WALL_MS))
    b.edit(*CASE, set={"title": "Drains overflow"})
    before = b.record(*CASE)
    # What an outdated client of dev-a might send: a value its own check would refuse.
    made = a.edit(*CASE, set={"households": 10})
    bad = msgspec.structs.replace(made, set={"households": -1})

    assert b.receive(bad).reason == Reason.INVALID_VALUE
    assert b.record(*CASE) == before
    assert bad.change_id not in b.applied


def test_after_receiving_a_device_with_a_slow_clock_makes_edits_that_sort_later():
    fast = replica("dev-a", Wall(WALL_MS))
    slow = replica("dev-b", Wall(WALL_MS - 5 * HOUR_MS))
    made = fast.edit(*CASE, set={"title": "Drains overflow"})

    slow.receive(made)
    answer = slow.edit(*CASE, set={"title": "Drains fixed"})

    assert answer.hlc > made.hlc
    assert fast.receive(answer) is None
    assert fast.record(*CASE).title == slow.record(*CASE).title == "Drains fixed"
    assert merge.conflicts(fast.states[CASE]) == []


def test_two_phones_that_exchange_their_changes_show_the_same_case():
    # Scenario 3: two mediators, one case, no signal; then both sync.
    a, b = replica("dev-a", Wall(WALL_MS)), replica("dev-b", Wall(WALL_MS + 3_000))
    created = a.edit(*CASE, set={"title": "Drains overflow", "status": "assigned"})
    b.receive(created)
    a.edit(*CASE, set={"summary": "10 households", "priority": "urgent"})
    b.edit(*CASE, set={"priority": "high"}, ops=[Add(field="tags", value="drains")])

    for change in b.outbox:
        assert a.receive(change) is None
    for change in a.outbox:
        assert b.receive(change) is None

    assert a.record(*CASE) == b.record(*CASE)
    record = a.record(*CASE)
    assert (record.summary, record.tags) == ("10 households", ["drains"])
    (conflict,) = merge.conflicts(a.states[CASE])
    assert conflict == merge.conflicts(b.states[CASE])[0]
    assert conflict.field == "priority"
    assert {(c.value, c.device_id) for c in conflict.candidates} == {
        ("urgent", "dev-a"),
        ("high", "dev-b"),
    }
