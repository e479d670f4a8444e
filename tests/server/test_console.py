"""The console through the real app: sign-in, the case list and a case page."""

import re
import threading

import msgspec
import pytest

from schemas import Add, Delete, Restore
from server import audit
from server.console import signin, stats
from server.settings import Settings
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU, XIHU

PASSWORD = "long enough password"


@pytest.fixture
def console(tmp_path):
    with running_office(tmp_path) as office:
        yield office


def supervisor(office, org_units=("Hangzhou/Gongshu",), password=PASSWORD):
    user = office.directory.add_user("Chen Jing", "supervisor", list(org_units), office.wall.ms)
    signin.set_password(office.directory, user.user_id, password)
    return user


def sign_in(office, user, password=PASSWORD, code=""):
    return office.http.post(
        "/console/login",
        data={"user_id": user.user_id, "password": password, "code": code},
        follow_redirects=False,
    )


def csrf_of(page):
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_a_supervisor_signs_in_and_sees_the_cases_of_their_district(console):
    sun = console.enroll("mediator")
    sun.push(
        [
            sun.change("case", "k-1", {"title": "Drains overflow", "location": GONGSHU}),
            sun.change("case", "k-2", {"title": "Far away", "location": XIHU}),
            sun.change(
                "case",
                "k-3",
                {"title": "Noise", "location": GONGSHU, "households": 12},
                [Add(field="tags", value="noise")],
            ),
        ]
    )
    chen = supervisor(console)
    answer = sign_in(console, chen)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/cases"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = console.http.get("/console/cases")
    assert page.status_code == 200
    assert "Drains overflow" in page.text and "Noise" in page.text
    assert "Far away" not in page.text
    listed = console.http.get("/api/cases", params={"group": "1"}).json()
    assert [c["case_id"] for c in listed["cases"]] == ["k-3"]
    assert listed["by_status"] == {"new": 1}
    case = console.http.get("/api/cases/k-1").json()
    assert case["case"]["title"] == "Drains overflow"
    assert [e["signature_verified"] for e in case["timeline"]] == [True]
    assert console.http.get("/api/cases/k-2").status_code == 404


def test_a_case_pushed_in_compact_form_by_push_v2_shows_signed_in_the_timeline(console):
    sun = console.enroll("mediator")
    first = sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})
    second = sun.change("case", "k-1", {"priority": "high"}, [Add(field="tags", value="drains")])
    v1_answer = sun.pushed([first], "b-1")
    v2_answer = sun.pushed([second], "b-2", version=2)
    assert [r["status"] for r in v1_answer["results"] + v2_answer["results"]] == ["applied"] * 2
    sign_in(console, supervisor(console))
    timeline = console.http.get("/api/cases/k-1").json()["timeline"]
    assert [(e["change_id"], e["signature_verified"]) for e in timeline] == [
        (first.change_id, True),
        (second.change_id, True),
    ]
    assert timeline[1]["set"] == {"priority": "high"}
    assert timeline[1]["ops"] == [{"type": "add", "field": "tags", "value": "drains"}]
    assert "drains" in console.http.get("/console/cases/k-1").text


def test_mediators_show_by_name_in_the_case_list_and_on_the_case_page(console):
    sun = console.enroll("mediator", name="Sun Li")
    mediator = sun.enrollment.user_id
    sun.push(
        [
            sun.change(
                "case",
                "k-1",
                {"title": "Drains", "location": GONGSHU},
                [Add(field="mediators", value=mediator)],
            )
        ]
    )
    chen = supervisor(console)
    sign_in(console, chen)
    for path in ("/console/cases", "/console/cases/k-1"):
        page = console.http.get(path).text
        assert f'<span title="{mediator}">Sun Li</span>' in page
    listed = console.http.get("/api/cases").json()
    assert listed["cases"][0]["mediators"] == [mediator]  # the API keeps ids, and names them
    assert listed["names"] == {mediator: "Sun Li"}
    assert console.http.get("/api/cases/k-1").json()["names"] == {mediator: "Sun Li"}


