"""Statistics through the real app: exact weekly counts, and small counts never shown."""

import csv
import io
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import Add
from server.console import stats
from server.console.stats import Figures, Tally, protect, publish, published
from tests.server.conftest import running_office
from tests.server.test_agreements import attested, open_agreement, sign, stored_agreement
from tests.server.test_app import GONGSHU, XIHU, decode
from tests.server.test_console import sign_in, supervisor

DAY_MS = 86_400_000
XIAOHE = {**GONGSHU, "street": "Xiaohe", "community": "Qiaoxi"}


@pytest.fixture
def console(tmp_path):
    with running_office(tmp_path) as office:
        yield office


def read_in_english(office, user):
    """Sign `user` in, reading the console in English (its default language is zh-CN)."""
    with office.store.transaction():
        office.store.db.execute(
            "UPDATE users SET language = 'en' WHERE user_id = ?", [user.user_id]
        )
    sign_in(office, user)


def service_of(office):
    return office.http.app.state.service


def push_cases(phone, ids, fields, batch_id):
    answer = phone.push(
        [phone.change("case", case_id, {"status": "assigned", **fields}) for case_id in ids],
        batch_id=batch_id,
    )
    assert answer.status_code == 200, answer.content


def known_weeks(office):
    """Two weeks ago: 6 noise cases in Gongshu (and one in Xihu); a week ago: 3 drains
    cases; this week: 5 of the noise cases resolved."""
    now = office.wall.ms
    sun = office.enroll("mediator", org_units=["Hangzhou"])
    office.wall.ms = now - 14 * DAY_MS
    noise = [f"k-noise-{n}" for n in range(6)]
    push_cases(sun, noise, {"category": "noise", "location": GONGSHU}, "b-1")
    push_cases(sun, ["k-xihu"], {"category": "noise", "location": XIHU}, "b-2")
    office.wall.ms = now - 7 * DAY_MS
    push_cases(sun, ["k-drains-1", "k-drains-2", "k-drains-3"], {"location": GONGSHU}, "b-3")
    # A category of its own, set on two of them later: the index follows the last write.
    sun.push(
        [sun.change("case", f"k-drains-{n}", {"category": "drains"}) for n in (1, 2, 3)],
        batch_id="b-4",
    )
    office.wall.ms = now
    sun.push(
        [sun.change("case", case_id, {"status": "resolved"}) for case_id in noise[:5]],
        batch_id="b-5",
    )
    return sun


def test_weekly_counts_are_exact_inside_and_published_outside(console):
    known_weeks(console)
    chen = supervisor(console)
    exact = stats.figures(service_of(console), chen, console.wall.ms)
    # 26 weeks, Monday to Sunday; the wall is Wednesday 2026-11-18.
    assert len(exact.weeks) == 26
    assert stats.publish(exact).weeks[-1].start == "2026-11-16"
    assert [(r, s) for _, r, s in exact.weeks[-3:]] == [(6, 0), (3, 0), (0, 5)]
    assert sum(r for _, r, _ in exact.weeks) == 9  # the Xihu case is not in view
    assert (exact.total.received, exact.total.resolved, exact.total.received_resolved) == (9, 5, 5)
    assert exact.total.durations_ms == [14 * DAY_MS] * 5
    assert {k: (t.received, t.resolved) for k, t in exact.by_category.items()} == {
        "noise": (6, 5),
        "drains": (3, 0),
    }
    assert list(exact.by_unit) == ["Hangzhou/Gongshu/Mishixiang"]

    read_in_english(console, chen)
    answer = console.http.get("/api/stats").json()
    weeks = [(w["start"], w["received"], w["resolved"]) for w in answer["weeks"][-3:]]
    assert weeks == [("2026-11-02", 5, "<5"), ("2026-11-09", "<5", "<5"), ("2026-11-16", "<5", 5)]
    total = answer["total"]
    assert (total["received"], total["resolved"], total["received_resolved"]) == (10, 5, 5)
    assert (total["resolution_rate"], total["median_days"], total["repeats"]) == (0.5, 14.0, "<5")
    rows = {row["key"]: row for row in answer["by_category"]}
    assert rows["drains"]["received"] == "<5" and rows["drains"]["median_days"] is None
    assert rows["noise"]["received"] == 5 and rows["noise"]["median_days"] == 14.0
    assert answer["since"] == "2026-05-25" and answer["until"] == "2026-11-22"


