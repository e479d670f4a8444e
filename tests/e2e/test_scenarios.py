"""DESIGN scenarios 1, 3 and 4 end to end: a real server process and reference clients."""

import sqlite3
from contextlib import ExitStack

import httpx
import pytest

from schemas import Add, Append
from sync.client import DeviceClient
from sync.errors import RevokedDevice

PIN = "246810"
DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang", "community": "Daguan"}


@pytest.fixture
def phones(server, tmp_path):
    """Make enrolled reference clients for new users of the running office."""
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))

        def phone(name, role, *org_units):
            user_id = server.user(name, role, *(org_units or ("Hangzhou/Gongshu",)))
            device = stack.enter_context(
                DeviceClient(tmp_path / f"{name}.db", http, passphrase=PIN)
            )
            device.enroll(server.code(user_id), label=f"{name}'s phone")
            return device

        yield phone


def test_scenario_1_drain_warning_becomes_a_case_and_the_informant_sees_the_answer(phones):
    informant = phones("Liu", "informant")
    supervisor = phones("Wang", "supervisor", "Hangzhou/Gongshu")
    mediator = phones("Zhao", "mediator")

    informant.edit(
        "warning",
        "w-drains",
        {
            "location": DAGUAN,
            "category": "infrastructure",
            "severity": "high",
            "status": "open",
            "description": "The drains overflow every rain; 10 households plan to petition.",
            "people_affected": 10,
        },
    )
    informant.sync()

    supervisor.sync()
    assert supervisor.record("warning", "w-drains").severity == "high"
    supervisor.edit(
        "case",
        "k-drains",
        {
            "title": "Overflowing drains",
            "location": DAGUAN,
            "status": "assigned",
            "households": 10,
        },
        [
            Add(field="warnings", value="w-drains"),
            Add(field="mediators", value=mediator.identity.user_id),
        ],
    )
    supervisor.edit("warning", "w-drains", {"status": "converted", "case": "k-drains"})
    supervisor.sync()

    mediator.sync()  # then offline for a month
    assert mediator.record("case", "k-drains").title == "Overflowing drains"
    for day in (3, 12, 27):
        mediator.edit(
            "case",
            "k-drains",
            ops=[
                Append(
                    field="visits",
                    entry={
                        "entry_id": f"v-{day}",
                        "at": f"2026-11-{day:02d}T09:00:00Z",
                        "by": mediator.identity.user_id,
                        "summary": f"visit on day {day}",
                    },
                )
            ],
        )
    mediator.edit("case", "k-drains", {"status": "in_mediation"})
    mediator.edit("case", "k-drains", {"status": "resolved"})
    mediator.sync()

    supervisor.sync()
    supervisor.edit("case", "k-drains", {"status": "closed"})
    supervisor.edit("warning", "w-drains", {"response": "Fixed: the culvert was cleared."})
    supervisor.sync()

    informant.sync()
    warning = informant.record("warning", "w-drains")
    assert (warning.status, warning.response) == ("converted", "Fixed: the culvert was cleared.")
    assert informant.record("case", "k-drains") is None  # an informant never sees a case
    case = supervisor.record("case", "k-drains")
    assert case.status == "closed" and len(case.visits) == 3


def test_scenario_3_two_mediators_no_signal_conflict_settled_everywhere(phones):
    supervisor = phones("Wang", "supervisor", "Hangzhou/Gongshu")
    sun = phones("Sun", "mediator")
    li = phones("Li", "mediator")
    supervisor.edit(
        "case",
        "k-noise",
        {
            "title": "Late-night mahjong noise",
            "location": DAGUAN,
            "status": "assigned",
        },
        [Add(field="mediators", value=m.identity.user_id) for m in (sun, li)],
    )
    supervisor.sync()
    sun.sync()
    li.sync()

    # Both offline: different fields, and the same field with different values.
    sun.edit("case", "k-noise", {"priority": "high", "summary": "Stop at 22:00 on weekdays."})
    li.edit(
        "case",
        "k-noise",
        {"summary": "Move the table indoors."},
        [Add(field="tags", value="noise")],
    )
    sun.sync()
    li.sync()
    sun.sync()
    supervisor.sync()

    for device in (sun, li, supervisor):
        case = device.record("case", "k-noise")
        assert (case.priority, case.tags) == ("high", ["noise"])
        (conflict,) = device.conflicts("case", "k-noise")
        assert conflict.field == "summary"
        assert {c.value for c in conflict.candidates} == {
            "Stop at 22:00 on weekdays.",
            "Move the table indoors.",
        }
        assert {c.device_id for c in conflict.candidates} == {
            sun.identity.device_id,
            li.identity.device_id,
        }

    supervisor.edit("case", "k-noise", {"summary": "Stop at 22:00, table indoors on Fridays."})
    supervisor.sync()
    sun.sync()
    li.sync()
    for device in (sun, li, supervisor):
        assert device.conflicts("case", "k-noise") == []
        assert device.record("case", "k-noise").summary.startswith("Stop at 22:00, table")


def test_scenario_4_lost_phone_is_refused_at_once_and_its_past_work_stays(phones, server):
    supervisor = phones("Wang", "supervisor", "Hangzhou/Gongshu")
    lost = phones("Zhao", "mediator")
    lost.edit("case", "k-1", {"title": "Leaking roof", "location": DAGUAN, "status": "new"})
    lost.sync()

    server.revoke(lost.identity.device_id)
    lost.edit("case", "k-1", {"summary": "written by whoever found the phone"})
    with pytest.raises(RevokedDevice):
        lost.sync()
    with pytest.raises(RevokedDevice):
        lost.pull()

    supervisor.sync()
    case = supervisor.record("case", "k-1")
    assert case.title == "Leaking roof" and case.summary == ""
    with sqlite3.connect(server.data / "lianxin.db") as db:
        authors = db.execute("SELECT device_id, batch_id FROM changes WHERE record_id = 'k-1'")
        (author, batch_id), *rest = authors.fetchall()
        assert rest == [] and author == lost.identity.device_id
        # The batch signature that makes the change attributable is kept.
        (signature,) = db.execute(
            "SELECT signature FROM batches WHERE device_id = ? AND batch_id = ?",
            [author, batch_id],
        ).fetchone()
        assert len(signature) == 64
