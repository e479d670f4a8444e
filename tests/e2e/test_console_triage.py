"""DESIGN scenario 1 through the console: a real server, reference clients, plain HTTP.

An informant's phone reports a warning; a supervisor signs in to the console
and converts it to a case for a mediator; the informant's phone shows the
answer and the mediator's phone has the case.
"""

import httpx
import pytest

from sync.client import DeviceClient
from tests.conftest import TEST_KDF
from tests.e2e.conftest import lianxin

PIN = "246810"
PASSWORD = "a long console password"
DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang", "community": "Daguan"}
REPLY = "Thank you. A mediator will meet the households on Friday."


@pytest.fixture
def console_server(server):
    """The running office, restarted with console cookies allowed over plain http://127.0.0.1."""
    server.stop()
    server.env["LIANXIN_SECURE_COOKIES"] = "false"
    server.start()
    return server


def test_a_warning_converted_in_the_console_reaches_both_phones(console_server, tmp_path):
    server = console_server
    informant_id = server.user("Liu", "informant", "Hangzhou/Gongshu")
    mediator_id = server.user("Zhao", "mediator", "Hangzhou/Gongshu")
    supervisor_id = server.user("Wang", "supervisor", "Hangzhou/Gongshu")
    lianxin(server.data, "user", "password", supervisor_id, env={"LIANXIN_NEW_PASSWORD": PASSWORD})
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        httpx.Client(base_url=server.url, timeout=30) as browser,
        DeviceClient(tmp_path / "liu.db", http, passphrase=PIN, kdf=TEST_KDF) as informant,
        DeviceClient(tmp_path / "zhao.db", http, passphrase=PIN, kdf=TEST_KDF) as mediator,
    ):
        enrollment = informant.enroll(server.code(informant_id), label="Liu's phone")
        mediator.enroll(server.code(mediator_id), label="Zhao's phone")
        informant.edit(
            "warning",
            "w-drains",
            {
                "location": DAGUAN,
                "category": "infrastructure",
                "severity": "high",
                "status": "open",
                "description": "The drains overflow every rain; 10 households plan to petition.",
                "people_affected": 10,
                "informant": enrollment.pseudonym,
            },
        )
        (pushed,) = informant.sync().pushed
        assert pushed.status == "applied"

        signed_in = browser.post(
            "/console/login", data={"user_id": supervisor_id, "password": PASSWORD}
        )
        assert signed_in.status_code == 303, signed_in.text
        csrf = browser.get("/api/me").json()["csrf"]
        (group,) = browser.get("/api/warnings").json()["groups"]
        (listed,) = group["warnings"]
        assert (listed["warning_id"], listed["informant"]) == ("w-drains", enrollment.pseudonym)
        page = browser.get("/console/warnings/w-drains")
        assert page.status_code == 200 and "Liu" not in page.text
        choices = browser.get("/api/warnings/w-drains").json()["mediators"]
        assert [m["user_id"] for m in choices] == [mediator_id]

        converted = browser.post(
            "/console/warnings/w-drains/convert",
            data={"csrf": csrf, "mediator": mediator_id, "reply": REPLY},
        )
        assert converted.status_code == 303, converted.text
        case_id = converted.headers["location"].rsplit("/", 1)[1]
        assert browser.get(f"/console/cases/{case_id}").status_code == 200

        informant.sync()
        warning = informant.record("warning", "w-drains")
        assert (warning.status, warning.response, warning.case) == ("converted", REPLY, case_id)
        assert informant.record("case", case_id) is None  # an informant never sees a case

        mediator.sync()
        case = mediator.record("case", case_id)
        assert case is not None
        assert (case.status, case.mediators, case.warnings) == (
            "assigned",
            [mediator_id],
            ["w-drains"],
        )
        assert case.location.community == "Daguan"
