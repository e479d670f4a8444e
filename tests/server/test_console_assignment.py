"""Assigning mediators, deadlines by category and the overdue queue, through the real app."""

import msgspec
import pytest

from schemas import Add, Delete
from server import audit
from server.console import signin
from sync.merge import materialize
from tests.server.test_app import GONGSHU, XIHU
from tests.server.test_console_triage import PASSWORD, sign_in, supervisor

DAY_MS = 24 * 3600 * 1000


def mediators_of(office, case_id):
    state = office.store.states([("case", case_id)])[("case", case_id)]
    return materialize(state).mediators


def actions(office, action):
    return [(e.subject, e.detail) for e in audit.entries(office.store.db) if e.action == action]


@pytest.fixture
def cases(office):
    """Zhao mediates a drains case in Gongshu (opened by a supervisor's phone); Li could;
    Far works in Xihu."""
    zhao = office.enroll("mediator", name="Zhao")
    li = office.enroll("mediator", name="Li")
    far = office.enroll("mediator", ["Hangzhou/Xihu"], name="Far")
    wang = office.enroll("supervisor", name="Wang")
    wang.push(
        [
            wang.change(
                "case",
                "k-drains",
                {
                    "title": "Drains",
                    "location": GONGSHU,
                    "category": "drains",
                    "status": "assigned",
                },
                [Add(field="mediators", value=zhao.enrollment.user_id)],
            )
        ]
    )
    return zhao, li, far


