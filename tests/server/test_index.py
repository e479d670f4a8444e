"""`case_index`, kept in step by every batch: the rows the console lists and counts by.

A batch rewrites only the rows of cases it created or whose indexed fields it
edited (`server.storage.index.reindexed`); whatever the batches were, every
row must read as if built from scratch from the cases' current states.
"""

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Add, Append, Case, Remove
from server.storage.index import reindexed
from sync.access import org_unit
from sync.merge import materialize
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU, XIHU

CASES = ["k-0", "k-1", "k-2"]
EDITS = {
    "title": st.sampled_from(["Leak", "Noise"]),  # not indexed
    "summary": st.sampled_from(["Ceiling stained", "Music at night"]),  # not indexed
    "priority": st.sampled_from(["low", "normal", "urgent"]),
    "households": st.integers(0, 40),
    "category": st.sampled_from(["neighbours", "property"]),
    "due": st.sampled_from([None, "2026-12-01", "2027-01-15"]),
    "location": st.sampled_from([GONGSHU, XIHU]),
}
field_edit = st.sampled_from(sorted(EDITS)).flatmap(
    lambda name: EDITS[name].map(lambda value: ("set", name, value))
)
note = st.integers(0, 5).map(lambda n: ("note", "notes", n))
tag = st.tuples(st.sampled_from(["add", "remove"]), st.just("tags"), st.sampled_from(["a", "b"]))
mediator = st.tuples(st.sampled_from(["add", "remove"]), st.just("mediators"), st.just("u-x"))
edits = st.lists(
    st.tuples(st.sampled_from(CASES), st.one_of(field_edit, note, tag, mediator)),
    min_size=1,
    max_size=6,
)


def change_for(phone, case_id, edit):
    kind, name, value = edit
    match kind:
        case "set":
            return phone.change("case", case_id, {name: value})
        case "note":
            entry = {
                "entry_id": f"n-{case_id}-{value}",
                "at": "2026-11-20T09:00:00Z",
                "by": phone.enrollment.user_id,
                "text": "seen",
            }
            return phone.change("case", case_id, ops=[Append(field=name, entry=entry)])
        case "add":
            return phone.change("case", case_id, ops=[Add(field=name, value=value)])
    return phone.change("case", case_id, ops=[Remove(field=name, value=value)])


def index_rows(store):
    rows = store.db.execute(
        "SELECT case_id, status, org_unit, category, mediators, households, priority, due"
        " FROM case_index ORDER BY case_id"
    )
    return {row[0]: row[1:] for row in rows}


def rebuilt_rows(store):
    rows = {}
    for state in store.all_states():
        case = materialize(state)
        assert isinstance(case, Case)
        rows[state.record_id] = (
            case.status,
            org_unit(case.location),
            case.category,
            json.dumps(sorted(case.mediators)),
            case.households,
            case.priority,
            case.due.isoformat() if case.due else None,
        )
    return rows


@settings(max_examples=60, deadline=None)
@given(st.lists(edits, min_size=1, max_size=5))
def test_every_index_row_reads_as_built_from_the_current_state(batches):
    with tempfile.TemporaryDirectory() as folder, running_office(Path(folder)) as office:
        phone = office.enroll("mediator")
        created = [phone.change("case", c, {"location": GONGSHU, "title": c}) for c in CASES]
        assert phone.push(created, batch_id="b-0").status_code == 200
        for n, batch in enumerate(batches, start=1):
            changes = [change_for(phone, case_id, edit) for case_id, edit in batch]
            answer = phone.push(changes, batch_id=f"b-{n}")
            assert answer.status_code == 200, answer.content
            assert index_rows(office.store) == rebuilt_rows(office.store)


def test_a_note_or_a_summary_leaves_the_index_row_alone_a_status_move_does_not(office):
    phone = office.enroll("mediator")
    note = {"entry_id": "n-1", "at": "2026-11-20T09:00:00Z", "by": "u-1", "text": "visited"}
    summary = phone.change("case", "k-1", {"summary": "Ceiling stained"})
    noted = phone.change("case", "k-1", ops=[Append(field="notes", entry=note)])
    moved = phone.change("case", "k-1", {"status": "assigned"})
    assert reindexed([summary, noted], new=set()) == set()
    assert reindexed([summary, noted], new={("case", "k-1")}) == {("case", "k-1")}
    assert reindexed([summary, moved], new=set()) == {("case", "k-1")}
