"""Early-warning triage through the real app: grouped, converted, dismissed, answered on the phone.

DESIGN scenario 1: an informant's warning becomes a case for a mediator, and
the informant's own device shows the answer on its next pull.
"""

import msgspec
import pytest

from schemas import Delete
from schemas.records import Case, EarlyWarning
from server import audit
from server import service as service_module
from server.console import signin
from sync.merge import materialize
from tests.server.test_app import GONGSHU, XIHU

PASSWORD = "long enough password"
DAY_MS = 24 * 3600 * 1000
REPLY = "Thank you: a mediator will visit the block this week."


def supervisor(office, org_units=("Hangzhou/Gongshu",)):
    user = office.directory.add_user("Chen Jing", "supervisor", list(org_units), office.wall.ms)
    signin.set_password(office.directory, user.user_id, PASSWORD)
    return user


def sign_in(office, user):
    """Sign `user` in, reading the console in English (its default is zh-CN); the CSRF token."""
    with office.store.transaction():
        office.store.db.execute(
            "UPDATE users SET language = 'en' WHERE user_id = ?", [user.user_id]
        )
    office.http.cookies.clear()
    answer = office.http.post(
        "/console/login",
        data={"user_id": user.user_id, "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return office.http.get("/api/me").json()["csrf"]


def report(phone, warning_id, category="drains", location=GONGSHU, **fields):
    """The informant's phone pushes a warning under its own pseudonym."""
    values = {
        "location": location,
        "category": category,
        "status": "open",
        "severity": "high",
        "description": f"{category}: the water reaches the doorsteps when it rains",
        "people_affected": 30,
        "informant": phone.enrollment.pseudonym,
        **fields,
    }
    answer = phone.push([phone.change("warning", warning_id, values)], batch_id=f"b-{warning_id}")
    assert answer.status_code == 200
    (result,) = msgspec.msgpack.decode(answer.content)["results"]
    assert result["status"] == "applied", result


def pulled(phone, record_type, record_id):
    """The record as the phone would hold it after pulling everything it may see."""
    items, _ = phone.pull_all()
    changes = [msgspec.msgpack.decode(item["change"]) for item in items if item["type"] == "change"]
    mine = [c for c in changes if (c["record_type"], c["record_id"]) == (record_type, record_id)]
    return mine


def stored(office, record_type, record_id):
    state = office.store.states([(record_type, record_id)]).get((record_type, record_id))
    return materialize(state) if state else None


@pytest.fixture
def drains(office):
    """Two informants report the drains of one block, a third the noise; a mediator there."""
    liu = office.enroll("informant", name="Liu Informant")
    ma = office.enroll("informant", name="Ma Informant")
    report(liu, "w-1")
    office.wall.tick(3600_000)
    report(ma, "w-2")
    report(ma, "w-noise", category="noise")
    zhao = office.enroll("mediator", name="Zhao Mediator")
    far = office.enroll("mediator", ["Hangzhou/Xihu"], name="Far Mediator")
    return liu, ma, zhao, far


def test_reports_of_one_place_and_category_within_days_are_one_group(office, drains):
    liu, ma, *_ = drains
    office.wall.tick(4 * DAY_MS)
    report(liu, "w-later")  # the same drains, but four days on: a group of its own
    chen = supervisor(office)
    sign_in(office, chen)
    listed = office.http.get("/api/warnings").json()
    groups = [[w["warning_id"] for w in g["warnings"]] for g in listed["groups"]]
    assert groups == [["w-later"], ["w-noise"], ["w-2", "w-1"]]
    (pair,) = [g for g in listed["groups"] if len(g["warnings"]) == 2]
    assert (pair["org_unit"], pair["category"], pair["informants"]) == (
        "Hangzhou/Gongshu/Mishixiang/Daguan",
        "drains",
        2,
    )
    assert listed["new_total"] == 4 and listed["group_days"] == 3
    informants = {w["informant"] for g in listed["groups"] for w in g["warnings"]}
    assert informants == {liu.enrollment.pseudonym, ma.enrollment.pseudonym}

    page = office.http.get("/console/warnings")
    assert page.status_code == 200
    assert "within 3 days" in page.text and liu.enrollment.pseudonym in page.text
    # Informants appear by pseudonym only: never their name or user id.
    for phone in (liu, ma):
        assert phone.enrollment.user_id not in page.text
    assert "Liu Informant" not in page.text and "Ma Informant" not in page.text
    one = office.http.get("/api/warnings/w-1").json()
    assert [w["warning_id"] for w in one["group"]] == ["w-2"]
    assert [m["name"] for m in one["mediators"]] == ["Zhao Mediator"]  # not the Xihu one
    assert "Liu Informant" not in office.http.get("/console/warnings/w-1").text


def test_convert_makes_one_case_for_the_mediator_and_answers_each_informant(office, drains):
    liu, ma, zhao, _ = drains
    chen = supervisor(office)
    csrf = sign_in(office, chen)
    answer = office.http.post(
        "/console/warnings/w-1/convert",
        data={
            "csrf": csrf,
            "mediator": zhao.enrollment.user_id,
            "reply": REPLY,
            "title": "Drains of the Daguan block",
            "also": ["w-2"],
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    case_id = answer.headers["location"].rsplit("/", 1)[1]
    assert case_id.startswith("k-")

    case = stored(office, "case", case_id)
    assert isinstance(case, Case)
    assert (case.title, case.status, case.category) == (
        "Drains of the Daguan block",
        "assigned",
        "drains",
    )
    assert case.mediators == [zhao.enrollment.user_id]
    assert sorted(case.warnings) == ["w-1", "w-2"]
    assert case.location is not None and case.location.community == "Daguan"
    assert case.priority == "high"
    for warning_id in ("w-1", "w-2"):
        warning = stored(office, "warning", warning_id)
        assert isinstance(warning, EarlyWarning)
        assert (warning.status, warning.case, warning.response) == ("converted", case_id, REPLY)

    # The mediator's phone receives the case (and the warnings it links).
    assert any(c["set"].get("status") == "assigned" for c in pulled(zhao, "case", case_id))
    assert pulled(zhao, "warning", "w-1")
    # Each informant's phone receives the answer, and never the case.
    for phone, warning_id in ((liu, "w-1"), (ma, "w-2")):
        answered = [
            c["set"] for c in pulled(phone, "warning", warning_id) if "response" in c["set"]
        ]
        assert answered == [{"status": "converted", "case": case_id, "response": REPLY}]
        assert pulled(phone, "case", case_id) == []

    logged = [(e.action, e.subject) for e in audit.entries(office.store.db)]
    assert ("convert_warning", f"case/{case_id}") in logged
    for warning_id in ("w-1", "w-2"):
        assert ("convert_warning", f"warning/{warning_id}") in logged
    # The reply may name people: sealed in the warning, never in the clear audit log.
    assert not [e for e in audit.entries(office.store.db) if REPLY in str(e.detail)]

    listed = office.http.get("/api/warnings").json()
    assert [[w["warning_id"] for w in g["warnings"]] for g in listed["groups"]] == [["w-noise"]]
    assert {w["warning_id"]: w["case_id"] for w in listed["handled"]} == {
        "w-1": case_id,
        "w-2": case_id,
    }
    assert case_id in office.http.get("/api/cases").text

    # Answered once: converting again is refused, and changes nothing.
    before = office.fingerprint()
    again = office.http.post(
        "/api/warnings/w-1/convert",
        json={"mediator": zhao.enrollment.user_id, "reply": REPLY},
        headers={"x-csrf-token": csrf},
    )
    assert (again.status_code, again.json()["error"]) == (400, "invalid_action")
    assert office.fingerprint() == before


def test_dismiss_answers_the_informant(office, drains):
    liu, ma, *_ = drains
    csrf = sign_in(office, supervisor(office))
    answer = office.http.post(
        "/api/warnings/w-noise/dismiss",
        json={"reply": "Quiet hours are already posted; we will keep an eye on it."},
        headers={"x-csrf-token": csrf},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"warnings": ["w-noise"], "status": "dismissed", "case_id": None}
    warning = stored(office, "warning", "w-noise")
    assert warning.status == "dismissed" and warning.case is None
    (answered,) = [c["set"] for c in pulled(ma, "warning", "w-noise") if "response" in c["set"]]
    assert answered["status"] == "dismissed" and answered["response"].startswith("Quiet hours")
    assert pulled(liu, "warning", "w-noise") == []  # not hers
    assert ("dismiss_warning", "warning/w-noise") in [
        (e.action, e.subject) for e in audit.entries(office.store.db)
    ]
    # A reply is required.
    before = office.fingerprint()
    empty = office.http.post(
        "/console/warnings/w-1/dismiss",
        data={"csrf": csrf, "reply": "  "},
        follow_redirects=False,
    )
    assert empty.status_code == 400
    assert office.fingerprint() == before


def test_a_mediator_outside_the_warnings_place_is_refused(office, drains):
    *_, far = drains
    csrf = sign_in(office, supervisor(office))
    before = office.fingerprint()
    answer = office.http.post(
        "/api/warnings/w-1/convert",
        json={"mediator": far.enrollment.user_id, "reply": REPLY},
        headers={"x-csrf-token": csrf},
    )
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_action")
    assert office.fingerprint() == before
    # Nor may a warning of another category ride along.
    mixed = office.http.post(
        "/api/warnings/w-1/convert",
        json={"mediator": drains[2].enrollment.user_id, "reply": REPLY, "also": ["w-noise"]},
        headers={"x-csrf-token": csrf},
    )
    assert mixed.status_code == 400
    assert office.fingerprint() == before


def test_another_districts_supervisor_gets_404(office, drains):
    zhao = drains[2]
    csrf = sign_in(office, supervisor(office, ["Hangzhou/Xihu"]))
    assert office.http.get("/api/warnings").json()["groups"] == []
    assert office.http.get("/api/warnings/w-1").status_code == 404
    assert office.http.get("/console/warnings/w-1").status_code == 404
    before = office.fingerprint()
    answer = office.http.post(
        "/console/warnings/w-1/convert",
        data={"csrf": csrf, "mediator": zhao.enrollment.user_id, "reply": REPLY},
        follow_redirects=False,
    )
    assert answer.status_code == 404
    dismissed = office.http.post(
        "/api/warnings/w-1/dismiss", json={"reply": REPLY}, headers={"x-csrf-token": csrf}
    )
    assert (dismissed.status_code, dismissed.json()["error"]) == (404, "unknown_record")
    assert office.fingerprint() == before


@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "forged"])
def test_writes_without_the_sessions_csrf_token_are_refused(office, drains, token):
    zhao = drains[2]
    sign_in(office, supervisor(office))
    before = office.fingerprint()
    fields = {"mediator": zhao.enrollment.user_id, "reply": REPLY}
    form = office.http.post(
        "/console/warnings/w-1/convert",
        data={**fields, **({"csrf": token} if token else {})},
        follow_redirects=False,
    )
    assert form.status_code == 403
    api = office.http.post(
        "/api/warnings/w-1/convert",
        json=fields,
        headers={"x-csrf-token": token} if token else {},
    )
    assert (api.status_code, api.json()["error"]) == (403, "csrf_refused")
    dismiss = office.http.post(
        "/console/warnings/w-1/dismiss",
        data={"reply": REPLY, **({"csrf": token} if token else {})},
        follow_redirects=False,
    )
    assert dismiss.status_code == 403
    assert office.fingerprint() == before
    assert stored(office, "warning", "w-1").status == "open"


def test_an_informant_may_name_only_its_own_pseudonym(office):
    liu = office.enroll("informant", name="Liu Informant")
    ma = office.enroll("informant", name="Ma Informant")
    answer = liu.push(
        [liu.change("warning", "w-x", {"location": XIHU, "informant": ma.enrollment.pseudonym})]
    )
    (result,) = msgspec.msgpack.decode(answer.content)["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")


def test_a_warning_stored_before_locations_were_checked_can_still_be_converted(office, monkeypatch):
    # An older server took a location with an empty street before a named community, as
    # devices now may not push it. The office's own case copies the warning's location:
    # it must still apply, or the warning could only be dismissed.
    liu = office.enroll("informant", name="Liu Informant")
    zhao = office.enroll("mediator", name="Zhao Mediator")
    gap = {"city": "Hangzhou", "district": "Gongshu", "street": "", "community": "Daguan"}
    monkeypatch.setattr(service_module, "location_refused", lambda change: None)
    report(liu, "w-gap", location=gap)
    monkeypatch.undo()
    answer = liu.push([liu.change("warning", "w-new", {"location": gap})], batch_id="b-new")
    assert msgspec.msgpack.decode(answer.content)["results"][0]["reason"] == "invalid_value"

    csrf = sign_in(office, supervisor(office))
    form = {"csrf": csrf, "mediator": zhao.enrollment.user_id, "reply": REPLY, "title": "Gap"}
    converted = office.http.post(
        "/console/warnings/w-gap/convert", data=form, follow_redirects=False
    )

    assert converted.status_code == 303, converted.text
    assert stored(office, "warning", "w-gap").status == "converted"


def test_a_deleted_warning_can_no_longer_be_converted(office, drains):
    liu, _, zhao, _ = drains
    liu.push([liu.change("warning", "w-1", ops=[Delete()])], batch_id="gone")
    csrf = sign_in(office, supervisor(office))
    before = office.fingerprint()
    answer = office.http.post(
        "/api/warnings/w-1/convert",
        json={"mediator": zhao.enrollment.user_id, "reply": REPLY, "title": "Drains"},
        headers={"x-csrf-token": csrf},
    )
    assert answer.status_code == 404
    assert office.fingerprint() == before
