"""Devices and users through the real app: last sync, enrolment codes, revocation, refusals."""

import functools
import re
import socket
import threading
import time

import pytest
import uvicorn

from server import audit
from server.console import signin
from server.console.admin import disable_user
from server.console.assignment import assign, set_deadline
from server.console.web import COOKIE
from server.fleet.office import free_port
from sync.errors import EnrollmentRefused, NotSignedIn
from sync.merge import materialize
from tests.server.conftest import MSGPACK, enrolment, running_office
from tests.server.test_app import GONGSHU, decode
from tests.server.test_console import PASSWORD, csrf_of, sign_in, supervisor

CODE = re.compile(r"\b[A-HJ-NP-Z2-9]{12}\b")


@pytest.fixture
def console(tmp_path):
    with running_office(tmp_path) as office:
        yield office


def admin(office):
    user = office.directory.add_user("Wang Li", "admin", ["Hangzhou"], office.wall.ms)
    signin.set_password(office.directory, user.user_id, PASSWORD)
    return user


def signed_in_admin(office):
    wang = admin(office)
    assert sign_in(office, wang).status_code == 303
    return wang, office.http.get("/api/me").json()["csrf"]


def test_an_admin_sees_every_device_with_its_last_sync(console):
    sun = console.enroll("mediator", name="Sun Li")
    console.wall.tick(60_000)
    assert (
        sun.push([sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})]).status_code
        == 200
    )
    synced_at = console.wall.ms
    idle = console.enroll("informant", name="Zhao")
    signed_in_admin(console)
    page = console.http.get("/api/admin").json()
    devices = {d["device_id"]: d for d in page["devices"]}
    assert devices[sun.device_id]["last_seen_ms"] == synced_at
    assert devices[sun.device_id]["user_name"] == "Sun Li"
    assert devices[idle.device_id]["last_seen_ms"] is None
    assert all(d["revoked_at_ms"] is None for d in devices.values())
    html = console.http.get("/console/admin").text
    # The last sync, to the minute, on the office's clock: 11:07 UTC is 19:07 in Hangzhou.
    assert "Sun Li" in html and "2026-11-18 19:07" in html
    assert "Drains" not in html  # no case data on this page


