"""Informants appear by pseudonym; only a supervisor of their units re-identifies, on the record."""

import msgspec
import pytest

from server import audit
from server.pseudonyms import pseudonym, reidentify
from sync.errors import Forbidden
from tests.server.test_app import GONGSHU, decode


def warning(phone, warning_id, informant):
    return phone.change(
        "warning",
        warning_id,
        {"description": "Neighbours shouting", "location": GONGSHU, "informant": informant},
    )


def test_an_informants_warnings_carry_its_pseudonym_and_nothing_else_of_it(office):
    ma = office.enroll("informant", name="Ma Lihua")
    alias = ma.enrollment.pseudonym
    assert alias == pseudonym(office.keys.pseudonym_key, ma.enrollment.user_id)
    assert alias.startswith("inf-") and ma.enrollment.user_id not in alias
    assert decode(ma.push([warning(ma, "w-1", alias)]))["results"][0]["status"] == "applied"
    # Its own user id, or another informant's pseudonym, is refused.
    for n, other in enumerate([ma.enrollment.user_id, "inf-someoneelse"]):
        (result,) = decode(ma.push([warning(ma, f"w-{n + 2}", other)], f"b-{n + 2}"))["results"]
        assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    # A mediator may not claim to be an informant either.
    sun = office.enroll("mediator")
    (result,) = decode(sun.push([warning(sun, "w-9", alias)]))["results"]
    assert result["reason"] == "not_permitted"

    chen = office.enroll("supervisor", org_units=["Hangzhou"])
    items, _ = chen.pull_all()
    pulled = b"".join(msgspec.msgpack.encode(item) for item in items)
    assert alias.encode() in pulled
    assert ma.enrollment.user_id.encode() not in pulled and b"Ma Lihua" not in pulled


def test_the_same_informant_keeps_its_pseudonym_on_a_second_phone(office):
    ma = office.enroll("informant", name="Ma Lihua")
    code = office.directory.issue_code(ma.enrollment.user_id, office.wall.ms, 60_000)
    assert office.enroll_with(code).enrollment.pseudonym == ma.enrollment.pseudonym


def test_only_a_supervisor_of_the_informants_units_re_identifies_and_each_try_is_audited(office):
    ma = office.enroll("informant", org_units=["Hangzhou/Gongshu"], name="Ma Lihua")
    alias = ma.enrollment.pseudonym
    add = office.directory.add_user
    chen = add("Chen", "supervisor", ["Hangzhou"], office.wall.ms)
    far = add("Liu", "supervisor", ["Shenzhen"], office.wall.ms)
    sun = add("Sun", "mediator", ["Hangzhou"], office.wall.ms)
    gone = add("Zhou", "supervisor", ["Hangzhou"], office.wall.ms)
    office.directory.disable(gone.user_id, office.wall.ms)
    gone = office.directory.user(gone.user_id)  # as `lianxin informant reveal` reads them
    key = office.keys.pseudonym_key

    found = reidentify(office.directory, key, alias, chen, "threat to the informant", 1)
    assert (found.user_id, found.name) == (ma.enrollment.user_id, "Ma Lihua")
    for asker in (far, sun, gone):
        with pytest.raises(Forbidden):
            reidentify(office.directory, key, alias, asker, "curious", 2)
    assert reidentify(office.directory, key, "inf-nobody", chen, "check", 3) is None
    assert reidentify(office.directory, key, "inf-马丽华", chen, "typed in Chinese", 4) is None

    entries = [e for e in audit.entries(office.store.db) if e.action.startswith("reidentify")]
    assert [(e.actor, e.action) for e in entries] == [
        (f"user:{chen.user_id}", "reidentify"),
        (f"user:{far.user_id}", "reidentify_refused"),
        (f"user:{sun.user_id}", "reidentify_refused"),
        (f"user:{gone.user_id}", "reidentify_refused"),
        (f"user:{chen.user_id}", "reidentify"),
        (f"user:{chen.user_id}", "reidentify"),
    ]
    assert entries[0].detail == {"found": True, "reason": "threat to the informant"}
    assert audit.verify(office.store.db) == []


def test_user_names_are_sealed_in_the_store(office):
    office.enroll("informant", name="Ma Lihua")
    stored = office.store.db.execute("SELECT name FROM users").fetchall()
    assert stored and all(b"Ma Lihua" not in bytes(name) for (name,) in stored)
