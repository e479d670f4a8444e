"""The repeat-petition flag in `case_index`, kept in step by every batch and erasure.

Checked against a model: a case is a repeat when another case received
before it (then by id) holds one of its parties, or a party with the same
phone number.
"""

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Add, Remove
from server.erasure import erase_case
from server.storage import repeats
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU

CASES = [f"k-{n}" for n in range(4)]
PARTIES = [f"p-{n}" for n in range(4)]
PHONES = [None, "13800000001", "+86 138 0000 0002"]

link = st.tuples(st.just("link"), st.sampled_from(CASES), st.sampled_from(PARTIES))
unlink = st.tuples(st.just("unlink"), st.sampled_from(CASES), st.sampled_from(PARTIES))
phone = st.tuples(st.just("phone"), st.sampled_from(PARTIES), st.sampled_from(PHONES))
# A batch of steps, and whether the office's clock moves on before it (ties are ranked by id).
batches = st.lists(
    st.tuples(st.booleans(), st.lists(st.one_of(link, unlink, phone), min_size=1, max_size=4)),
    min_size=1,
    max_size=6,
)


class Model:
    def __init__(self):
        self.received: dict[str, tuple[int, str]] = {}
        self.links: dict[str, set[str]] = {}
        self.phones: dict[str, str | None] = {}

    def people(self, case):
        parties = self.links.get(case, set())
        return {("party", p) for p in parties} | {
            ("phone", self.phones[p].replace(" ", "")[-11:]) for p in parties if self.phones.get(p)
        }

    def repeats(self):
        return {
            case
            for case, rank in self.received.items()
            if any(
                other != case and earlier < rank and self.people(case) & self.people(other)
                for other, earlier in self.received.items()
            )
        }


def flagged(office):
    return {c for (c,) in office.store.db.execute("SELECT case_id FROM case_index WHERE repeat")}


def play(office, phone, model, steps, batch_id):
    changes = []
    for kind, first, second in steps:
        if kind == "phone":
            changes.append(phone.change("party", first, {"name": "Wang", "phone": second}))
            model.phones[first] = second
            continue
        op = Add if kind == "link" else Remove
        changes.append(
            phone.change("case", first, {"location": GONGSHU}, [op(field="parties", value=second)])
        )
        model.received.setdefault(first, (office.wall.ms, first))
        parties = model.links.setdefault(first, set())
        (parties.add if kind == "link" else parties.discard)(second)
    answer = phone.push(changes, batch_id=batch_id)
    assert answer.status_code == 200, answer.content


@settings(max_examples=60, deadline=None)
@given(batches)
def test_the_flag_follows_every_batch(plan):
    with tempfile.TemporaryDirectory() as folder, running_office(Path(folder)) as office:
        phone = office.enroll("mediator")
        model = Model()
        for n, (tick, steps) in enumerate(plan):
            if tick:
                office.wall.tick()
            play(office, phone, model, steps, f"b-{n}")
            assert flagged(office) == model.repeats()
        # Kept in step, it is what working everything out from scratch gives.
        with office.store.transaction():
            repeats.refresh(office.store.db, None)
        assert flagged(office) == model.repeats()


def test_erasing_the_first_case_makes_the_next_one_first(office):
    phone = office.enroll("mediator")
    model = Model()
    for n, case in enumerate(["k-0", "k-1", "k-2"]):
        office.wall.tick()
        play(office, phone, model, [("phone", f"p-{n}", PHONES[1]), ("link", case, f"p-{n}")], case)
    assert flagged(office) == {"k-1", "k-2"}
    erase_case(office.store, "k-0", "court order", "admin", office.wall.ms)
    assert flagged(office) == {"k-2"}
