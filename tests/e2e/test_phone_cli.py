"""`lianxin device ...` acts like a phone against a real server."""

import json

from tests.e2e.conftest import lianxin

DAGUAN = '{"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}'


def test_a_phone_on_the_command_line_enrols_edits_syncs_and_shows(server, tmp_path):
    code = server.code(server.user("Zhao", "mediator", "Hangzhou/Gongshu"))
    phone = ["--file", str(tmp_path / "phone.db"), "--server", server.url]
    assert lianxin(server.data, "device", "enroll", *phone, code).startswith("Enrolled dev-")
    queued = lianxin(
        server.data,
        "device",
        "edit",
        *phone,
        "case",
        "k-1",
        "title=Drains",
        "households=10",
        f"location={DAGUAN}",
        "--add",
        "tags=drains",
    )
    assert queued.startswith("Queued ")
    assert lianxin(server.data, "device", "sync", *phone).startswith("Pushed 1 changes")
    shown = lianxin(server.data, "device", "show", *phone, "case", "k-1")
    record = json.loads(shown)
    assert (record["title"], record["households"], record["tags"]) == ("Drains", 10, ["drains"])
    assert lianxin(server.data, "device", "outbox", *phone).endswith("applied")