def test_counts_under_5_never_show_in_page_json_or_csv(console):
    known_weeks(console)
    chen = supervisor(console)
    read_in_english(console, chen)
    answer = console.http.get("/api/stats").json()
    shown = [answer["warnings_received"], answer["agreements_executed"], answer["total"]["repeats"]]
    for row in answer["by_category"] + answer["by_unit"] + [answer["total"]]:
        shown += [row["received"], row["resolved"], row["received_resolved"], row["repeats"]]
    shown += [w[k] for w in answer["weeks"] for k in ("received", "resolved")]
    assert all(value == "<5" or (isinstance(value, int) and value % 5 == 0) for value in shown)
    assert "<5" in shown

    page = console.http.get("/console/stats")
    assert page.status_code == 200 and "<svg" in page.text
    drains = page.text.split("<td>drains</td>", 1)[1].split("</tr>", 1)[0]
    assert drains.count("&lt;5") == 4 and "3" not in drains

    exported = console.http.get("/console/export/stats-categories.csv")
    rows = list(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["Category", "Received", "Resolved"]
    assert rows[1] == ["drains", "<5", "<5", "<5", "", "", "<5"]
    weekly = console.http.get("/console/export/stats-weeks.csv").content.decode("utf-8-sig")
    assert "2026-11-09,<5,<5" in weekly.splitlines()


def test_an_office_with_no_cases_yet_has_statistics_of_nothing(console):
    read_in_english(console, supervisor(console))
    answer = console.http.get("/api/stats")
    assert answer.status_code == 200, answer.content
    assert answer.json()["by_category"] == [] and answer.json()["total"]["received"] == "<5"
    assert console.http.get("/console/stats").status_code == 200


def test_another_districts_cases_are_never_counted(console):
    known_weeks(console)
    xihu = supervisor(console, org_units=["Hangzhou/Xihu"])
    exact = stats.figures(service_of(console), xihu, console.wall.ms)
    assert (exact.total.received, exact.total.resolved) == (1, 0)
    assert list(exact.by_unit) == ["Hangzhou/Xihu/Beishan"]
    read_in_english(console, xihu)
    answer = console.http.get("/api/stats").json()
    assert answer["total"]["received"] == "<5"
    assert [row["key"] for row in answer["by_category"]] == ["noise"]
    assert "Gongshu" not in console.http.get("/console/stats").text


def test_a_total_that_would_reveal_its_small_cells_is_withheld(console):
    """4 cases in each of two streets: a total of 8 shown as 10 would say "4 and 4"."""
    sun = console.enroll("mediator", org_units=["Hangzhou"])
    push_cases(sun, [f"k-a{n}" for n in range(4)], {"location": GONGSHU}, "b-1")
    push_cases(sun, [f"k-b{n}" for n in range(4)], {"location": XIAOHE}, "b-2")
    chen = supervisor(console)
    read_in_english(console, chen)
    answer = console.http.get("/api/stats").json()
    assert [row["received"] for row in answer["by_unit"]] == ["<5", "<5"]
    assert answer["total"]["received"] == "withheld"
    assert answer["total"]["resolution_rate"] is None
    # The week of 8 and the one category of 8 say "at least 8" as well as the total would.
    assert answer["weeks"][-1]["received"] == "withheld"
    assert [row["received"] for row in answer["by_category"]] == ["withheld"]
    assert answer["weeks"][0]["received"] == "<5"
    summary = console.http.get("/console/export/stats.csv").content.decode("utf-8-sig")
    assert "Received,withheld" in summary.splitlines()
    assert "10" not in console.http.get("/console/stats").text.split("Received</div>")[1][:80]


def test_repeat_petitions_are_cases_sharing_a_person_with_an_earlier_case(console):
    sun = console.enroll("mediator", org_units=["Hangzhou"])
    he = {"name": "He Jianguo", "phone": "+86 138 0000 1234"}
    changes = []
    for n in range(7):
        # p-0 comes back in every case after the first, each time as a new party record
        # with the same phone; k-6 names the very same party record as k-5.
        party = "p-5" if n == 6 else f"p-{n}"
        if n != 6:
            changes.append(sun.change("party", party, he))
        changes.append(
            sun.change(
                "case",
                f"k-{n}",
                {"status": "assigned", "location": GONGSHU},
                [Add(field="parties", value=party)],
            )
        )
        # An unrelated case with a party of its own, and one sharing only a name.
        changes.append(sun.change("party", f"q-{n}", {"name": f"Other {n}"}))
        changes.append(
            sun.change(
                "case",
                f"k-other-{n}",
                {"location": GONGSHU},
                [Add(field="parties", value=f"q-{n}")],
            )
        )
    namesake = sun.change("party", "p-name", {"name": "He Jianguo"})
    namesake_case = sun.change(
        "case", "k-namesake", {"location": GONGSHU}, [Add(field="parties", value="p-name")]
    )
    # In Xihu, the same person again: counted for Xihu's supervisor, never for Gongshu's.
    far = sun.change("party", "p-far", he)
    far_case = sun.change(
        "case", "k-far", {"location": XIHU}, [Add(field="parties", value="p-far")]
    )
    for n, start in enumerate(range(0, len(changes), 10)):
        sun.push(changes[start : start + 10], batch_id=f"b-{n}")
        console.wall.tick()
    sun.push([namesake, namesake_case, far, far_case], batch_id="b-last")
    chen = supervisor(console)
    exact = stats.figures(service_of(console), chen, console.wall.ms)
    assert exact.total.repeats == 6  # k-1 to k-6; not k-0, the others nor the namesake
    assert exact.total.received == 15
    xihu = supervisor(console, org_units=["Hangzhou/Xihu"])
    assert stats.figures(service_of(console), xihu, console.wall.ms).total.repeats == 1


def test_executed_agreements_are_counted_as_the_office_executes_them(console):
    (mediator,) = open_agreement(console)
    chen = supervisor(console)
    sign(mediator, attested(mediator, "p-1"), batch_id="s-1")
    status = "SELECT status, executed_ms FROM agreement_index WHERE agreement_id = 'a-1'"
    assert console.store.db.execute(status).fetchone() == ("collecting", None)
    assert stats.figures(service_of(console), chen, console.wall.ms).agreements_executed == 0
    console.wall.tick()
    sign(mediator, attested(mediator, "p-2"), attested(mediator, "p-3"), batch_id="s-2")
    # The index's status is the stored agreement's, which the office moved after the index ran.
    assert stored_agreement(console).status == "executed"
    assert console.store.db.execute(status).fetchone() == ("executed", console.wall.ms)
    assert stats.figures(service_of(console), chen, console.wall.ms).agreements_executed == 1
    xihu = supervisor(console, org_units=["Hangzhou/Xihu"])
    assert stats.figures(service_of(console), xihu, console.wall.ms).agreements_executed == 0


def test_warnings_turned_into_cases_are_counted(console):
    informant = console.enroll("informant")
    informant.push(
        [
            informant.change(
                "warning", f"w-{n}", {"location": GONGSHU, "category": "drains", "status": "open"}
            )
            for n in range(3)
        ]
    )
    # A supervisor's laptop links w-0 to a new case, and marks w-1 converted into another.
    sun = console.enroll("supervisor")
    seen = dict(console.store.states([("warning", "w-1")])[("warning", "w-1")].vv)
    answer = sun.push(
        [
            sun.change("warning", "w-1", {"status": "converted", "case": "k-other"}, seen=seen),
            sun.change(
                "case",
                "k-from-warning",
                {"location": GONGSHU, "status": "assigned"},
                [Add(field="warnings", value="w-0")],
            ),
        ]
    )
    assert [r["status"] for r in decode(answer)["results"]] == ["applied", "applied"]
    chen = supervisor(console)
    exact = stats.figures(service_of(console), chen, console.wall.ms)
    assert (exact.warnings_received, exact.warnings_converted) == (3, 2)


def test_published_counts_are_suppressed_under_5_and_rounded_to_5():
    assert [published(n) for n in range(5)] == ["<5"] * 5
    assert [published(n) for n in (5, 6, 7, 8, 12, 13, 102)] == [5, 5, 5, 10, 10, 15, 100]
    assert stats.rate(5, 10) == 0.5 and stats.rate("<5", 10) is None
    assert stats.median_days([DAY_MS] * 4) is None
    assert stats.median_days([DAY_MS, DAY_MS, 2 * DAY_MS, 9 * DAY_MS, 9 * DAY_MS]) == 2.0
    assert protect(10, [["<5", "<5"]]) == ("withheld", [["<5", "<5"]])
    assert protect(10, [["<5", "<5", "<5"]]) == (10, [["<5", "<5", "<5"]])
    assert protect(100, [[95, "<5"]]) == (100, [[95, "<5"]])
    # 8 = 4 + 4 in one table, and "at least 8" from the week in another: both must go.
    assert protect(10, [["<5", "<5"], ["<5", 10]]) == (
        "withheld",
        [["<5", "<5"], ["<5", "withheld"]],
    )


def _possible(value):
    """What an exact count may be, from its published value, worked out the long way
    (None: anything)."""
    if value == "withheld":
        return None
    if value == "<5":
        return range(5)
    return [n for n in range(5, value + 3) if published(n) == value]


def _sums(cells):
    """Every total the published `cells` could add up to (None: anything)."""
    sums = {0}
    for cell in cells:
        values = _possible(cell)
        if values is None:
            return None
        sums = {s + v for s in sums for v in values}
    return sums


def _split(draw, total, parts):
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=parts - 1, max_size=parts - 1)))
    return [b - a for a, b in itertools.pairwise([0, *cuts, total])]


