"""The console reads times and dates on the office's clock (`Settings.time_zone`).

The test wall is 2026-11-18 11:06:40 UTC: 19:06 in Hangzhou, the same date.
"""

from zoneinfo import ZoneInfo

import pytest

from server.console import times
from server.console.stats import WEEK_MS, week_start
from server.settings import load_settings
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU
from tests.server.test_console_triage import sign_in, supervisor

HOUR_MS = 3600 * 1000
SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = ZoneInfo("UTC")


@pytest.fixture
def offices(tmp_path):
    """The same office twice: on Hangzhou's clock (the default) and on UTC."""
    (tmp_path / "hangzhou").mkdir()
    (tmp_path / "utc").mkdir()
    with (
        running_office(tmp_path / "hangzhou") as hangzhou,
        running_office(tmp_path / "utc", time_zone="UTC") as utc,
    ):
        yield hangzhou, utc


def a_case(office, fields=None):
    phone = office.enroll("mediator")
    case = {"title": "Drains", "location": GONGSHU, "status": "assigned", **(fields or {})}
    assert phone.push([phone.change("case", "k-1", case)]).status_code == 200
    return supervisor(office)


def test_the_timeline_shows_when_each_change_was_made_on_the_offices_clock(offices):
    for office in offices:
        sign_in(office, a_case(office))
    hangzhou, utc = (o.http.get("/api/cases/k-1").json()["timeline"] for o in offices)
    assert [e["made_at"] for e in hangzhou] == ["2026-11-18 19:06"]
    assert [e["made_at"] for e in utc] == ["2026-11-18 11:06"]
    assert "2026-11-18 19:06" in offices[0].http.get("/console/cases/k-1").text


def test_a_case_is_overdue_once_its_due_date_is_past_on_the_offices_clock(offices):
    for office in offices:
        chen = a_case(office, {"due": "2026-11-18"})
        office.wall.ms += 6 * HOUR_MS  # 17:06 UTC on the 18th is 01:06 on the 19th in Hangzhou
        sign_in(office, chen)
    hangzhou, utc = (
        [c["case_id"] for c in o.http.get("/api/cases", params={"overdue": "1"}).json()["cases"]]
        for o in offices
    )
    assert (hangzhou, utc) == (["k-1"], [])
    assert offices[0].http.get("/api/overdue").json()["today"] == "2026-11-19"


def test_weeks_begin_on_monday_on_the_offices_clock():
    # Sunday 2026-11-22 20:00 UTC is already Monday 04:00 in Hangzhou.
    sunday_evening_utc = 1_795_377_600_000
    assert times.minute(sunday_evening_utc, SHANGHAI) == "2026-11-23 04:00"
    offset = times.offset_ms(sunday_evening_utc, SHANGHAI)
    assert offset == 8 * HOUR_MS
    monday = week_start(sunday_evening_utc, offset)
    assert times.minute(monday, SHANGHAI) == "2026-11-23 00:00"
    assert times.minute(week_start(sunday_evening_utc), UTC) == "2026-11-16 00:00"
    assert monday <= sunday_evening_utc < monday + WEEK_MS


def test_an_unknown_time_zone_is_refused_at_start():
    with pytest.raises(SystemExit, match="time_zone 'Mars/Olympus' is not a known time zone"):
        load_settings(env={"LIANXIN_TIME_ZONE": "Mars/Olympus"})
    assert load_settings(env={"LIANXIN_TIME_ZONE": "Europe/Berlin"}).zone.key == "Europe/Berlin"
