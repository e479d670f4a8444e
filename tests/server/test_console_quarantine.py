"""The quarantine through the real app: who sees a rejected change, acknowledging, re-applying."""

import msgspec
import pytest

from schemas import Add
from server import audit
from server.console.actions import office_change
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU, XIHU
from tests.server.test_console_conflicts import decode, sign_in, supervisor


@pytest.fixture
def office(tmp_path):
    with running_office(tmp_path) as office:
        yield office


def service_of(office):
    return office.http.app.state.service


def an_unassigned_edit(office):
    """Sun opens a Gongshu case; Zhao, not named on it, writes to it: `not_permitted`."""
    sun = office.enroll("mediator", name="Sun Li")
    zhao = office.enroll("mediator", name="Zhao Gang")
    opened = sun.change(
        "case", "k-roof", {"title": "Leaking roof", "location": GONGSHU, "status": "assigned"}
    )
    sun.push([opened], "b-open")
    edit = zhao.change("case", "k-roof", {"summary": "The landlord will pay for the tiles."})
    (result,) = decode(zhao.push([edit], "b-zhao"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    return sun, zhao, edit


def held(office, everything=False):
    return office.http.get("/api/quarantine", params={"all": "1"} if everything else {}).json()


def test_the_supervisor_sees_a_rejected_change_with_its_reason_author_and_time(office):
    _, zhao, edit = an_unassigned_edit(office)
    sign_in(office, supervisor(office))
    listed = held(office)
    assert listed["total"] == 1
    (item,) = listed["items"]
    assert (item["change_id"], item["record_id"], item["reason"]) == (
        edit.change_id,
        "k-roof",
        "not_permitted",
    )
    assert item["exists"] and item["title"] == "Leaking roof"
    assert item["author"] == {
        "device_id": zhao.device_id,
        "user_id": zhao.enrollment.user_id,
        "user_name": "Zhao Gang",
        "office": False,
    }
    assert item["set"] == {"summary": "The landlord will pay for the tiles."}
    assert item["received_ms"] == office.wall.ms and item["received"].startswith("2026-11-")
    assert item["made_ms"] == edit.hlc >> 16
    page = office.http.get("/console/quarantine")
    assert page.status_code == 200
    for text in ("not_permitted", "Zhao Gang", "The landlord will pay for the tiles."):
        assert text in page.text


def test_an_informants_rejected_change_shows_their_pseudonym_not_their_name(office):
    # Informants appear to supervisors as pseudonyms; only an audited re-identification by
    # a supervisor of theirs says who they are. The quarantine named them outright.
    informant = office.enroll("informant", ["Hangzhou/Gongshu"], name="Li Xiuying")
    alias = informant.enrollment.pseudonym
    warning = {"description": "Shouting at night", "location": XIHU, "informant": alias}
    informant.push([informant.change("warning", "w-1", warning)], "b-1")
    theirs = informant.change("warning", "w-1", {"informant": "inf-someone-else"})
    (result,) = decode(informant.push([theirs], "b-2"))["results"]
    assert result["reason"] == "not_permitted"
    sign_in(office, supervisor(office, org_units=("Hangzhou/Xihu",)))

    (item,) = held(office)["items"]

    assert item["author"] == {
        "device_id": informant.device_id,
        "user_id": alias,
        "user_name": alias,
        "office": False,
    }
    for page in ("/console/quarantine", "/console/export/quarantine.csv"):
        shown = office.http.get(page).text
        assert alias in shown and "Li Xiuying" not in shown, page
        assert informant.enrollment.user_id not in shown, page


def test_a_refused_change_holding_anything_at_all_leaves_the_quarantine_readable(office):
    # A refused change is kept as its device sent it: an extension type, a map keyed by
    # nil, a value nested far deeper than any record. Each made the quarantine page, its
    # JSON twin and the export answer 500 on every load, for every supervisor.
    sun = office.enroll("mediator")
    sun.push([sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})], "b-0")
    deep: object = "x"
    for _ in range(900):
        deep = [deep]
    odd = [
        sun.change("case", "k-1", {"title": msgspec.msgpack.Ext(5, b"\x01")}),
        sun.change("case", "k-1", {"location": {None: 1, (1, 2): "pair"}}),
        sun.change("case", "k-1", ops=[Add(field="tags", value=msgspec.msgpack.Ext(1, b""))]),
        sun.change("case", "k-1", ops=[Add(field="parties", value=deep)]),
    ]
    for n, change in enumerate(odd):
        (result,) = decode(sun.push([change], f"b-{n + 1}"))["results"]
        assert result["status"] == "rejected", result
    sign_in(office, supervisor(office))

    listed = held(office)

    assert listed["total"] == 4
    shown = {item["change_id"]: item for item in listed["items"]}
    assert shown[odd[0].change_id]["set"] == {"title": "<Ext>"}
    assert shown[odd[1].change_id]["set"] == {"location": {"<NoneType>": 1, "<tuple>": "pair"}}
    assert shown[odd[2].change_id]["ops"] == [{"type": "add", "field": "tags", "value": "<Ext>"}]
    assert "…" in str(shown[odd[3].change_id]["ops"])
    for page in ("/console/quarantine", "/console/export/quarantine.csv"):
        assert office.http.get(page).status_code == 200, page