def test_an_admin_issues_a_code_shown_once_that_enrols_a_phone(console):
    he = console.directory.add_user("He Min", "mediator", ["Hangzhou/Gongshu"], console.wall.ms)
    wang, csrf = signed_in_admin(console)
    page = console.http.post("/console/admin/codes", data={"csrf": csrf, "user_id": he.user_id})
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    (code,) = CODE.findall(page.text)
    # Only its hash is kept, and the page never shows it again.
    assert code not in str(console.store.db.execute("SELECT * FROM enrollment_codes").fetchall())
    assert code not in console.http.get("/console/admin").text
    phone = console.enroll_with(code)
    assert phone.enrollment.user_id == he.user_id
    *_, entry, enrolled = audit.entries(console.store.db)
    assert (enrolled.actor, enrolled.action, enrolled.subject) == (
        f"device:{phone.device_id}",
        "enroll",
        f"user/{he.user_id}",
    )
    assert (entry.actor, entry.action, entry.subject) == (
        f"user:{wang.user_id}",
        "issue_code",
        f"user/{he.user_id}",
    )
    assert code not in str(entry.detail)

    issued = console.http.post(
        "/api/admin/codes", json={"user_id": he.user_id}, headers={"x-csrf-token": csrf}
    )
    assert issued.status_code == 200 and CODE.fullmatch(issued.json()["code"])
    assert console.enroll_with(issued.json()["code"]).enrollment.user_id == he.user_id
    unknown = console.http.post(
        "/api/admin/codes", json={"user_id": "u-nobody"}, headers={"x-csrf-token": csrf}
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_record"


def test_an_admin_revokes_a_device_and_its_next_request_is_refused(console):
    sun = console.enroll("mediator")
    assert (
        sun.push([sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})]).status_code
        == 200
    )
    _, csrf = signed_in_admin(console)
    answer = console.http.post(
        f"/console/admin/devices/{sun.device_id}/revoke",
        data={"csrf": csrf, "reason": "phone lost on the bus"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/admin"
    refused = sun.pull()
    assert refused.status_code == 403 and decode(refused)["error"] == "revoked_device"
    entry = audit.entries(console.store.db)[-1]
    assert (entry.action, entry.subject) == ("revoke", f"device/{sun.device_id}")
    assert entry.detail == {"reason": "phone lost on the bus", "user_id": sun.enrollment.user_id}
    # What it pushed before stays, attributed to it.
    assert console.store.db.execute("SELECT device_id FROM changes").fetchall() == [
        (sun.device_id,)
    ]
    listed = {d["device_id"]: d for d in console.http.get("/api/admin").json()["devices"]}
    assert listed[sun.device_id]["revoked_at_ms"] == console.wall.ms
    again = console.http.post(
        f"/api/admin/devices/{sun.device_id}/revoke", json={}, headers={"x-csrf-token": csrf}
    )
    assert again.status_code == 404


def test_the_json_twin_revokes_too(console):
    li = console.enroll("informant")
    _, csrf = signed_in_admin(console)
    answer = console.http.post(
        f"/api/admin/devices/{li.device_id}/revoke",
        json={"reason": "left the office"},
        headers={"x-csrf-token": csrf},
    )
    assert answer.status_code == 200
    assert answer.json() == {"device_id": li.device_id, "revoked_at_ms": console.wall.ms}
    assert decode(li.pull())["error"] == "revoked_device"


@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "forged"])
def test_writes_without_the_sessions_csrf_token_change_nothing(console, token):
    sun = console.enroll("mediator")
    he = console.directory.add_user("He Min", "mediator", ["Hangzhou"], console.wall.ms)
    signed_in_admin(console)
    stored = console.fingerprint()
    logged = len(audit.entries(console.store.db))
    headers = {"x-csrf-token": token} if token else {}
    form = {"csrf": token} if token else {}
    writes = [
        ("/console/admin/codes", {"data": {**form, "user_id": he.user_id}}),
        ("/api/admin/codes", {"json": {"user_id": he.user_id}, "headers": headers}),
        (f"/console/admin/devices/{sun.device_id}/revoke", {"data": form}),
        (f"/api/admin/devices/{sun.device_id}/revoke", {"json": {}, "headers": headers}),
    ]
    for path, options in writes:
        answer = console.http.post(path, follow_redirects=False, **options)
        assert answer.status_code == 403, (path, answer.text[:200])
        assert console.fingerprint() == stored, path
    assert len(audit.entries(console.store.db)) == logged
    assert sun.pull().status_code == 200  # still enrolled


def test_supervisors_are_refused_here_and_admins_on_case_data(console):
    sun = console.enroll("mediator")
    sun.push([sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})])
    chen = supervisor(console)
    sign_in(console, chen)
    csrf = csrf_of(console.http.get("/console/cases"))
    stored = console.fingerprint()
    assert console.http.get("/console/admin").status_code == 403
    assert console.http.get("/api/admin").json()["error"] == "forbidden"
    revoke = console.http.post(
        f"/console/admin/devices/{sun.device_id}/revoke", data={"csrf": csrf}
    )
    issue = console.http.post(
        "/api/admin/codes", json={"user_id": chen.user_id}, headers={"x-csrf-token": csrf}
    )
    assert (revoke.status_code, issue.status_code) == (403, 403)
    assert console.fingerprint() == stored

    console.http.cookies.clear()
    signed_in_admin(console)
    for path in ("/console/cases", "/console/stats", "/api/stats", "/console/export/cases.csv"):
        answer = console.http.get(path)
        assert answer.status_code == 403, path
        assert "Drains" not in answer.text


