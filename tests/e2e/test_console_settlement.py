"""DESIGN scenario 3 settled at the console: a real server process, a browser's requests
over HTTP, and the two mediators' reference clients."""

import re
from contextlib import ExitStack

import httpx
import pytest

from schemas import Add
from sync.client import DeviceClient
from tests.conftest import TEST_KDF
from tests.e2e.conftest import OFFICE_ENV, Server, free_port, lianxin

PIN = "246810"
PASSWORD = "a long console password"
DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang", "community": "Daguan"}


@pytest.fixture
def office(tmp_path, monkeypatch):
    """A `lianxin serve` whose console cookies travel over plain HTTP on 127.0.0.1.

    By default they are `Secure`, and httpx (like a browser) would not send
    them back to http://127.0.0.1.
    """
    monkeypatch.setitem(OFFICE_ENV, "LIANXIN_SECURE_COOKIES", "false")
    data = tmp_path / "office"
    lianxin(data, "init", "--admin", "Admin", "--org-unit", "Hangzhou")
    running = Server(data, f"http://127.0.0.1:{free_port()}", None)  # type: ignore[arg-type]
    running.start()
    yield running
    running.stop()


def set_password(office, user_id, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(OFFICE_ENV, "LIANXIN_NEW_PASSWORD", PASSWORD)
        lianxin(office.data, "user", "password", user_id)


def test_a_conflict_settled_at_the_console_reaches_both_phones(office, tmp_path, monkeypatch):
    wang = office.user("Wang", "supervisor", "Hangzhou/Gongshu")
    set_password(office, wang, monkeypatch)
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=office.url, timeout=30))

        def phone(name):
            user_id = office.user(name, "mediator", "Hangzhou/Gongshu")
            device = DeviceClient(tmp_path / f"{name}.db", http, passphrase=PIN, kdf=TEST_KDF)
            stack.enter_context(device)
            device.enroll(office.code(user_id), label=f"{name}'s phone")
            return device

        sun, li = phone("Sun"), phone("Li")
        sun.edit(
            "case",
            "k-noise",
            {"title": "Late-night mahjong noise", "location": DAGUAN, "status": "assigned"},
            [Add(field="mediators", value=m.identity.user_id) for m in (sun, li)],
        )
        sun.sync()
        li.sync()
        # No signal: both write the summary, neither having seen the other's.
        sun.edit("case", "k-noise", {"summary": "Stop at 22:00 on weekdays."})
        li.edit("case", "k-noise", {"summary": "Move the table indoors."})
        sun.sync()
        li.sync()
        sun.sync()
        for device in (sun, li):
            (conflict,) = device.conflicts("case", "k-noise")
            assert conflict.field == "summary"

        browser = stack.enter_context(httpx.Client(base_url=office.url, timeout=30))
        signed_in = browser.post(
            "/console/login",
            data={"user_id": wang, "password": PASSWORD, "next": "/console/conflicts"},
            follow_redirects=True,
        )
        assert signed_in.status_code == 200 and signed_in.url.path == "/console/conflicts"
        english = {"language": "en", "csrf": csrf_of(signed_in.text)}
        assert browser.post("/console/language", data=english).status_code == 303
        queue = browser.get("/api/conflicts").json()
        (conflict,) = queue["conflicts"]
        names = {c["value"]: c["author"]["user_name"] for c in conflict["candidates"]}
        assert names == {"Stop at 22:00 on weekdays.": "Sun", "Move the table indoors.": "Li"}

        page = browser.get("/console/conflicts")
        assert "Stop at 22:00 on weekdays." in page.text and "Move the table indoors." in page.text
        settled = "Stop at 22:00; the table moves indoors on Fridays."
        answer = browser.post(
            "/console/conflicts/settle",
            data={
                "csrf": csrf_of(page.text),
                "record_type": "case",
                "record_id": "k-noise",
                "field": "summary",
                "version": re.search(r'name="version" value="(\d+)"', page.text).group(1),
                "choice": "custom",
                "value": settled,
                "reason": "Agreed with both households at the visit",
            },
            follow_redirects=False,
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/console/conflicts"
        assert browser.get("/api/conflicts").json()["total"] == 0

        sun.sync()
        li.sync()
        for device in (sun, li):
            assert device.conflicts("case", "k-noise") == []
            assert device.record("case", "k-noise").summary == settled


def csrf_of(page):
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)
