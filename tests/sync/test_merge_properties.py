"""Merge laws, checked on generated offline histories delivered to a real SQLite store.

DESIGN.md: "the same set of changes, delivered in any order that respects
causality, any number of times, gives the same state and the same
conflicts"; "no change is ever dropped"; "a device clock that is hours off
must not let a stale edit win". The histories and deliveries come from
`tests.sync.causal`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Add, Append, Change, Delete, Remove, Restore
from schemas.records import Note, Signature, Visit
from sync import merge
from sync.clock import Clock
from sync.device import Replica
from tests.sync.causal import (
    HOUR_MS,
    MINUTE_MS,
    SERVER_WALL_MS,
    TITLES,
    Timeline,
    delivered,
    deliveries,
    had_seen,
    histories,
    logged,
    new_device,
    normalized,
    pull,
    quarantine_of,
    records_of,
)

# 500 examples of every law, in CI too: decorator settings win over any loaded profile.
settings.register_profile(
    "lianxin-merge-laws",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
merge_laws = settings(settings.get_profile("lianxin-merge-laws"))


@merge_laws
@given(data=st.data())
def test_any_causal_delivery_gives_the_same_records_conflicts_and_quarantine(data):
    history = data.draw(histories(), label="history")
    first = data.draw(deliveries(history.changes), label="first delivery")
    second = data.draw(deliveries(history.changes), label="second delivery")

    with delivered(first) as one, delivered(second) as other:
        assert not any(r.clamped for r in one.results + other.results), "no honest stamp is absurd"
        assert records_of(other.store.all_states()) == records_of(one.store.all_states())
        assert normalized(other.store.open_conflicts()) == normalized(one.store.open_conflicts())
        assert quarantine_of(other.store) == quarantine_of(one.store)
        # The conflicts table, kept up to date change by change, is the records' conflicts.
        worked_out = [c for state in one.store.all_states() for c in merge.conflicts(state)]
        assert normalized(one.store.open_conflicts()) == normalized(worked_out)


@merge_laws
@given(data=st.data())
def test_no_submitted_value_disappears(data):
    history = data.draw(histories(), label="history")
    batches = data.draw(deliveries(history.changes), label="delivery")

    with delivered(batches) as server:
        store = server.store
        log = logged(store)
        logged_ids = [c.change_id for c in log]
        quarantine = quarantine_of(store)
        assert len(logged_ids) == len(set(logged_ids)), "a change was logged twice"
        assert not set(logged_ids) & set(quarantine)
        assert set(logged_ids) | set(quarantine) == {c.change_id for c in history.changes}
        # Refused exactly the changes built to be refused, each for its own reason.
        assert quarantine == history.expected_rejections
        assert all(row.detail for row in store.quarantined())
        # The log keeps what the device sent, not a re-encoding of something else.
        sent = {c.change_id: c for c in history.changes}
        assert all(change == sent[change.change_id] for change in log)

        states = {(s.record_type, s.record_id): s for s in store.all_states()}
        open_conflicts = store.open_conflicts()
        lost = [problem for c in log for problem in lost_values(c, log, states, open_conflicts)]
        assert lost == []


LOG_ENTRY_TYPES = {"notes": Note, "visits": Visit, "signatures": Signature}


def lost_values(change: Change, log: list[Change], states: dict, open_conflicts: list) -> list[str]:
    """Every value `change` submitted that neither shows, nor is in a conflict, nor was replaced."""
    key = (change.record_type, change.record_id)
    state = states[key]
    record = merge.materialize(state)
    problems = []

    def replaced(touches) -> bool:
        """A later logged change on the record, whose device had seen `change`, touched it too."""
        return any(
            other.change_id != change.change_id
            and (other.record_type, other.record_id) == key
            and had_seen(other, change)
            and touches(other)
            for other in log
        )

    def in_conflict(field: str, value: Any) -> bool:
        return any(
            (c.record_type, c.record_id, c.field) == (*key, field)
            and any(x.change_id == change.change_id and x.value == value for x in c.candidates)
            for c in open_conflicts
        )

    for name, value in change.set.items():
        if getattr(record, name) == value or in_conflict(name, value):
            continue
        if not replaced(lambda other, name=name: name in other.set):
            problems.append(f"{change.change_id}: {name}={value!r} is gone from {key}")

    for position, op in enumerate(change.ops):
        later_ops = change.ops[position + 1 :]
        match op:
            case Add(field=name, value=element):

                def same_element(o, name=name, element=element) -> bool:
                    return isinstance(o, Add | Remove) and (o.field, o.value) == (name, element)

                if element in getattr(record, name) or any(map(same_element, later_ops)):
                    continue
                if not replaced(lambda other, same=same_element: any(map(same, other.ops))):
                    problems.append(f"{change.change_id}: {element!r} is gone from {key} {name}")
            case Append(field=name, entry=entry):
                if msgspec.convert(entry, LOG_ENTRY_TYPES[name]) not in getattr(record, name):
                    problems.append(f"{change.change_id}: {entry!r} is gone from {key} {name}")
            case Delete():

                def deletes(o) -> bool:
                    return isinstance(o, Delete | Restore)

                if merge.is_deleted(state) or any(map(deletes, later_ops)):
                    continue
                if not replaced(lambda other: any(map(deletes, other.ops))):
                    problems.append(f"{change.change_id}: the delete of {key} is gone")
    return problems


@merge_laws
@given(data=st.data())
def test_devices_that_pull_the_log_show_what_the_server_shows(data):
    # The same merge code runs on both sides: a device that takes in the log, in
    # server order, shows the server's records and conflicts.
    history = data.draw(histories(), label="history")
    batches = data.draw(deliveries(history.changes), label="delivery")
    assert history.receive_rejections == [], "a device refused a change another device made"

    with delivered(batches) as server:
        device = Replica("dev-new", Clock(lambda: SERVER_WALL_MS))
        for change in logged(server.store):
            assert device.receive(change) is None, change
        assert records_of(list(device.states.values())) == records_of(server.store.all_states())
        device_conflicts = [c for s in device.states.values() for c in merge.conflicts(s)]
        assert normalized(server.store.open_conflicts()) == normalized(device_conflicts)


KINDS = ["value", "status", "remove", "restore"]


@merge_laws
@given(
    kind=st.sampled_from(KINDS),
    earlier_skew=st.integers(-2 * HOUR_MS, 10 * HOUR_MS),
    behind=st.integers(HOUR_MS, 12 * HOUR_MS),
    clock_lost=st.booleans(),
    data=st.data(),
)
def test_a_causally_later_edit_wins_even_from_a_clock_hours_behind(
    kind, earlier_skew, behind, clock_lost, data
):
    timeline = Timeline()
    earlier = new_device("dev-a", timeline, earlier_skew)
    later = new_device("dev-b", timeline, earlier_skew - behind)
    bystander = new_device("dev-c", timeline, data.draw(st.integers(-HOUR_MS, HOUR_MS)))
    case = ("case", "k-1")

    def edit(device, key=case, **change):
        device.log.append(device.replica.edit(*key, **change))

    def noise():
        # Concurrent edits elsewhere: other fields of the case, and another case.
        for _ in range(data.draw(st.integers(0, 2))):
            edit(bystander, set={"summary": data.draw(st.sampled_from(["a", "b", "c"]))})
            edit(bystander, ("case", "k-2"), set={"title": data.draw(st.sampled_from(TITLES))})
            timeline.now_ms += data.draw(st.integers(0, 5 * MINUTE_MS))

    match kind:
        case "value":
            edit(earlier, set={"title": TITLES[0]})
        case "status":
            edit(earlier, set={"status": "assigned"})
            edit(earlier, set={"status": "resolved"})
        case "remove":
            edit(earlier, set={"title": TITLES[0]}, ops=[Add(field="tags", value="drains")])
        case "restore":
            edit(earlier, set={"title": TITLES[0]})
            edit(earlier, ops=[Delete()])
    noise()
    pull(later, earlier)
    if clock_lost:
        # The phone was restored from a backup: its clock kept no memory of the
        # stamps it took in, and its wall time is hours behind.
        later.replica.clock = Clock(later.wall)
    noise()
    match kind:
        case "value":
            edit(later, set={"title": TITLES[1]})
        case "status":
            # Rank would prefer "resolved"; causality must decide instead.
            edit(later, set={"status": "in_mediation"})
        case "remove":
            edit(later, ops=[Remove(field="tags", value="drains")])
        case "restore":
            edit(later, ops=[Restore()])
    # The earlier device goes on with another field, concurrently.
    edit(earlier, set={"priority": "high"})
    noise()
    stale_stamp, later_stamp = earlier.log[-2].hlc, later.log[-1].hlc
    if clock_lost:
        assert later_stamp < stale_stamp, "the later edit must carry the smaller stamp"

    changes = earlier.log + later.log + bystander.log
    with delivered(data.draw(deliveries(changes), label="delivery")) as server:
        states = {(s.record_type, s.record_id): s for s in server.store.all_states()}
        record = merge.materialize(states[case])
        fields = {c.field for c in server.store.open_conflicts() if c.record_id == "k-1"}
        match kind:
            case "value":
                assert record.title == TITLES[1]
                assert "title" not in fields
            case "status":
                assert record.status == "in_mediation"
                assert "status" not in fields
            case "remove":
                assert "drains" not in record.tags
            case "restore":
                assert not merge.is_deleted(states[case])
                assert merge.DELETED_FIELD not in fields
        assert record.priority == "high"


@merge_laws
@given(data=st.data())
def test_a_change_moves_only_the_conflicts_of_its_fields_and_of_the_delete(data):
    # The engine writes a change's conflict rows from `merge.conflicts_touching` of the
    # record before and after it, so every other conflict must stay as it was.
    history = data.draw(histories(), label="history")
    delivery = data.draw(deliveries(history.changes), label="delivery")
    states: dict[tuple[str, str], Any] = {}
    for change in (change for batch in delivery for change in batch):
        key = (change.record_type, change.record_id)
        before = states.get(key)
        outcome = merge.apply_change(before, change)
        if outcome.state is None:
            continue
        after = outcome.state

        def touched(conflict, change=change):
            return conflict.field in change.set or conflict.field == merge.DELETED_FIELD

        assert merge.conflicts_touching(change, after) == [
            c for c in merge.conflicts(after) if touched(c)
        ]
        was = merge.conflicts(before) if before is not None else []
        assert [c for c in merge.conflicts(after) if not touched(c)] == [
            c for c in was if not touched(c)
        ]
        states[key] = after