def test_an_admin_disables_a_mediator_who_left_and_every_phone_and_code_of_theirs_ends(
    console,
):
    he = console.enroll("mediator", name="He Min")
    user_id = he.enrollment.user_id
    second = console.enroll_with(console.directory.issue_code(user_id, console.wall.ms, 3600_000))
    unused = console.directory.issue_code(user_id, console.wall.ms, 3600_000)
    case = he.change("case", "k-1", {"title": "Drains", "location": GONGSHU})
    assert he.push([case]).status_code == 200
    _, csrf = signed_in_admin(console)
    console.wall.tick(60_000)

    answer = console.http.post(
        f"/console/admin/users/{user_id}/disable",
        data={"csrf": csrf, "reason": "moved to another district"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/admin"
    for phone in (he, second):
        refused = phone.pull()
        assert refused.status_code == 403 and decode(refused)["error"] == "revoked_device"
    *_keys, body = enrolment(unused)
    late = console.http.post("/v1/enroll", content=body, headers=MSGPACK)
    assert late.status_code == 403 and decode(late)["error"] == "enrollment_refused"
    entry = audit.entries(console.store.db)[-1]
    assert (entry.action, entry.subject) == ("disable_user", f"user/{user_id}")
    assert entry.detail == {
        "reason": "moved to another district",
        "revoked_devices": sorted([he.device_id, second.device_id]),
    }
    # What they pushed stays, attributed; the page says they left, and offers no new code.
    assert console.store.db.execute("SELECT device_id FROM changes").fetchall() == [(he.device_id,)]
    users = {u["user_id"]: u for u in console.http.get("/api/admin").json()["users"]}
    assert users[user_id]["disabled_at_ms"] == console.wall.ms and users[user_id]["devices"] == 0
    issue = console.http.post(
        "/api/admin/codes", json={"user_id": user_id}, headers={"x-csrf-token": csrf}
    )
    assert issue.status_code == 400 and issue.json()["error"] == "invalid_action"
    again = console.http.post(
        f"/api/admin/users/{user_id}/disable",
        json={"reason": "twice"},
        headers={"x-csrf-token": csrf},
    )
    assert again.status_code == 404 and again.json()["error"] == "unknown_record"


def test_a_disabled_supervisor_is_signed_out_at_once_and_refused_like_a_wrong_password(console):
    sun = console.enroll("mediator")
    sun.push([sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})])
    chen = supervisor(console)
    assert sign_in(console, chen).status_code == 303
    chens_cookies = dict(console.http.cookies)
    console.http.cookies.clear()
    wang, csrf = signed_in_admin(console)
    own = console.http.post(
        f"/api/admin/users/{wang.user_id}/disable",
        json={"reason": "x"},
        headers={"x-csrf-token": csrf},
    )
    assert own.status_code == 400 and own.json()["error"] == "invalid_action"
    answer = console.http.post(
        f"/api/admin/users/{chen.user_id}/disable",
        json={"reason": "retired"},
        headers={"x-csrf-token": csrf},
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "user_id": chen.user_id,
        "disabled_at_ms": console.wall.ms,
        "revoked_devices": [],
    }

    console.http.cookies.clear()
    console.http.cookies.update(chens_cookies)
    assert console.http.get("/api/cases").json()["error"] == "not_signed_in"
    console.http.cookies.clear()
    refused, wrong = sign_in(console, chen), sign_in(console, chen, password="not the password")
    assert refused.status_code == wrong.status_code == 401
    assert refused.text == wrong.text
    *_, why, _wrong = audit.entries(console.store.db)
    assert (why.action, why.subject) == ("sign_in_refused_disabled", f"user/{chen.user_id}")

    console.directory.enable(chen.user_id)  # `lianxin user enable`, after a mistake
    assert sign_in(console, chen).status_code == 303
    assert "Drains" in console.http.get("/console/cases").text


