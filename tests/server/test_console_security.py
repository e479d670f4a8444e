"""Every console page and API route, walked: anonymous, other district, wrong role, CSRF, expiry.

The routes are read from the app itself, so a page added later is walked too.
"""

import re
import threading
import time

import pytest

from schemas import Add
from server.console import signin
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU, XIHU

PASSWORD = "long enough password"
PUBLIC = {("GET", "/console/login"), ("POST", "/console/login")}
ADMIN_ONLY = re.compile(r"^/(console|api)/admin")
ANY_ROLE = {"/console/logout", "/console/language", "/api/me"}


@pytest.fixture
def office(tmp_path):
    with running_office(tmp_path) as office:
        yield office


def console_routes(office):
    """(method, path) of every console route, path parameters filled with a Gongshu case."""
    found = set()
    for route in office.http.app.routes:
        if not route.path.startswith(("/console", "/api")):
            continue
        path = re.sub(r"\{(\w+):?\w*\}", lambda m: "k-gongshu", route.path)
        for method in route.methods - {"HEAD", "OPTIONS"}:
            found.add((method, path))
    return sorted(found)


def user(office, role, org_units):
    made = office.directory.add_user(f"{role} {org_units[0]}", role, org_units, office.wall.ms)
    signin.set_password(office.directory, made.user_id, PASSWORD)
    return made


def sign_in(office, who):
    answer = office.http.post(
        "/console/login",
        data={"user_id": who.user_id, "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return office.http.get("/api/me").json()["csrf"]


def seed(office):
    sun = office.enroll("mediator")
    sun.push(
        [
            sun.change("case", "k-gongshu", {"title": "Gongshu drains", "location": GONGSHU}),
            sun.change("case", "k-xihu", {"title": "Xihu noise", "location": XIHU}),
        ]
    )
    return sun


def call(office, method, path, **options):
    return office.http.request(method, path, follow_redirects=False, **options)


def test_an_anonymous_user_gets_nothing_anywhere(office):
    seed(office)
    walked = 0
    for method, path in console_routes(office):
        if (method, path) in PUBLIC:
            continue
        answer = call(office, method, path)
        walked += 1
        if path.startswith("/api/"):
            assert (answer.status_code, answer.json()["error"]) == (401, "not_signed_in"), path
        else:
            assert answer.status_code == 303, (method, path, answer.status_code)
            assert answer.headers["location"].startswith("/console/login")
        assert "Gongshu drains" not in answer.text
    assert walked >= 4


def test_a_supervisor_of_another_district_sees_none_of_it(office):
    seed(office)
    sign_in(office, user(office, "supervisor", ["Hangzhou/Xihu"]))
    for method, path in console_routes(office):
        if method != "GET" or (method, path) in PUBLIC or ADMIN_ONLY.match(path):
            continue
        answer = call(office, method, path)
        assert "Gongshu drains" not in answer.text, path
        assert answer.status_code in (200, 303, 404), (path, answer.status_code)
    assert call(office, "GET", "/api/cases/k-gongshu").status_code == 404
    assert [c["case_id"] for c in call(office, "GET", "/api/cases").json()["cases"]] == ["k-xihu"]


def test_roles_keep_to_their_pages(office):
    seed(office)
    sign_in(office, user(office, "admin", ["Hangzhou"]))
    for method, path in console_routes(office):
        if method == "GET" and path not in ANY_ROLE and not ADMIN_ONLY.match(path):
            if (method, path) in PUBLIC:
                continue
            answer = call(office, method, path)
            assert answer.status_code == 403, (path, answer.status_code)
            assert "Gongshu drains" not in answer.text
    office.http.cookies.clear()
    sign_in(office, user(office, "supervisor", ["Hangzhou"]))
    for method, path in console_routes(office):
        if method == "GET" and ADMIN_ONLY.match(path):
            assert call(office, method, path).status_code == 403, path
    # Mediators and informants have no console at all.
    mediator = user(office, "mediator", ["Hangzhou"])
    office.http.cookies.clear()
    refused = office.http.post(
        "/console/login", data={"user_id": mediator.user_id, "password": PASSWORD}
    )
    assert refused.status_code == 401


@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "forged"])
def test_every_write_needs_the_sessions_csrf_token(office, token):
    seed(office)
    sign_in(office, user(office, "supervisor", ["Hangzhou"]))
    stored = office.fingerprint()
    writes = [(m, p) for m, p in console_routes(office) if m != "GET" and (m, p) not in PUBLIC]
    assert ("POST", "/console/logout") in writes
    for method, path in writes:
        headers = {"x-csrf-token": token} if token else {}
        data = {"csrf": token} if token else {}
        answer = call(office, method, path, headers=headers, data=data)
        assert answer.status_code == 403, (path, answer.status_code, answer.text[:200])
        assert office.fingerprint() == stored, path
    # Still signed in: a refused write ends nothing.
    assert call(office, "GET", "/api/me").status_code == 200