def test_wrong_passwords_are_refused_then_rate_limited(console):
    chen = supervisor(console)
    for _ in range(5):
        assert sign_in(console, chen, "wrong password!").status_code == 401
    limited = sign_in(console, chen)
    assert limited.status_code == 429  # even the right password, for a while
    console.wall.ms += 16 * 60 * 1000
    assert sign_in(console, chen).status_code == 303
    actions = [(e.action, e.subject) for e in audit.entries(console.store.db)]
    assert actions.count(("sign_in_refused", f"user/{chen.user_id}")) == 5
    assert actions[-1] == ("sign_in", f"user/{chen.user_id}")


def test_pages_refuse_anonymous_users(console):
    page = console.http.get("/console/cases", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/console/login")
    assert console.http.get("/api/cases").json()["error"] == "not_signed_in"


BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/console/conflicts?offset=abc", 400, "bad_request"),  # the framework's validation
        ("/console/no-such-page", 404, "not_found"),
        ("/console/conflicts/settle", 405, "method_not_allowed"),  # a form's target, fetched
    ],
)
def test_console_errors_are_pages_a_browser_shows(console, path, status, code):
    sign_in(console, supervisor(console))
    answer = console.http.get(path, headers=BROWSER, follow_redirects=False)
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert f"<code>{code}</code>" in answer.text and 'href="/console/cases"' in answer.text


def test_long_numbers_typed_in_a_form_or_a_link_are_answered_not_a_server_error(console):
    sign_in(console, supervisor(console))
    csrf = console.http.get("/api/me").json()["csrf"]
    huge = "9" * 4400  # int() refuses more than 4,300 digits
    listed = console.http.get(f"/console/cases?offset={huge}")
    assert listed.status_code == 200
    deadline = console.http.post(
        "/console/deadlines",
        data={"csrf": csrf, "category": "noise", "days": huge, "reason": "rule"},
    )
    assert deadline.status_code == 400 and "<code>invalid_action</code>" in deadline.text


def test_a_csrf_token_that_is_not_ascii_is_refused_like_any_wrong_one(console):
    sign_in(console, supervisor(console))
    stored = console.fingerprint()
    form = console.http.post("/console/language", data={"csrf": "é", "language": "zh_CN"})
    api = console.http.post(
        "/api/deadlines",
        content=b"{}",
        headers={"x-csrf-token": "é".encode("latin-1"), "content-type": "application/json"},
    )
    assert (form.status_code, api.status_code) == (403, 403)
    assert api.json()["error"] == "csrf_refused"
    assert console.fingerprint() == stored


MULTIPART = {"content-type": "multipart/form-data; boundary=XX"}


def multipart(name, value):
    return b'--XX\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n--XX--\r\n' % (
        name.encode(),
        value,
    )


def test_a_form_whose_bytes_are_not_utf_8_is_refused_not_a_server_error(console):
    anonymous = console.http.post(
        "/console/login", content=multipart("user_id", b"\xff"), headers=MULTIPART
    )
    sign_in(console, supervisor(console))
    signed_in = console.http.post(
        "/console/language", content=multipart("csrf", b"\xed\xa0\x80"), headers=MULTIPART
    )
    unknown_charset = console.http.post(
        "/console/language",
        content=b'--XX\r\nContent-Disposition: form-data; name="csrf"\r\n'
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nx\r\n--XX--\r\n",
        headers=MULTIPART,
    )
    for answer in (anonymous, signed_in, unknown_charset):
        assert answer.status_code == 400 and "<code>malformed</code>" in answer.text


def test_a_form_sent_after_the_session_expired_leads_back_to_a_page_after_sign_in(console):
    chen = supervisor(console)
    expired = console.http.post(
        "/console/conflicts/settle", data={"csrf": "x"}, follow_redirects=False
    )
    assert expired.headers["location"] == "/console/login?next=/console/cases"
    page = console.http.get("/console/cases", follow_redirects=False)
    assert page.headers["location"] == "/console/login?next=/console/cases"
    signed = sign_in(console, chen)
    assert signed.headers["location"] == "/console/cases"