def test_acknowledged_changes_leave_the_list_unless_all_are_asked_for(office):
    _, _, edit = an_unassigned_edit(office)
    chen = supervisor(office)
    csrf = sign_in(office, chen)
    answer = office.http.post(
        "/console/quarantine/acknowledge",
        data={"change_id": edit.change_id, "csrf": csrf},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/quarantine"
    assert held(office)["items"] == []
    (item,) = held(office, everything=True)["items"]
    assert item["acknowledged_by"] == chen.user_id and item["acknowledged_ms"] == office.wall.ms
    assert "Acknowledged" in office.http.get("/console/quarantine?all=1").text
    entry = audit.entries(office.store.db)[-1]
    assert (entry.actor, entry.action, entry.subject) == (
        f"user:{chen.user_id}",
        "quarantine_acknowledge",
        "case/k-roof",
    )
    assert entry.detail == {"change_id": edit.change_id, "reason": "not_permitted"}
    # Acknowledging again (a double click) changes nothing and logs nothing.
    entries = len(audit.entries(office.store.db))
    again = office.http.post(
        "/api/quarantine/acknowledge",
        json={"change_id": edit.change_id},
        headers={"x-csrf-token": csrf},
    )
    assert again.status_code == 200 and again.json()["acknowledged_by"] == chen.user_id
    assert len(audit.entries(office.store.db)) == entries


@pytest.mark.parametrize("before_0008", [False, True], ids=["batch-kept", "batch-found"])
def test_reapplying_after_the_cause_was_fixed_applies_the_change_as_its_device(office, before_0008):
    sun, zhao, edit = an_unassigned_edit(office)
    if before_0008:  # quarantined before the batch was kept: found by its hash
        office.store.db.execute("UPDATE quarantine SET batch_id = NULL")
    chen = supervisor(office)
    csrf = sign_in(office, chen)
    assert held(office)["items"][0]["received_ms"] == (None if before_0008 else office.wall.ms)
    # The fix: the supervisor names Zhao on the case.
    office_change(
        service_of(office),
        chen,
        "case",
        "k-roof",
        "assign",
        "Zhao knows the landlord",
        ops=[Add(field="mediators", value=zhao.enrollment.user_id)],
    )
    answer = office.http.post(
        "/console/quarantine/reapply",
        data={"change_id": edit.change_id, "reason": "Zhao is now on the case", "csrf": csrf},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/console/quarantine?reapplied={edit.change_id}"
    page = office.http.get(answer.headers["location"])
    assert "Re-applied" in page.text and "rejected again" not in page.text
    assert held(office, everything=True)["items"] == []
    case = office.http.get("/api/cases/k-roof").json()
    assert case["case"]["summary"] == "The landlord will pay for the tiles."
    # Still the device's change, in the batch it signed: attributable as ever.
    (entry,) = [e for e in case["timeline"] if e["change_id"] == edit.change_id]
    assert (entry["device_id"], entry["user_name"]) == (zhao.device_id, "Zhao Gang")
    assert entry["signature_verified"] is True
    logged = audit.entries(office.store.db)[-1]
    assert (logged.action, logged.detail["outcome"], logged.detail["was"]) == (
        "quarantine_reapply",
        "applied",
        "not_permitted",
    )
    assert logged.detail["reason"] == "Zhao is now on the case"
    # Zhao's phone now receives the case with its own change in it; Sun's gets the change.
    for phone in (sun, zhao):
        items, _ = phone.pull_all()
        ids = [msgspec.msgpack.decode(i["change"])["change_id"] for i in items if "change" in i]
        assert edit.change_id in ids
    # Pushing it again now is a duplicate of the applied change, not a new write.
    (retry,) = decode(zhao.push([edit], "b-zhao"))["results"]
    assert retry["status"] == "duplicate" and "seq" in retry


def test_reapplying_without_a_fix_puts_it_back_with_the_new_reason(office):
    _, _, edit = an_unassigned_edit(office)
    chen = supervisor(office)
    csrf = sign_in(office, chen)
    office.http.post(
        "/console/quarantine/acknowledge", data={"change_id": edit.change_id, "csrf": csrf}
    )
    answer = office.http.post(
        "/api/quarantine/reapply",
        json={"change_id": edit.change_id, "reason": "Try again"},
        headers={"x-csrf-token": csrf},
    )
    assert answer.status_code == 200
    assert answer.json()["status"] == "rejected" and answer.json()["reason"] == "not_permitted"
    # Back in quarantine, and no longer acknowledged: a new rejection is news.
    (item,) = held(office)["items"]
    assert item["change_id"] == edit.change_id and item["acknowledged_ms"] is None
    assert item["received_ms"] == office.wall.ms  # still dated by the batch it came in
    page = office.http.get(f"/console/quarantine?reapplied={edit.change_id}")
    assert "rejected again" in page.text
    logged = audit.entries(office.store.db)[-1]
    assert (logged.action, logged.detail["outcome"], logged.detail["rejected"]) == (
        "quarantine_reapply",
        "rejected",
        "not_permitted",
    )


def test_a_status_move_is_judged_against_what_its_device_had_seen(office):
    sun = office.enroll("mediator", name="Sun Li")
    zhao = office.enroll("mediator", name="Zhao Gang")
    sun.push([sun.change("case", "k-roof", {"title": "Roof", "location": GONGSHU})], "b-open")
    # Zhao had never pulled the case: from no status, in_mediation is no place to start.
    move = zhao.change("case", "k-roof", {"status": "in_mediation"})
    zhao.push([move], "b-zhao")
    chen = supervisor(office)
    csrf = sign_in(office, chen)
    office_change(
        service_of(office),
        chen,
        "case",
        "k-roof",
        "assign",
        "Zhao takes it",
        set={"status": "assigned"},
        ops=[Add(field="mediators", value=zhao.enrollment.user_id)],
    )
    answer = office.http.post(
        "/console/quarantine/reapply",
        data={"change_id": move.change_id, "reason": "Assigned now", "csrf": csrf},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    page = office.http.get(answer.headers["location"])
    assert "rejected again" in page.text and "illegal_transition" in page.text
    (item,) = held(office)["items"]
    assert (item["change_id"], item["reason"]) == (move.change_id, "illegal_transition")


def test_a_new_record_is_shown_to_the_supervisors_of_its_place(office):
    xihu_mediator = office.enroll("mediator", ("Hangzhou/Xihu",), name="Wu")
    gongshu_mediator = office.enroll("mediator", name="Sun Li")
    bad_case = xihu_mediator.change(
        "case", "k-new", {"title": "Noise", "location": XIHU, "priority": "whenever"}
    )
    xihu_mediator.push([bad_case], "b-1")
    bad_party = gongshu_mediator.change("party", "p-new", {"role": "bystander"})
    gongshu_mediator.push([bad_party], "b-1")
    # The case's location is Xihu, though the party has none: its mediator's unit decides.
    seen = {}
    for name, units in (("Xu", ["Hangzhou/Xihu"]), ("Chen", ["Hangzhou/Gongshu"])):
        sign_in(office, supervisor(office, name, units))
        seen[name] = {i["record_id"]: i["reason"] for i in held(office)["items"]}
    city = supervisor(office, "Zhang", ["Hangzhou"])
    sign_in(office, city)
    seen["Zhang"] = {i["record_id"] for i in held(office)["items"]}
    assert seen["Xu"] == {"k-new": "invalid_value"}
    assert seen["Chen"] == {"p-new": "invalid_value"}
    assert seen["Zhang"] == {"k-new", "p-new"}


@pytest.mark.parametrize(
    "location",
    [
        {"city": "", "district": "", "street": ""},  # valid, but names no unit
        {"city": "", "district": "", "street": "Gongshu"},  # refused: empty before named
    ],
    ids=["no-unit", "refused"],
)
def test_a_new_record_whose_location_places_it_nowhere_goes_to_its_mediators_units(
    office, location
):
    sun = office.enroll("mediator", name="Sun Li")  # Hangzhou/Gongshu
    bad_case = sun.change("case", "k-new", {"title": "x" * 300, "location": location})
    (result,) = decode(sun.push([bad_case], "b-1"))["results"]
    assert result["status"] == "rejected"
    seen = {}
    for name, units in (("Chen", ["Hangzhou/Gongshu"]), ("Xu", ["Hangzhou/Xihu"])):
        sign_in(office, supervisor(office, name, units))
        seen[name] = [i["record_id"] for i in held(office)["items"]]
    assert seen == {"Chen": ["k-new"], "Xu": []}


def test_another_districts_supervisor_sees_nothing_and_can_do_nothing(office):
    _, _, edit = an_unassigned_edit(office)
    csrf = sign_in(office, supervisor(office, "Xu", ["Hangzhou/Xihu"]))
    assert held(office, everything=True)["items"] == []
    assert edit.change_id not in office.http.get("/console/quarantine?all=1").text
    stored = office.fingerprint()
    for path, body in (
        ("/api/quarantine/acknowledge", {"change_id": edit.change_id}),
        ("/api/quarantine/reapply", {"change_id": edit.change_id, "reason": "Mine"}),
    ):
        answer = office.http.post(path, json=body, headers={"x-csrf-token": csrf})
        assert (answer.status_code, answer.json()["error"]) == (404, "unknown_record"), path
    form = office.http.post(
        "/console/quarantine/reapply",
        data={"change_id": edit.change_id, "reason": "Mine", "csrf": csrf},
        follow_redirects=False,
    )
    assert form.status_code == 404
    assert office.fingerprint() == stored


def test_a_revoked_devices_change_is_not_reapplied_and_a_reason_is_required(office):
    _, zhao, edit = an_unassigned_edit(office)
    csrf = sign_in(office, supervisor(office))
    stored = office.fingerprint()
    no_reason = office.http.post(
        "/api/quarantine/reapply",
        json={"change_id": edit.change_id, "reason": " "},
        headers={"x-csrf-token": csrf},
    )
    assert (no_reason.status_code, no_reason.json()["error"]) == (400, "invalid_action")
    assert office.fingerprint() == stored
    office.directory.revoke(zhao.device_id, office.wall.ms)
    stored = office.fingerprint()
    revoked = office.http.post(
        "/console/quarantine/reapply",
        data={"change_id": edit.change_id, "reason": "Fixed", "csrf": csrf},
    )
    assert revoked.status_code == 400 and "revoked" in revoked.text
    assert office.fingerprint() == stored


@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "forged"])
def test_quarantine_writes_need_the_sessions_csrf_token(office, token):
    _, _, edit = an_unassigned_edit(office)
    sign_in(office, supervisor(office))
    stored, entries = office.fingerprint(), len(audit.entries(office.store.db))
    for action in ("acknowledge", "reapply"):
        form = {
            "change_id": edit.change_id,
            "reason": "Fixed",
            **({"csrf": token} if token else {}),
        }
        page = office.http.post(f"/console/quarantine/{action}", data=form, follow_redirects=False)
        assert page.status_code == 403 and "csrf_refused" in page.text
        api = office.http.post(
            f"/api/quarantine/{action}",
            json={"change_id": edit.change_id, "reason": "Fixed"}
            if action == "reapply"
            else {"change_id": edit.change_id},
            headers={"x-csrf-token": token} if token else {},
        )
        assert (api.status_code, api.json()["error"]) == (403, "csrf_refused")
    assert office.fingerprint() == stored
    assert len(audit.entries(office.store.db)) == entries