def test_sessions_expire_when_idle_or_old_and_sign_out_ends_them_everywhere(office):
    chen = user(office, "supervisor", ["Hangzhou"])
    sign_in(office, chen)
    office.wall.ms += office_settings(office).session_idle_s * 1000 + 1
    assert call(office, "GET", "/api/me").status_code == 401

    sign_in(office, chen)
    for _ in range(24):  # active all day, never idle for long: 11.6 hours
        office.wall.ms += 29 * 60 * 1000
        assert call(office, "GET", "/api/me").status_code == 200
    office.wall.ms += 29 * 60 * 1000
    assert call(office, "GET", "/api/me").status_code == 401  # over 12 hours in all

    # Two browsers; signing out everywhere from the first ends the second's session too.
    first_csrf = sign_in(office, chen)
    first = office.http.cookies.get("lianxin_console")
    office.http.cookies.clear()
    sign_in(office, chen)
    second = office.http.cookies.get("lianxin_console")
    office.http.cookies.set("lianxin_console", first)
    answer = call(office, "POST", "/console/logout", data={"csrf": first_csrf, "everywhere": "1"})
    assert answer.status_code == 303
    office.http.cookies.set("lianxin_console", second)
    assert call(office, "GET", "/api/me").status_code == 401


def office_settings(office):
    return office.http.app.state.service.settings


def test_no_cache_may_keep_a_console_page_or_its_json_twin(office):
    seed(office)
    sign_in(office, user(office, "supervisor", ["Hangzhou/Gongshu"]))
    walked = 0
    for method, path in console_routes(office):
        if method != "GET" or path == "/console/logout":
            continue
        answer = call(office, method, path)
        if answer.status_code == 200:
            walked += 1
            assert answer.headers.get("cache-control") == "no-store", path
    assert walked > 20
    export = call(office, "GET", "/console/export/cases.csv")
    assert (export.status_code, export.headers.get("cache-control")) == (200, "no-store")
    refused = call(office, "GET", "/api/cases/k-nothing")  # error answers too
    assert (refused.status_code, refused.headers.get("cache-control")) == (404, "no-store")


def test_a_case_page_names_only_the_repeat_petitions_in_view(office):
    # The same person is a party in Gongshu and in Xihu: a Xihu supervisor's case page
    # flags nothing it cannot open, and says nothing of the Gongshu case.
    sun = office.enroll("mediator")
    he = {"name": "He Jianguo", "phone": "+86 138 0000 1234"}
    for district, location in (("gongshu", GONGSHU), ("xihu", XIHU)):
        party = sun.change("party", f"p-{district}", he)
        case = sun.change(
            "case",
            f"k-{district}",
            {"title": f"{district} noise", "location": location},
            [Add(field="parties", value=f"p-{district}")],
        )
        sun.push([party, case], f"b-{district}")
    sign_in(office, user(office, "supervisor", ["Hangzhou"]))
    assert [r["case_id"] for r in call(office, "GET", "/api/cases/k-xihu").json()["repeats"]] == [
        "k-gongshu"
    ]

    sign_in(office, user(office, "supervisor", ["Hangzhou/Xihu"]))
    assert call(office, "GET", "/api/cases/k-xihu").json()["repeats"] == []
    assert "k-gongshu" not in call(office, "GET", "/console/cases/k-xihu").text


def test_a_sign_in_waiting_for_the_writer_does_not_stall_other_requests(office):
    # Signing in writes a session behind the store's writer gate. Done on the event loop,
    # a sign-in during a long push stalled every other request until the push was done.
    who = user(office, "supervisor", ["Hangzhou/Gongshu"])
    writing, done, released = threading.Event(), threading.Event(), threading.Event()

    def long_push():
        with office.store.transaction():
            writing.set()
            done.wait(10)
        released.set()

    pusher = threading.Thread(target=long_push)
    pusher.start()
    writing.wait(5)
    signing_in = threading.Thread(
        target=lambda: office.http.post(
            "/console/login", data={"user_id": who.user_id, "password": PASSWORD}
        )
    )
    signing_in.start()
    time.sleep(0.2)  # the sign-in is now waiting for the gate
    answered = office.http.get("/v1/office")
    still_writing = not released.is_set()
    done.set()
    pusher.join()
    signing_in.join()
    assert answered.status_code == 200 and still_writing


def test_a_password_typed_as_the_user_name_is_written_nowhere(office):
    typed = "correct horse battery staple"
    answer = office.http.post(
        "/console/login", data={"user_id": typed, "password": "x"}, follow_redirects=False
    )
    assert answer.status_code == 401
    for table in ("audit", "login_failures"):
        rows = office.store.db.execute(f"SELECT * FROM {table}").fetchall()
        assert rows and typed not in str(rows), table


def test_a_session_is_marked_seen_once_a_minute_not_on_every_request(office):
    # Each mark is a write behind the writer gate; the idle limit (30 minutes) needs no
    # finer mark than a minute.
    sign_in(office, user(office, "supervisor", ["Hangzhou/Gongshu"]))

    def seen():
        return office.store.db.execute("SELECT seen_ms FROM sessions").fetchone()[0]

    signed_at = seen()
    office.wall.tick(signin.SEEN_EVERY_MS - 1)
    assert call(office, "GET", "/api/cases").status_code == 200
    assert seen() == signed_at
    office.wall.tick(1)
    assert call(office, "GET", "/api/cases").status_code == 200
    assert seen() == signed_at + signin.SEEN_EVERY_MS