def test_session_cookies_are_secure_by_default(tmp_path):
    with running_office(tmp_path, secure_cookies=True) as office:
        answer = sign_in(office, supervisor(office))
        assert answer.status_code == 303
        assert "; secure" in answer.headers["set-cookie"].lower()


def test_a_second_factor_is_required_once_enabled(console):
    chen = supervisor(console)
    uri = signin.enable_totp(console.directory, chen)
    assert uri.startswith("otpauth://totp/") and "secret=" in uri
    secret = signin._totp_secret(console.directory, chen.user_id)
    assert secret is not None
    # The secret is sealed in the store, not kept in clear.
    (stored,) = console.store.db.execute(
        "SELECT totp_secret FROM users WHERE user_id = ?", [chen.user_id]
    ).fetchone()
    assert secret not in bytes(stored)
    assert sign_in(console, chen).status_code == 401  # password alone
    right = signin.totp_code(secret, console.wall.ms // 1000)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    assert sign_in(console, chen, code=wrong).status_code == 401
    assert sign_in(console, chen, code=right).status_code == 303
    # Spent once used: the same code (read over a shoulder, say) opens nothing more.
    assert sign_in(console, chen, code=right).status_code == 401
    console.wall.ms += 30_000
    assert (
        sign_in(console, chen, code=signin.totp_code(secret, console.wall.ms // 1000)).status_code
        == 303
    )


def test_one_code_typed_in_two_racing_sign_ins_opens_one_session(console, monkeypatch):
    chen = supervisor(console)
    signin.enable_totp(console.directory, chen)
    secret = signin._totp_secret(console.directory, chen.user_id)
    code = signin.totp_code(secret, console.wall.ms // 1000)
    checked = threading.Semaphore(0)
    real_step = signin._totp_step

    def step_then_tell(*args):
        found = real_step(*args)
        checked.release()
        return found

    monkeypatch.setattr(signin, "_totp_step", step_then_tell)
    answers = []

    def attempt(client):
        try:
            signin.sign_in(
                console.directory, Settings(), chen.user_id, PASSWORD, code, client,
                console.wall.ms, b"k" * 32,
            )  # fmt: skip
            answers.append("signed in")
        except signin.BadCredentials:
            answers.append("refused")

    # Both have checked the code before either may write: the writer gate is held.
    with console.store.transaction():
        threads = [threading.Thread(target=attempt, args=(c,)) for c in ("a", "b")]
        for thread in threads:
            thread.start()
        assert checked.acquire(timeout=10) and checked.acquire(timeout=10)
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(answers) == ["refused", "signed in"]
    (sessions,) = console.store.db.execute(
        "SELECT count(*) FROM sessions WHERE user_id = ?", [chen.user_id]
    ).fetchone()
    assert sessions == 1


def test_the_console_never_shows_a_batch_still_being_written(console):
    sun = console.enroll("mediator")
    sun.push([sun.change("case", "k-1", {"title": "Drains overflow", "location": GONGSHU})])
    chen = supervisor(console)
    assert sign_in(console, chen).status_code == 303
    service = console.http.app.state.service
    # A batch in flight, which may yet roll back: the pages read what is committed.
    with console.store.transaction():
        pending = sun.change("case", "k-2", {"title": "Being written", "location": GONGSHU})
        assert [r.status for r in service.act(chen, [pending])] == ["applied"]
        listed = console.http.get("/api/cases").json()
        assert [c["case_id"] for c in listed["cases"]] == ["k-1"] and listed["total"] == 1
        assert console.http.get("/api/cases/k-2").status_code == 404
    listed = console.http.get("/api/cases").json()
    assert sorted(c["case_id"] for c in listed["cases"]) == ["k-1", "k-2"]


def test_an_admin_signs_in_only_with_a_second_factor_by_default(tmp_path):
    with running_office(tmp_path, admin_second_factor=True) as office:
        wang = office.directory.add_user("Wang Li", "admin", ["Hangzhou"], office.wall.ms)
        signin.set_password(office.directory, wang.user_id, PASSWORD)
        chen = supervisor(office)

        gone = office.directory.add_user("Zhou", "admin", ["Hangzhou"], office.wall.ms)
        signin.set_password(office.directory, gone.user_id, PASSWORD)
        office.directory.disable(gone.user_id, office.wall.ms)  # no warning for who left
        assert signin.admins_without_second_factor(office.directory) == [wang.user_id]
        refused = sign_in(office, wang)
        # Told no more than for a wrong password: the answer does not confirm it.
        assert refused.status_code == 401
        assert refused.text == sign_in(office, wang, password="not the password").text
        assert sign_in(office, chen).status_code == 303  # supervisors: the office's choice

        signin.enable_totp(office.directory, wang)
        secret = signin._totp_secret(office.directory, wang.user_id)
        code = signin.totp_code(secret, office.wall.ms // 1000)
        assert sign_in(office, wang, code=code).status_code == 303
        assert signin.admins_without_second_factor(office.directory) == []
        actions = [(e.action, e.subject) for e in audit.entries(office.store.db)]
        subject = f"user/{wang.user_id}"
        assert actions.count(("sign_in_refused_no_second_factor", subject)) == 1
        assert actions.count(("sign_in_refused", subject)) == 1
        assert actions[-1] == ("sign_in", subject)


def test_a_new_password_signs_the_user_out_everywhere(console):
    chen = supervisor(console)
    assert sign_in(console, chen).status_code == 303
    assert console.http.get("/api/me").status_code == 200
    signin.set_password(console.directory, chen.user_id, "a brand new passphrase")
    assert console.http.get("/api/me").status_code == 401


def test_a_stored_change_that_no_longer_decodes_still_shows_in_the_timeline(console):
    sun = console.enroll("mediator")
    change = sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})
    sun.push([change])
    # As if stored under an older schema that today's no longer reads.
    old = console.store.seal_value(
        "changes", ("case", "k-1"), change.change_id, msgspec.msgpack.encode({"v": 0})
    )
    console.store.db.execute("UPDATE changes SET raw = ?", [old])
    sign_in(console, supervisor(console))

    (entry,) = console.http.get("/api/cases/k-1").json()["timeline"]

    assert (entry["change_id"], entry["readable"], entry["set"]) == (change.change_id, False, {})
    assert entry["signature_verified"] is False  # these are not the bytes its device signed
    page = console.http.get("/console/cases/k-1")
    # "...it does not read as a change in this version", in the console's default language.
    assert page.status_code == 200 and "本版本无法将其读作一项修改" in page.text


def test_a_deleted_case_leaves_the_lists_the_export_and_the_figures_until_restored(console):
    sun = console.enroll("mediator")
    late = {"location": GONGSHU, "category": "noise", "due": "2020-01-01", "status": "assigned"}
    sun.push([sun.change("case", f"k-{n}", {"title": f"Case {n}", **late}) for n in range(3)])
    sun.push([sun.change("case", "k-0", ops=[Delete()])], batch_id="b-delete")
    chen = supervisor(console)
    sign_in(console, chen)
    service = console.http.app.state.service

    def shown() -> tuple:
        listed = console.http.get("/api/cases").json()
        overdue = console.http.get("/api/overdue").json()
        return (
            sorted(c["case_id"] for c in listed["cases"]),
            listed["total"],
            sorted(c["case"]["case_id"] for c in overdue["cases"]),
            "k-0" in console.http.get("/console/export/cases.csv").text,
            stats.figures(service, chen, console.wall.ms).total.received,
        )

    assert shown() == (["k-1", "k-2"], 2, ["k-1", "k-2"], False, 2)
    seen = dict(console.store.record("case", "k-0").vv)
    sun.push([sun.change("case", "k-0", ops=[Restore()], seen=seen)], batch_id="b-restore")
    assert shown() == (["k-0", "k-1", "k-2"], 3, ["k-0", "k-1", "k-2"], True, 3)