@given(st.data())
def test_no_suppressed_cell_is_ever_recoverable_from_what_is_shown(data):
    """Brute force over everything shown: the total and three tables that each split it
    (by category, by unit, by week). Each "<5" keeps at least two possible values."""
    draw = data.draw
    categories = draw(st.lists(st.integers(0, 12), min_size=1, max_size=4))
    total = sum(categories) + draw(st.sampled_from([0, 0, 3, 8, 30]))
    categories.append(total - sum(categories))
    units = _split(draw, total, draw(st.integers(1, 3)))
    weeks = _split(draw, total, draw(st.integers(1, 3)))
    figures = Figures(
        start_ms=0,
        end_ms=len(weeks) * 7 * DAY_MS,
        weeks=[(n * 7 * DAY_MS, count, 0) for n, count in enumerate(weeks)],
        total=Tally(received=total),
        by_category={f"c{n}": Tally(received=c) for n, c in enumerate(categories)},
        by_unit={f"u{n}": Tally(received=u) for n, u in enumerate(units)},
        warnings_received=0,
        warnings_converted=0,
        agreements_executed=0,
    )
    shown = publish(figures)
    tables = [
        [row.received for row in shown.by_category],
        [row.received for row in shown.by_unit],
        [week.received for week in shown.weeks],
    ]
    for index, table in enumerate(tables):
        known = [_possible(shown.total.received)]
        known += [_sums(other) for k, other in enumerate(tables) if k != index]
        totals = set(range(total + 200))
        for values in known:
            if values is not None:
                totals &= set(values)
        assert total in totals
        for cell, value in enumerate(table):
            if value != "<5":
                continue
            rest = _sums(table[:cell] + table[cell + 1 :])
            candidates = {
                v
                for v in range(5)
                if any(t - v >= 0 and (rest is None or t - v in rest) for t in totals)
            }
            assert len(candidates) >= 2, (categories, units, weeks, shown)


def test_the_charts_are_inline_svg_with_every_label_escaped(console):
    sun = console.enroll("mediator", org_units=["Hangzhou"])
    category = '<script>alert("x")</script>'
    push_cases(
        sun, [f"k-{n}" for n in range(6)], {"location": GONGSHU, "category": category}, "b-1"
    )
    chen = supervisor(console)
    read_in_english(console, chen)
    page = console.http.get("/console/stats")
    assert page.status_code == 200
    assert page.text.count("<svg") == 2 and "<script" not in page.text
    assert "&lt;script&gt;" in page.text
    # The page runs no script at all: the charts are drawn on the server.
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