def test_a_mediator_who_left_is_marked_on_their_cases_and_offered_for_none(console):
    he = console.enroll("mediator", name="He Min")
    user_id = he.enrollment.user_id
    he.push([he.change("case", "k-1", {"title": "Drains", "location": GONGSHU})])
    other = console.directory.add_user("Ma Lin", "mediator", ["Hangzhou/Gongshu"], console.wall.ms)
    chen = supervisor(console)
    sign_in(console, chen)
    csrf = csrf_of(console.http.get("/console/cases"))
    assign = {"add": [user_id], "reason": "his street"}
    headers = {"x-csrf-token": csrf}
    assert console.http.post("/api/cases/k-1/mediators", json=assign, headers=headers).is_success

    console.directory.disable(user_id, console.wall.ms)
    page = console.http.get("/api/cases/k-1/mediators").json()
    assert page["mediators"] == [
        {"user_id": user_id, "name": "He Min", "org_units": ["Hangzhou/Gongshu"], "left": True}
    ]
    assert [m["user_id"] for m in page["candidates"]] == [other.user_id]
    assert "已离职" in console.http.get("/console/cases/k-1/mediators").text  # left the office
    console.http.post(
        "/api/cases/k-1/mediators",
        json={"remove": [user_id], "reason": "he left"},
        headers=headers,
    )
    back = console.http.post("/api/cases/k-1/mediators", json=assign, headers=headers)
    assert back.status_code == 400 and back.json()["error"] == "invalid_action"


def test_a_write_held_open_past_its_users_disabling_is_refused(console):
    # Review finding: the session was checked when the headers came, and a request whose
    # last byte was held back ran after its user was disabled. Over a real socket, as a
    # slow client sends: a supervisor's new deadline for a category of cases.
    chen = supervisor(console)
    assert sign_in(console, chen).status_code == 303
    token, csrf = console.http.cookies[COOKIE], console.http.get("/api/me").json()["csrf"]
    console.http.cookies.clear()
    _, admins_csrf = signed_in_admin(console)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(console.http.app, port=port, lifespan="off", log_level="warning")
    )
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    try:
        while not server.started:
            time.sleep(0.01)
        body = b'{"category": "neighbours", "days": 3, "reason": "held"}'
        with socket.create_connection(("127.0.0.1", port)) as held:
            held.sendall(
                "POST /api/deadlines HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"X-CSRF-Token: {csrf}\r\nCookie: {COOKIE}={token}\r\n\r\n".encode()
                + body[:-1]
            )
            time.sleep(0.2)  # the headers are in: the session was looked at here
            disabled = console.http.post(
                f"/api/admin/users/{chen.user_id}/disable",
                json={"reason": "left"},
                headers={"x-csrf-token": admins_csrf},
            )
            assert disabled.status_code == 200
            held.sendall(body[-1:])
            answer = b"".join(iter(functools.partial(held.recv, 65536), b"")).decode()
    finally:
        server.should_exit = True
        serving.join()
    assert answer.startswith("HTTP/1.1 401") and '"not_signed_in"' in answer
    assert console.store.db.execute("SELECT count(*) FROM deadlines").fetchone() == (0,)


def test_of_two_admins_disabling_each_other_at_once_one_stays(console):
    wang, other = admin(console), admin(console)
    disable_user(console.http.app.state.service, other, wang.user_id, "at the same moment")
    # The other's request, checked before that committed, reaches its transaction now.
    with pytest.raises(NotSignedIn):
        disable_user(console.http.app.state.service, wang, other.user_id, "at the same moment")
    assert console.directory.user(other.user_id).disabled_at_ms is None


def test_a_supervisors_write_checked_before_their_disabling_is_refused_in_its_transaction(
    console,
):
    # Their session was read, then an admin's disable committed, then their write reached
    # its transaction: as for admins, nothing of it lands.
    he = console.enroll("mediator")
    he.push([he.change("case", "k-1", {"title": "Drains", "location": GONGSHU})])
    service = console.http.app.state.service
    chen = supervisor(console)
    entries = len(audit.entries(console.store.db))
    console.directory.disable(chen.user_id, console.wall.ms)
    with pytest.raises(NotSignedIn):
        assign(service, chen, "k-1", [he.enrollment.user_id], [], "his street")
    with pytest.raises(NotSignedIn):
        set_deadline(service, chen, "neighbours", 3, "too slow")
    (case,) = console.store.states([("case", "k-1")]).values()
    assert materialize(case).mediators == []
    assert console.store.db.execute("SELECT count(*) FROM deadlines").fetchone() == (0,)
    assert len(audit.entries(console.store.db)) == entries


