"""Blind indexes: the same person found across cases, with nothing about them stored in clear."""

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from schemas import Add
from schemas.records import Party
from server.service import SyncService
from server.storage.migrations import migrate
from server.storage.people import digests, normal_name, normal_phone, repeats
from tests.server.test_app import GONGSHU


def test_phone_numbers_match_whatever_way_they_were_typed():
    typed = ["+86 138 0000 1234", "13800001234", "138-0000-1234", "0086 13800001234"]
    assert {normal_phone(t) for t in typed} == {"13800001234"}
    assert normal_phone("12") is None


def test_a_landline_is_one_number_with_its_trunk_0_or_with_the_country_code():
    hangzhou = ["0571-8765 4321", "+86 571 8765 4321", "0086 571 87654321", "+86 (0)571 87654321"]
    assert {normal_phone(t) for t in hangzhou} == {"57187654321"}
    beijing = ["010 1234 5678", "+86 10 1234 5678", "861012345678"]
    assert {normal_phone(t) for t in beijing} == {"1012345678"}
    # An extension is left out, written either way.
    extended = ["0571-8765 4321 转 8", "+86 571 8765 4321 ext. 8", "0571 87654321 x8"]
    assert {normal_phone(t) for t in extended} == {"57187654321"}
    # A local number without its area code stays as typed, whatever its first digits.
    assert normal_phone("8612 3456") == "86123456"
    assert normal_phone("8765 4321") == "87654321"


def test_names_match_across_case_spacing_and_width():
    assert normal_name("HE  Jianguo") == normal_name("he jianguo") == normal_name("ＨＥ Jianguo")
    assert normal_name("何建国") == normal_name("何 建国")


@given(st.text(min_size=1, max_size=30), st.binary(min_size=32, max_size=32))
def test_digests_depend_on_the_index_key(name, key):
    party = Party(name=name)
    other_key = bytes(b ^ 1 for b in key)
    assert digests(key, party) == digests(key, Party(name=name))
    if normal_name(name):
        assert digests(key, party) != digests(other_key, party)


def test_scenario_5_a_returning_household_is_flagged_on_the_new_case(office):
    zhao, sun = office.enroll("mediator"), office.enroll("mediator")
    zhao.push(
        [
            zhao.change("party", "p-he", {"name": "He Jianguo", "phone": "+86 138 0000 1234"}),
            zhao.change(
                "case", "k-he-1", {"location": GONGSHU}, [Add(field="parties", value="p-he")]
            ),
            zhao.change("party", "p-wu", {"name": "Wu Min"}),
            zhao.change(
                "case", "k-wu", {"location": GONGSHU}, [Add(field="parties", value="p-wu")]
            ),
        ]
    )
    sun.push(
        [
            sun.change("party", "p-he-again", {"name": "HE Jianguo", "phone": "13800001234"}),
            sun.change(
                "case", "k-he-2", {"location": GONGSHU}, [Add(field="parties", value="p-he-again")]
            ),
            sun.change("party", "p-wu-2", {"name": "wu min", "phone": "13911112222"}),
            sun.change(
                "case", "k-wu-2", {"location": GONGSHU}, [Add(field="parties", value="p-wu-2")]
            ),
        ]
    )
    (he,) = repeats(office.store, "k-he-2")
    assert (he.case_id, he.party_id, he.matched_by, he.strong) == (
        "k-he-1",
        "p-he",
        ("name", "phone"),
        True,
    )
    (wu,) = repeats(office.store, "k-wu-2")
    assert (wu.case_id, wu.matched_by, wu.strong) == ("k-wu", ("name",), False)
    assert repeats(office.store, "k-he-1")[0].case_id == "k-he-2"
    # The index holds a keyed digest per value, nothing else.
    stored = office.store.db.execute("SELECT kind, digest FROM people_index").fetchall()
    assert sorted(kind for kind, _ in stored) == ["name"] * 4 + ["phone"] * 3
    assert all(len(digest) == 64 and int(digest, 16) >= 0 for _, digest in stored)


def test_an_upgraded_office_finds_a_landline_typed_two_ways(office):
    zhao, sun = office.enroll("mediator"), office.enroll("mediator")
    for phone, n, number in ((zhao, 1, "0571-8765 4321"), (sun, 2, "+86 571 8765 4321")):
        phone.push(
            [
                phone.change("party", f"p-{n}", {"name": f"Tenant {n}", "phone": number}),
                phone.change(
                    "case", f"k-{n}", {"location": GONGSHU}, [Add(field="parties", value=f"p-{n}")]
                ),
            ]
        )
    db = office.store.db
    assert [r.case_id for r in repeats(office.store, "k-2")] == ["k-1"]
    # What an older office stored: the digest of the number with its trunk 0, which
    # matched no other way of writing it, so the later case was no repeat.
    old = hmac.new(office.keys.index_key, b"phone\x00057187654321", hashlib.sha256).hexdigest()
    with office.store.transaction():
        db.execute(
            "UPDATE people_index SET digest = ? WHERE kind = 'phone' AND record_id = 'p-1'", [old]
        )
        db.execute("UPDATE case_index SET repeat = 0")
    assert repeats(office.store, "k-2") == []

    db.execute("DELETE FROM migrations WHERE name = '0015_phone_digests'")
    assert migrate(db) == ["0015_phone_digests"]
    service = office.http.app.state.service
    SyncService(service.settings, office.store, office.keys, service.clock, office.wall)

    (found,) = repeats(office.store, "k-2")
    assert (found.case_id, found.matched_by) == ("k-1", ("phone",))
    assert db.execute("SELECT case_id FROM case_index WHERE repeat").fetchall() == [("k-2",)]
