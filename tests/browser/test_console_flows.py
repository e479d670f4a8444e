"""What supervisors and admins do in the console, in a real browser against `lianxin demo`.

An informant's phone (the reference client) reports a warning to the demo
office; a supervisor triages it into a case, settles the seed's conflict and
reads the statistics; an admin revokes the phone.
"""

import os
import subprocess
import sys

import httpx
import pytest

from sync.client import DeviceClient
from sync.errors import RevokedDevice
from tests.browser.conftest import screenshot, sign_in
from tests.conftest import TEST_KDF

GONGSHU = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang", "community": "Daguan"}


def lianxin(demo, *args):
    """The command line on the demo office's folder, while it serves."""
    env = {**os.environ, "LIANXIN_PASSPHRASE": "lianxin demo only"}
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(demo.data), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def informant(demo, tmp_path_factory):
    """An informant's phone, enrolled with the demo office, that reported a blocked fire lane."""
    user_id = lianxin(
        demo, "user", "add", "Ma Lihua", "--role", "informant", "--org-unit", "Hangzhou/Gongshu"
    )
    lianxin(demo, "user", "add", "Zhao Min", "--role", "mediator", "--org-unit", "Hangzhou/Gongshu")
    code = lianxin(demo, "code", user_id)
    http = httpx.Client(base_url=demo.url, timeout=30)
    phone = DeviceClient(
        tmp_path_factory.mktemp("phone") / "ma.db", http, passphrase="135790", kdf=TEST_KDF
    )
    enrollment = phone.enroll(code, label="Ma's phone")
    phone.edit(
        "warning",
        "w-fire-lane",
        set={
            "description": "Cars parked across the fire lane behind block 3 again",
            "category": "neighbours",
            "severity": "high",
            "location": GONGSHU,
            "informant": enrollment.pseudonym,
        },
    )
    assert [r.status for r in phone.push()] == ["applied"]
    yield phone
    phone.close()
    http.close()


def english(page, demo, user, password):
    sign_in(page, demo, user, password)
    page.wait_for_url("**/console/**")
    page.select_option("select[name=language]", "en")
    page.click("form[action='/console/language'] button")


def test_a_supervisor_settles_the_conflict_of_two_mediators(demo, page):
    english(page, demo, demo.supervisor, demo.supervisor_password)
    page.goto(f"{demo.url}/console/conflicts")
    page.wait_for_selector("text=Players agree to stop at 22:00 on weekdays.")
    assert page.locator("text=Players agree to move the table indoors.").count() >= 1
    screenshot(page, "conflicts")
    # The seed's conflict; the simulated week has made others.
    form = page.locator("form[action='/console/conflicts/settle']").filter(
        has=page.locator("input[name=record_id][value='k-noise']")
    )
    form.locator("input[value=custom]").check()
    form.locator("textarea[name=value]").fill("Players stop at 22:00 and move the table indoors.")
    form.locator("input[name=reason]").fill("Both mediators agreed on the phone")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    page.goto(f"{demo.url}/console/cases/k-noise")
    page.wait_for_selector("text=Players stop at 22:00 and move the table indoors.")
    assert page.locator("text=Open conflicts").count() == 0


def test_a_supervisor_triages_the_warning_into_a_case_and_the_phone_gets_the_answer(
    demo, page, informant
):
    english(page, demo, demo.supervisor, demo.supervisor_password)
    page.goto(f"{demo.url}/console/warnings")
    page.wait_for_selector("text=Cars parked across the fire lane behind block 3 again")
    page.click("a[href='/console/warnings/w-fire-lane']")
    page.fill("#reply", "Thank you: mediator Zhao visits the block this week.")
    page.select_option("#mediator", label="Zhao Min (Hangzhou/Gongshu)")
    with page.expect_navigation():
        page.click("button:has-text('Convert to a case and assign')")
    assert page.locator("text=Not possible").count() == 0, page.content()
    informant.pull()
    warning = informant.record("warning", "w-fire-lane")
    assert warning.status == "converted" and warning.case
    assert warning.response == "Thank you: mediator Zhao visits the block this week."
    page.goto(f"{demo.url}/console/cases/{warning.case}")
    page.wait_for_selector("text=Cars parked across the fire lane behind block 3 again")


def test_the_statistics_page_shows_charts(demo, page):
    english(page, demo, demo.supervisor, demo.supervisor_password)
    page.goto(f"{demo.url}/console/stats")
    page.wait_for_selector("h1")
    assert page.locator("svg").count() >= 1
    assert "<5" in page.content() or "&lt;5" in page.content()  # small counts are suppressed
    screenshot(page, "stats")


def test_an_admin_revokes_the_phone_and_it_is_refused_at_once(demo, page, informant):
    english(page, demo, demo.admin, demo.admin_password)
    page.goto(f"{demo.url}/console/admin")
    device = informant.identity.device_id
    row = page.locator("tr", has=page.locator(f"text={device}"))
    row.locator("input[name=reason]").fill("phone lost on the bus")
    with page.expect_navigation():
        row.locator("button:has-text('Revoke now')").click()
    informant.edit("warning", "w-fire-lane", set={"people_affected": 40})
    with pytest.raises(RevokedDevice):
        informant.push()


def test_an_admin_disables_a_mediator_who_left_and_their_phone_is_refused(demo, page, tmp_path):
    user_id = lianxin(
        demo, "user", "add", "Qian Wei", "--role", "mediator", "--org-unit", "Hangzhou/Gongshu"
    )
    with httpx.Client(base_url=demo.url, timeout=30) as http:
        phone = DeviceClient(tmp_path / "qian.db", http, passphrase="135790", kdf=TEST_KDF)
        with phone:
            phone.enroll(lianxin(demo, "code", user_id), label="Qian's phone")
            english(page, demo, demo.admin, demo.admin_password)
            page.goto(f"{demo.url}/console/admin")
            form = page.locator(f"form[action='/console/admin/users/{user_id}/disable']")
            form.locator("input[name=reason]").fill("moved to another district")
            with page.expect_navigation():
                form.locator("button").click()
            row = page.locator("h2:has-text('Users') + table tr", has_text=user_id)
            assert "left the office" in row.inner_text()
            assert row.locator("button").count() == 0  # no code for them, nothing to disable
            with pytest.raises(RevokedDevice):
                phone.pull()


def test_an_admin_moves_a_mediator_to_another_street_and_the_page_says_so(demo, page):
    user_id = lianxin(
        demo, "user", "add", "Sun Hao", "--role", "mediator", "--org-unit", "Hangzhou/Gongshu"
    )
    english(page, demo, demo.admin, demo.admin_password)
    page.goto(f"{demo.url}/console/admin")
    form = page.locator(f"form[action='/console/admin/users/{user_id}/move']")
    assert form.locator("input[name=org_units]").input_value() == "Hangzhou/Gongshu"
    form.locator("input[name=org_units]").fill("Hangzhou/Xihu/Beishan, Hangzhou/Xihu/Lingyin")
    form.locator("input[name=reason]").fill("new street")
    with page.expect_navigation():
        form.locator("button").click()
    row = page.locator("h2:has-text('Users') + table tr", has_text=user_id)
    assert "Hangzhou/Xihu/Beishan, Hangzhou/Xihu/Lingyin" in row.inner_text()
    assert "Hangzhou/Gongshu" not in row.inner_text()
