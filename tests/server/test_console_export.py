"""CSV exports through the real app: what the page lists and no more, defused, audited."""

import csv
import io

import pytest

from schemas import Add
from server import audit
from server.console import export, signin
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU, XIHU
from tests.server.test_console import sign_in, supervisor

TITLES = {
    "k-sum": "=SUM(A1:A9)",
    "k-plus": "+86 138 0000 1234",
    "k-minus": "-2 degrees, no heating",
    "k-at": "@everyone",
    "k-tab": "\tHYPERLINK",
    "k-quote": 'Drains, "again"\nsecond line',
}


@pytest.fixture
def console(tmp_path):
    with running_office(tmp_path) as office:
        yield office


def in_english(office, user):
    """Column names as written in the code (the translation pass comes later)."""
    with office.store.transaction():
        office.store.db.execute(
            "UPDATE users SET language = 'en' WHERE user_id = ?", [user.user_id]
        )


def seed(office):
    sun = office.enroll("mediator", org_units=["Hangzhou"])
    changes = [sun.change("party", "p-he", {"name": "He Jianguo", "phone": "13800001234"})]
    for case_id, title in TITLES.items():
        changes.append(
            sun.change(
                "case",
                case_id,
                {"title": title, "location": GONGSHU, "category": "noise", "households": 3},
                [Add(field="parties", value="p-he")],
            )
        )
    changes.append(
        sun.change(
            "case", "k-drains", {"title": "Drains", "location": GONGSHU, "category": "drains"}
        )
    )
    changes.append(sun.change("case", "k-xihu", {"title": "Far away", "location": XIHU}))
    assert sun.push(changes).status_code == 200
    return sun


def rows_of(answer):
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.content.startswith("\ufeff".encode())  # spreadsheets need it for Chinese
    return list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))


def test_the_case_list_exports_as_the_page_lists_it_with_formulas_defused(console):
    seed(console)
    chen = supervisor(console)
    in_english(console, chen)
    sign_in(console, chen)
    answer = console.http.get("/console/export/cases.csv", params={"category": "noise"})
    assert "attachment" in answer.headers["content-disposition"]
    header, *rows = rows_of(answer)
    assert header == [
        "Case",
        "Title",
        "Status",
        "Org unit",
        "Category",
        "Mediators",
        "Households",
        "Due",
        "Overdue",
    ]
    listed = console.http.get("/api/cases", params={"category": "noise"}).json()
    assert [row[0] for row in rows] == [c["case_id"] for c in listed["cases"]]
    titles = {row[0]: row[1] for row in rows}
    assert titles == {
        "k-sum": "'=SUM(A1:A9)",
        "k-plus": "'+86 138 0000 1234",
        "k-minus": "'-2 degrees, no heating",
        "k-at": "'@everyone",
        "k-tab": "'\tHYPERLINK",
        "k-quote": 'Drains, "again"\nsecond line',  # quoted by the CSV, kept whole
    }
    assert {row[4] for row in rows} == {"noise"} and {row[6] for row in rows} == {"3"}
    # Only what the page shows: no party, no phone number, no summary.
    assert "He Jianguo" not in answer.text and "13800001234" not in answer.text


def test_an_export_is_audited_with_its_list_filters_and_row_count(console):
    seed(console)
    chen = supervisor(console)
    sign_in(console, chen)
    before = len(audit.entries(console.store.db))
    rows = rows_of(console.http.get("/console/export/cases.csv?category=drains&status=new"))
    assert len(rows) == 2
    (entry,) = audit.entries(console.store.db)[before:]
    assert (entry.actor, entry.action, entry.subject) == (f"user:{chen.user_id}", "export", "cases")
    assert entry.detail == {"filters": {"status": "new", "category": "drains"}, "rows": 1}
    rows_of(console.http.get("/console/export/stats-units.csv"))
    assert audit.entries(console.store.db)[-1].subject == "stats-units"
    assert audit.verify(console.store.db) == []