def test_a_supervisor_reassigns_a_case_and_the_phones_follow(office, cases):
    zhao, li, _ = cases
    zhao.pull_all()
    csrf = sign_in(office, supervisor(office))
    page = office.http.get("/console/cases/k-drains")
    assert "/console/cases/k-drains/mediators" in page.text  # the assignment form
    choices = office.http.get("/api/cases/k-drains/mediators").json()
    assert [m["name"] for m in choices["mediators"]] == ["Zhao"]
    assert [m["name"] for m in choices["candidates"]] == ["Li"]  # not Far, of Xihu
    assert office.http.get("/console/cases/k-drains/mediators").status_code == 200

    answer = office.http.post(
        "/console/cases/k-drains/mediators",
        data={
            "csrf": csrf,
            "add": li.enrollment.user_id,
            "remove": zhao.enrollment.user_id,
            "reason": "Zhao is on leave",
        },
        follow_redirects=False,
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/cases/k-drains")
    assert mediators_of(office, "k-drains") == [li.enrollment.user_id]
    ((subject, detail),) = actions(office, "assign")
    assert (subject, detail["reason"]) == ("case/k-drains", "Zhao is on leave")

    # Zhao's phone lets the case go; Li's receives it.
    items, _ = zhao.pull_all()
    assert [(i["type"], i["record_id"]) for i in items if i["type"] == "evict"] == [
        ("evict", "k-drains")
    ]
    items, _ = li.pull_all()
    assert any(msgspec.msgpack.decode(i["change"])["record_id"] == "k-drains" for i in items)


def test_assignment_refusals_change_nothing(office, cases):
    zhao, li, far = cases
    csrf = sign_in(office, supervisor(office))
    before = office.fingerprint()
    refusals = [
        {"add": [li.enrollment.user_id], "reason": " "},  # no reason
        {"add": [far.enrollment.user_id], "reason": "help from Xihu"},  # not of this area
        {"remove": [li.enrollment.user_id], "reason": "not assigned"},
        {"reason": "nothing to do"},
    ]
    for body in refusals:
        answer = office.http.post(
            "/api/cases/k-drains/mediators", json=body, headers={"x-csrf-token": csrf}
        )
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_action"), body
    for token in (None, "forged"):
        answer = office.http.post(
            "/console/cases/k-drains/mediators",
            data={
                "add": li.enrollment.user_id,
                "reason": "x",
                **({"csrf": token} if token else {}),
            },
            follow_redirects=False,
        )
        assert answer.status_code == 403
    assert office.fingerprint() == before
    assert actions(office, "assign") == []

    added = office.http.post(
        "/api/cases/k-drains/mediators",
        json={"add": [li.enrollment.user_id], "reason": "two hands"},
        headers={"x-csrf-token": csrf},
    )
    assert added.status_code == 200
    assert [m["user_id"] for m in added.json()["mediators"]] == sorted(
        [zhao.enrollment.user_id, li.enrollment.user_id]
    )


def test_another_districts_supervisor_cannot_assign(office, cases):
    _, li, _ = cases
    csrf = sign_in(office, supervisor(office, ["Hangzhou/Xihu"]))
    before = office.fingerprint()
    assert office.http.get("/api/cases/k-drains/mediators").status_code == 404
    answer = office.http.post(
        "/api/cases/k-drains/mediators",
        json={"add": [li.enrollment.user_id], "reason": "mine now"},
        headers={"x-csrf-token": csrf},
    )
    assert (answer.status_code, answer.json()["error"]) == (404, "unknown_record")
    assert office.fingerprint() == before


def test_deadlines_make_the_overdue_queue_most_overdue_first(office, cases):
    zhao, *_ = cases
    office.wall.tick(DAY_MS)
    zhao.push(
        [
            zhao.change(
                "case",
                "k-noise",
                {"title": "Noise", "location": GONGSHU, "category": "noise", "status": "assigned"},
                [Add(field="mediators", value=zhao.enrollment.user_id)],
            ),
            zhao.change(
                "case",
                "k-done",
                {"title": "Done", "location": GONGSHU, "category": "noise", "status": "assigned"},
            ),
            zhao.change("case", "k-done", {"status": "resolved"}),
            zhao.change("case", "k-far", {"title": "Far", "location": XIHU, "category": "noise"}),
        ],
        batch_id="b-2",
    )
    chen = supervisor(office)
    csrf = sign_in(office, chen)
    assert office.http.get("/api/deadlines").json() == {
        "deadlines": [],
        "without_deadline": ["drains", "noise"],
    }
    for category, days in (("drains", 30), ("noise", 10)):
        answer = office.http.post(
            "/console/deadlines",
            data={"csrf": csrf, "category": category, "days": str(days), "reason": "office rule"},
            follow_redirects=False,
        )
        assert answer.status_code == 303
    assert office.http.get("/console/deadlines").status_code == 200
    assert [(s, d["days"]) for s, d in actions(office, "set_deadline")] == [
        ("deadline/drains", 30),
        ("deadline/noise", 10),
    ]
    assert office.http.get("/api/overdue").json()["cases"] == []  # nothing late yet

    office.wall.tick(40 * DAY_MS)
    sign_in(office, chen)
    queue = office.http.get("/api/overdue").json()
    # Day 41: noise was received on day 1 and due on day 11 (30 days late); drains was
    # received on day 0 and due on day 30 (11 days late).
    assert [(r["case"]["case_id"], r["days_overdue"]) for r in queue["cases"]] == [
        ("k-noise", 30),
        ("k-drains", 11),
    ]
    assert queue["total"] == 2  # not the resolved one, nor Xihu's
    assert queue["cases"][0]["case"]["title"] == "Noise"
    assert "k-noise" in office.http.get("/console/overdue").text
    # The case list marks the same cases overdue: one due date, one rule.
    listed = office.http.get("/api/cases", params={"overdue": "1"}).json()
    assert sorted(c["case_id"] for c in listed["cases"]) == ["k-drains", "k-noise"]

    # A longer deadline for drains takes it off the queue; removing noise's, too.
    csrf = office.http.get("/api/me").json()["csrf"]
    changed = office.http.post(
        "/api/deadlines",
        json={"category": "drains", "days": 60, "reason": "seasonal"},
        headers={"x-csrf-token": csrf},
    )
    assert changed.status_code == 200
    office.http.post(
        "/console/deadlines",
        data={"csrf": csrf, "category": "noise", "remove": "1", "reason": "no rule"},
    )
    assert office.http.get("/api/overdue").json()["cases"] == []
    assert office.http.get("/api/deadlines").json()["deadlines"] == [
        {"category": "drains", "days": 60}
    ]
    assert actions(office, "set_deadline")[-1][1] == {
        "reason": "no rule",
        "days": None,
        "before": 10,
    }


def test_only_supervisors_edit_deadlines_and_only_with_a_reason(office, cases):
    admin = office.directory.add_user("Admin", "admin", ["Hangzhou"], office.wall.ms)
    signin.set_password(office.directory, admin.user_id, PASSWORD)
    csrf = sign_in(office, admin)
    answer = office.http.post(
        "/console/deadlines",
        data={"csrf": csrf, "category": "drains", "days": "1", "reason": "faster"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    api = office.http.post(
        "/api/deadlines",
        json={"category": "drains", "days": 1, "reason": "faster"},
        headers={"x-csrf-token": csrf},
    )
    assert (api.status_code, api.json()["error"]) == (403, "forbidden")
    assert office.http.get("/api/overdue").status_code == 403

    csrf = sign_in(office, supervisor(office))
    for body in (
        {"category": "drains", "days": 0, "reason": "none"},
        {"category": "drains", "days": 30, "reason": ""},
        {"category": " ", "days": 30, "reason": "no category"},
    ):
        refused = office.http.post("/api/deadlines", json=body, headers={"x-csrf-token": csrf})
        assert refused.status_code == 400, body
    forged = office.http.post(
        "/api/deadlines",
        json={"category": "drains", "days": 1, "reason": "x"},
        headers={"x-csrf-token": "forged"},
    )
    assert forged.status_code == 403
    assert office.store.db.execute("SELECT count(*) FROM deadlines").fetchone() == (0,)
    assert actions(office, "set_deadline") == []


def test_a_deleted_case_can_no_longer_be_assigned(office, cases):
    zhao, li, _ = cases
    zhao.push([zhao.change("case", "k-drains", ops=[Delete()])], batch_id="gone")
    csrf = sign_in(office, supervisor(office))
    before = office.fingerprint()
    body = {"add": [li.enrollment.user_id], "reason": "help"}
    answer = office.http.post(
        "/api/cases/k-drains/mediators", json=body, headers={"x-csrf-token": csrf}
    )
    assert answer.status_code == 404
    assert office.fingerprint() == before


def test_a_form_with_an_empty_or_unknown_value_is_answered_not_a_crash(office, cases):
    csrf = sign_in(office, supervisor(office))
    cleared = office.http.post(
        "/console/deadlines", data={"csrf": csrf, "category": "drains", "days": "", "reason": "x"}
    )
    assert cleared.status_code == 400 and "give the number of days" in cleared.text
    french = office.http.post("/console/language", data={"csrf": csrf, "language": "fr"})
    assert french.status_code == 400 and "no such language" in french.text