def test_an_enrolment_begun_before_its_user_was_disabled_is_refused(console):
    he = console.directory.add_user("He Min", "mediator", ["Hangzhou"], console.wall.ms)
    code = console.directory.issue_code(he.user_id, console.wall.ms, 3600_000)
    console.directory.disable(he.user_id, console.wall.ms)
    # The enrolment read its clock before the disabling, and reached the store after it.
    with pytest.raises(EnrollmentRefused):
        console.directory.enroll(code, b"s" * 32, b"k" * 32, "", console.wall.ms - 5)


def test_a_user_is_disabled_only_with_a_reason(console):
    he = console.directory.add_user("He Min", "mediator", ["Hangzhou"], console.wall.ms)
    _, csrf = signed_in_admin(console)
    for reason in ({}, {"reason": "  "}):
        answer = console.http.post(
            f"/api/admin/users/{he.user_id}/disable", json=reason, headers={"x-csrf-token": csrf}
        )
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_action"
    assert console.directory.user(he.user_id).disabled_at_ms is None


def test_an_admin_moves_a_supervisor_to_another_district_and_their_view_follows(console):
    sun = console.enroll("mediator")
    xihu = {"city": "Hangzhou", "district": "Xihu", "street": "Beishan"}
    sun.push(
        [
            sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU}),
            sun.change("case", "k-2", {"title": "Noise", "location": xihu}),
        ]
    )
    chen = supervisor(console)
    sign_in(console, chen)
    moving = console.http.post(
        f"/api/admin/users/{chen.user_id}/move",
        json={"org_units": ["Hangzhou/Xihu"], "reason": "x"},
        headers={"x-csrf-token": console.http.get("/api/me").json()["csrf"]},
    )
    assert moving.json()["error"] == "forbidden"  # only an admin moves people
    console.http.cookies.clear()
    _, csrf = signed_in_admin(console)
    stored = console.fingerprint()

    def move(user_id, body):
        url = f"/api/admin/users/{user_id}/move"
        return console.http.post(url, json=body, headers={"x-csrf-token": csrf})

    for user_id, body, status, error in [
        (chen.user_id, {"org_units": ["Hangzhou/Xihu"]}, 400, "invalid_action"),  # why?
        (chen.user_id, {"org_units": [" "], "reason": "x"}, 400, "invalid_action"),
        (chen.user_id, {"org_units": ["Hangzhou//Xihu"], "reason": "x"}, 400, "invalid_action"),
        ("u-nobody", {"org_units": ["Hangzhou"], "reason": "x"}, 404, "unknown_record"),
        (chen.user_id, {"org_units": "Hangzhou", "reason": "x"}, 400, "malformed"),
    ]:
        answer = move(user_id, body)
        assert (answer.status_code, answer.json()["error"]) == (status, error), body
    assert console.fingerprint() == stored

    answer = move(chen.user_id, {"org_units": ["Hangzhou / Xihu"], "reason": "new post"})
    assert answer.json() == {
        "user_id": chen.user_id,
        "org_units_before": ["Hangzhou/Gongshu"],
        "org_units": ["Hangzhou/Xihu"],
    }
    moved = audit.entries(console.store.db)[-1]
    assert (moved.action, moved.subject) == ("move_user", f"user/{chen.user_id}")
    assert moved.detail["reason"] == "new post"
    console.http.cookies.clear()
    sign_in(console, console.directory.user(chen.user_id))
    assert [c["case_id"] for c in console.http.get("/api/cases").json()["cases"]] == ["k-2"]