def test_exports_are_refused_to_anonymous_users_admins_and_unknown_lists(console):
    seed(console)
    anonymous = console.http.get("/console/export/cases.csv", follow_redirects=False)
    assert anonymous.status_code == 303 and "/console/login" in anonymous.headers["location"]
    admin = console.directory.add_user("Wang Li", "admin", ["Hangzhou"], console.wall.ms)
    signin.set_password(console.directory, admin.user_id, "long enough password")
    sign_in(console, admin)
    for name in ("cases", "stats", "stats-weeks"):
        refused = console.http.get(f"/console/export/{name}.csv")
        assert refused.status_code == 403 and "Drains" not in refused.text
    console.http.cookies.clear()
    sign_in(console, supervisor(console))
    assert console.http.get("/console/export/quarrels.csv").status_code == 404
    assert console.http.get("/console/export/cases").status_code == 404
    exported = [e for e in audit.entries(console.store.db) if e.action == "export"]
    assert exported == []  # a refusal exports nothing


def test_another_districts_supervisor_exports_only_their_own_cases(console):
    seed(console)
    xihu = supervisor(console, org_units=["Hangzhou/Xihu"])
    sign_in(console, xihu)
    rows = rows_of(console.http.get("/console/export/cases.csv"))
    assert [row[0] for row in rows[1:]] == ["k-xihu"]


def test_cells_that_a_spreadsheet_would_run_get_an_apostrophe():
    for text in ("=1+1", "+1", "-1", "@A1", "\t=1", "\r=1"):
        assert export.neutralised(text) == "'" + text
    for safe in ("1+1", "", "案件 = 1", "'quoted", "<5"):
        assert export.neutralised(safe) == safe
    assert export.neutralised(-5) == "-5"  # numbers the office counted are not text
    assert export.neutralised(None) == ""


def test_the_queues_export_what_their_pages_show(console):
    """A conflict, a quarantined change and a warning, each in its queue's CSV."""
    sun = console.enroll("mediator", name="Sun Li")
    li = console.enroll("mediator", name="Li Wei")
    opened = sun.change(
        "case",
        "k-noise",
        {"title": "Mahjong noise", "location": GONGSHU, "status": "assigned"},
        [Add(field="mediators", value=li.enrollment.user_id)],
    )
    sun.push([opened], batch_id="b-open")
    # Both set the priority offline, neither having seen the other's: a conflict.
    sun.push([sun.change("case", "k-noise", {"priority": "high"})], batch_id="b-sun")
    li.push([li.change("case", "k-noise", {"priority": "=urgent"[1:]})], batch_id="b-li")
    # A move the status machine refuses: quarantined.
    sun.push([sun.change("case", "k-noise", {"status": "new"})], batch_id="b-bad")
    informant = console.enroll("informant")
    informant.push(
        [
            informant.change(
                "warning",
                "w-drains",
                {
                    "location": GONGSHU,
                    "category": "drains",
                    "status": "open",
                    "description": "=1+1",
                    "informant": informant.enrollment.pseudonym,
                },
            )
        ]
    )
    chen = supervisor(console)
    in_english(console, chen)
    sign_in(console, chen)

    header, *rows = rows_of(console.http.get("/console/export/conflicts.csv"))
    assert header == ["Record", "Type", "Id", "Field", "Shown now", "Candidates"]
    ((title, kind, record_id, field, shown, candidates),) = rows
    assert (title, kind, record_id, field) == ("Mahjong noise", "case", "k-noise", "priority")
    assert shown in ("high", "urgent") and "Sun Li" in candidates and "Li Wei" in candidates

    header, *rows = rows_of(console.http.get("/console/export/quarantine.csv"))
    assert header[:4] == ["Record", "Type", "Id", "Reason"]
    ((title, _, record_id, reason, _, tried, who, device, *_),) = rows
    assert (record_id, reason, who, device) == (
        "k-noise",
        "illegal_transition",
        "Sun Li",
        sun.device_id,
    )
    assert tried == "status: new"

    header, *rows = rows_of(console.http.get("/console/export/warnings.csv"))
    assert header[:3] == ["Warning", "Received", "Category"]
    ((warning_id, _, category, _, _, _, informant_shown, description, status, *_),) = rows
    assert (warning_id, category, description, status) == ("w-drains", "drains", "'=1+1", "open")
    assert informant_shown == informant.enrollment.pseudonym  # who reported it stays hidden
    assert informant.enrollment.user_id not in str(rows)
    subjects = [e.subject for e in audit.entries(console.store.db)[-3:]]
    assert subjects == ["conflicts", "quarantine", "warnings"]
