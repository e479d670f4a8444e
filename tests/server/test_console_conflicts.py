"""The conflicts queue through the real app: DESIGN scenario 3 settled at the console."""

import msgspec
import pytest

from schemas import Add, Delete, Remove
from server import audit
from server.console import signin
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU, XIHU

PASSWORD = "long enough password"


@pytest.fixture
def office(tmp_path):
    with running_office(tmp_path) as office:
        yield office


def supervisor(office, name="Chen Jing", org_units=("Hangzhou/Gongshu",)):
    user = office.directory.add_user(name, "supervisor", list(org_units), office.wall.ms)
    signin.set_password(office.directory, user.user_id, PASSWORD)
    return user


def sign_in(office, user):
    """Sign `user` in on the office's client; the session's CSRF token."""
    office.http.cookies.clear()
    answer = office.http.post(
        "/console/login",
        data={"user_id": user.user_id, "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    csrf = office.http.get("/api/me").json()["csrf"]
    # The pages are read in English here: the console's default language is zh-CN.
    office.http.post("/console/language", data={"language": "en", "csrf": csrf})
    return csrf


def two_mediators(office):
    """Sun opens a Gongshu case and names Li on it; both have pulled it."""
    sun = office.enroll("mediator", name="Sun Li")
    li = office.enroll("mediator", name="Li Wei")
    opened = sun.change(
        "case",
        "k-noise",
        {"title": "Late-night mahjong noise", "location": GONGSHU, "status": "assigned"},
        [Add(field="mediators", value=li.enrollment.user_id)],
    )
    assert decode(sun.push([opened], "b-open"))["results"][0]["status"] == "applied"
    return sun, li


def concurrently(sun, li, sun_set, li_set, batch="b-edit", li_seen=None):
    """Both edit offline, neither having seen the other's edit (`seen={}`).

    `li_seen` is what Li had pulled before (a status move must start from a status seen).
    """
    first = decode(sun.push([sun.change("case", "k-noise", sun_set)], f"{batch}-sun"))
    second = decode(li.push([li.change("case", "k-noise", li_set, seen=li_seen)], f"{batch}-li"))
    return first["results"][0], second["results"][0]


def as_opened(office, sun):
    """What a phone had seen after pulling the case as Sun opened it."""
    (hlc,) = office.store.db.execute(
        "SELECT hlc FROM changes WHERE device_id = ? ORDER BY seq LIMIT 1", [sun.device_id]
    ).fetchone()
    return {sun.device_id: hlc}


def decode(answer):
    return msgspec.msgpack.decode(answer.content)


def pulled_changes(phone):
    items, _ = phone.pull_all()
    return [msgspec.msgpack.decode(i["change"]) for i in items if i["type"] == "change"]


def settle_form(office, csrf, conflict, **fields):
    data = {
        "record_type": conflict["record_type"],
        "record_id": conflict["record_id"],
        "field": conflict["field"],
        "version": str(conflict["version"]),
        **({"csrf": csrf} if csrf else {}),
        **fields,
    }
    return office.http.post("/console/conflicts/settle", data=data, follow_redirects=False)


def test_the_supervisor_sees_both_values_with_their_authors_and_settles_with_a_value(office):
    sun, li = two_mediators(office)
    mine, theirs = concurrently(
        sun, li, {"summary": "Stop at 22:00 on weekdays."}, {"summary": "Move the table indoors."}
    )
    assert (mine["status"], theirs["status"]) == ("applied", "conflict")
    chen = supervisor(office)
    csrf = sign_in(office, chen)

    listed = office.http.get("/api/conflicts").json()
    assert listed["total"] == 1
    (conflict,) = listed["conflicts"]
    assert (conflict["record_id"], conflict["field"], conflict["kind"]) == (
        "k-noise",
        "summary",
        "value",
    )
    assert conflict["title"] == "Late-night mahjong noise"
    assert conflict["link"] == "/console/cases/k-noise"
    by_value = {c["value"]: c["author"] for c in conflict["candidates"]}
    assert by_value["Stop at 22:00 on weekdays."] == {
        "device_id": sun.device_id,
        "user_id": sun.enrollment.user_id,
        "user_name": "Sun Li",
        "office": False,
    }
    assert by_value["Move the table indoors."]["user_name"] == "Li Wei"
    assert all(c["at_ms"] == office.wall.ms for c in conflict["candidates"])
    assert all(c["at"].startswith("2026-11-") for c in conflict["candidates"])
    page = office.http.get("/console/conflicts")
    assert page.status_code == 200
    for text in ("Stop at 22:00 on weekdays.", "Move the table indoors.", "Sun Li", "Li Wei"):
        assert text in page.text

    settled = "Stop at 22:00; the table moves indoors on Fridays."
    answer = settle_form(
        office, csrf, conflict, choice="custom", value=settled, reason="Agreed at the visit"
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/conflicts"
    assert office.http.get("/api/conflicts").json() == {
        "conflicts": [],
        "total": 0,
        "offset": 0,
        "limit": 50,
    }
    assert office.store.open_conflicts() == []
    assert office.http.get("/api/cases/k-noise").json()["case"]["summary"] == settled
    entry = audit.entries(office.store.db)[-1]
    assert (entry.actor, entry.action, entry.subject) == (
        f"user:{chen.user_id}",
        "settle_conflict",
        "case/k-noise",
    )
    assert entry.detail["reason"] == "Agreed at the visit" and entry.detail["fields"] == ["summary"]

    # Both phones receive the settling change, authored by the office at Chen's hand.
    for phone in (sun, li):
        (settling,) = [c for c in pulled_changes(phone) if c["device_id"].startswith("console:")]
        assert settling["set"] == {"summary": settled}
        assert settling["device_id"] == f"console:{chen.user_id}"
        # It had seen every candidate: that is why it supersedes them.
        assert settling["seen"][sun.device_id] >= mine_stamp(office, mine)
        assert li.device_id in settling["seen"]


def mine_stamp(office, result):
    (hlc,) = office.store.db.execute(
        "SELECT hlc FROM changes WHERE change_id = ?", [result["change_id"]]
    ).fetchone()
    return hlc


def test_settling_with_a_candidate_through_the_api(office):
    sun, li = two_mediators(office)
    concurrently(sun, li, {"priority": "high"}, {"priority": "urgent"})
    csrf = sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    urgent = next(c["index"] for c in conflict["candidates"] if c["value"] == "urgent")
    answer = office.http.post(
        "/api/conflicts/settle",
        json={
            "record_type": "case",
            "record_id": "k-noise",
            "field": "priority",
            "choice": urgent,
            "reason": "The landlord threatens to cut the power",
            "version": conflict["version"],
        },
        headers={"x-csrf-token": csrf},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["field"], body["status"]) == ("priority", "applied")
    assert office.store.open_conflicts() == []
    assert office.http.get("/api/cases/k-noise").json()["case"]["priority"] == "urgent"
    # The phones hold the settled value after their next pull.
    (settling,) = [c for c in pulled_changes(li) if c["change_id"] == body["change_id"]]
    assert settling["set"] == {"priority": "urgent"}


def test_a_status_conflict_is_settled_by_a_legal_move_and_the_merge_refuses_others(office):
    sun, li = two_mediators(office)
    moves = concurrently(
        sun, li, {"status": "in_mediation"}, {"status": "resolved"}, li_seen=as_opened(office, sun)
    )
    assert [m["status"] for m in moves] == ["applied", "conflict"]
    csrf = sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    assert (conflict["kind"], conflict["winner"]) == ("status", "resolved")
    stored = office.fingerprint()
    refused = settle_form(office, csrf, conflict, choice="custom", value="new", reason="Reopen")
    assert refused.status_code == 400
    assert "illegal_transition" in refused.text and "resolved cannot move to new" in refused.text
    assert office.fingerprint() == stored
    back = next(c["index"] for c in conflict["candidates"] if c["value"] == "in_mediation")
    answer = settle_form(office, csrf, conflict, choice=str(back), reason="Not resolved yet")
    assert answer.status_code == 303
    assert office.store.open_conflicts() == []
    assert office.http.get("/api/cases/k-noise").json()["case"]["status"] == "in_mediation"


def test_typed_values_are_read_for_the_fields_type_and_checked_by_the_merge(office):
    sun, li = two_mediators(office)
    concurrently(sun, li, {"households": 12}, {"households": 14})
    csrf = sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    stored = office.fingerprint()
    refused = settle_form(office, csrf, conflict, choice="custom", value="many", reason="Count")
    assert refused.status_code == 400 and "invalid_value" in refused.text
    # The page comes back with what the supervisor typed, to correct it.
    assert 'value="Count"' in refused.text
    assert office.fingerprint() == stored
    answer = settle_form(office, csrf, conflict, choice="custom", value="13", reason="Counted")
    assert answer.status_code == 303
    assert office.http.get("/api/cases/k-noise").json()["case"]["households"] == 13


@pytest.mark.parametrize("value", [str(2**64), str(-(2**63) - 1)], ids=["above", "below"])
def test_a_whole_number_beyond_64_bits_is_refused_not_a_server_error(office, value):
    sun, li = two_mediators(office)
    concurrently(sun, li, {"households": 12}, {"households": 14})
    csrf = sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    stored = office.fingerprint()
    form = settle_form(office, csrf, conflict, choice="custom", value=value, reason="Count")
    assert form.status_code == 400 and "too large to store" in form.text
    api = settle_api(office, csrf, conflict, int(value))
    assert (api.status_code, api.json()["error"]) == (400, "invalid_action")
    assert office.fingerprint() == stored


def test_a_case_deleted_while_another_mediator_edited_it_is_restored(office):
    sun, li = two_mediators(office)
    concurrently(
        sun, li, {"priority": "low"}, {"summary": "Neighbours agree to talk."}, batch="b-first"
    )
    deleted = sun.change("case", "k-noise", ops=[Delete()])
    # Made beside Li's edit, the delete takes part in the conflict it opens.
    assert decode(sun.push([deleted], "b-delete"))["results"][0]["status"] == "conflict"
    csrf = sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    assert (conflict["field"], conflict["kind"], conflict["choices"]) == (
        "_record",
        "deleted",
        ["restore", "delete"],
    )
    (candidate,) = conflict["candidates"]
    assert candidate["value"] == {"summary": "Neighbours agree to talk."}
    assert candidate["author"]["user_name"] == "Li Wei"
    assert candidate["shown"] == "summary: Neighbours agree to talk."
    refused = settle_form(office, csrf, conflict, choice="0", reason="Keep it")
    assert refused.status_code == 400
    answer = settle_form(office, csrf, conflict, choice="restore", reason="Still in mediation")
    assert answer.status_code == 303
    assert office.store.open_conflicts() == []
    (deleted_flag,) = office.store.db.execute(
        "SELECT deleted FROM records WHERE record_id = 'k-noise'"
    ).fetchone()
    assert deleted_flag == 0
    assert audit.entries(office.store.db)[-1].action == "settle_conflict_restore"


def test_a_removal_beside_a_delete_is_answered_conflict_and_shown_with_nothing_to_keep(office):
    # Li removed a tag while Sun deleted the case: a contested delete, with no value left.
    sun, li = two_mediators(office)
    tagged = sun.change("case", "k-noise", ops=[Add(field="tags", value="noise")])
    assert decode(sun.push([tagged], "b-tag"))["results"][0]["status"] == "applied"
    deleted = sun.change("case", "k-noise", ops=[Delete()])
    assert decode(sun.push([deleted], "b-delete"))["results"][0]["status"] == "applied"
    removed = li.change(
        "case",
        "k-noise",
        ops=[Remove(field="tags", value="noise")],
        seen={sun.device_id: tagged.hlc},
    )

    (answer,) = decode(li.push([removed], "b-remove"))["results"]

    assert answer["status"] == "conflict"
    assert [(c["field"], c["candidates"]) for c in answer["conflicts"]] == [("_record", [])]
    csrf = sign_in(office, supervisor(office))
    assert "nothing of that edit is left to show" in office.http.get("/console/conflicts").text
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    assert (conflict["kind"], conflict["candidates"]) == ("deleted", [])
    settled = settle_form(office, csrf, conflict, choice="delete", reason="A duplicate")
    assert settled.status_code == 303
    assert office.store.open_conflicts() == []


def test_a_delete_arriving_after_the_removal_beside_it_is_answered_conflict_too(office):
    sun, li = two_mediators(office)
    tagged = sun.change("case", "k-noise", ops=[Add(field="tags", value="noise")])
    decode(sun.push([tagged], "b-tag"))
    removed = li.change(
        "case",
        "k-noise",
        ops=[Remove(field="tags", value="noise")],
        seen={sun.device_id: tagged.hlc},
    )
    assert decode(li.push([removed], "b-remove"))["results"][0]["status"] == "applied"

    deleted = sun.change("case", "k-noise", ops=[Delete()])  # Sun had not seen the removal
    (answer,) = decode(sun.push([deleted], "b-delete"))["results"]

    assert answer["status"] == "conflict"
    assert [c["field"] for c in answer["conflicts"]] == ["_record"]


def test_a_settlement_needs_a_reason_and_a_conflict_that_did_not_change(office):
    sun, li = two_mediators(office)
    concurrently(sun, li, {"summary": "A"}, {"summary": "B"})
    csrf = sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    entries = settlements(office)
    no_reason = settle_form(office, csrf, conflict, choice="0", reason="  ")
    assert no_reason.status_code == 400 and "a reason is required" in no_reason.text
    api = office.http.post(
        "/api/conflicts/settle",
        json={
            "record_type": "case",
            "record_id": "k-noise",
            "field": "summary",
            "choice": 0,
            "reason": "",
        },
        headers={"x-csrf-token": csrf},
    )
    assert (api.status_code, api.json()["error"]) == (400, "invalid_action")
    bad_choice = settle_form(office, csrf, conflict, choice="7", reason="Typo")
    assert bad_choice.status_code == 400
    # A third value arrives while the page is open: the old page may not settle blind.
    third = office.enroll("mediator", name="Zhou")
    sun.push(
        [
            sun.change(
                "case", "k-noise", ops=[Add(field="mediators", value=third.enrollment.user_id)]
            )
        ],
        "b-name",
    )
    third.push([third.change("case", "k-noise", {"summary": "C"})], "b-third")
    stale = settle_form(office, csrf, conflict, choice="0", reason="Picked A")
    assert stale.status_code == 400 and "changed since you opened it" in stale.text
    assert settlements(office) == entries
    (still,) = office.store.open_conflicts()
    assert {c.value for c in still.candidates} == {"A", "B", "C"}


def test_another_districts_supervisor_sees_nothing_and_cannot_settle(office):
    sun, li = two_mediators(office)
    concurrently(sun, li, {"summary": "A"}, {"summary": "B"})
    csrf = sign_in(office, supervisor(office, "Xu Ming", ("Hangzhou/Xihu",)))
    assert office.http.get("/api/conflicts").json()["conflicts"] == []
    assert "k-noise" not in office.http.get("/console/conflicts").text
    stored = office.fingerprint()
    fake = {"record_type": "case", "record_id": "k-noise", "field": "summary", "version": 0}
    page = settle_form(office, csrf, fake, choice="0", reason="Mine now")
    assert page.status_code == 404
    api = office.http.post(
        "/api/conflicts/settle",
        json={
            "record_type": "case",
            "record_id": "k-noise",
            "field": "summary",
            "choice": 0,
            "reason": "Mine now",
        },
        headers={"x-csrf-token": csrf},
    )
    assert (api.status_code, api.json()["error"]) == (404, "unknown_record")
    assert office.fingerprint() == stored
    assert len(office.store.open_conflicts()) == 1


@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "forged"])
def test_settling_without_the_sessions_csrf_token_is_refused(office, token):
    sun, li = two_mediators(office)
    concurrently(sun, li, {"summary": "A"}, {"summary": "B"})
    sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    stored = office.fingerprint()
    form = settle_form(office, token, conflict, choice="0", reason="Because")
    assert form.status_code == 403 and "csrf_refused" in form.text
    api = office.http.post(
        "/api/conflicts/settle",
        json={
            "record_type": "case",
            "record_id": "k-noise",
            "field": "summary",
            "choice": 0,
            "reason": "Because",
        },
        headers={"x-csrf-token": token} if token else {},
    )
    assert (api.status_code, api.json()["error"]) == (403, "csrf_refused")
    assert office.fingerprint() == stored
    assert len(office.store.open_conflicts()) == 1


def settlements(office):
    return [e for e in audit.entries(office.store.db) if e.action.startswith("settle")]


def settle_api(office, csrf, conflict, value, record=("case", "k-noise")):
    return office.http.post(
        "/api/conflicts/settle",
        json={
            "record_type": record[0],
            "record_id": record[1],
            "field": conflict["field"],
            "choice": "custom",
            "value": value,
            "reason": "Settled by hand",
            "version": conflict["version"],
        },
        headers={"x-csrf-token": csrf},
    )


def test_a_value_of_the_supervisors_own_gets_the_rules_a_phones_push_gets(office):
    sun, li = two_mediators(office)
    located = {**GONGSHU, "address": "Block 3"}
    concurrently(sun, li, {"location": located}, {"location": {**located, "address": "Block 4"}})
    csrf = sign_in(office, supervisor(office))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    stored = office.fingerprint()
    # Steps that spell another unit's path, refused on a phone's push, are refused here too.
    spelled = {"city": "Hangzhou/Gongshu", "district": "", "street": "", "community": ""}
    refused = settle_api(office, csrf, conflict, spelled)
    assert refused.status_code == 400 and "cannot hold /" in refused.text
    assert office.fingerprint() == stored


def test_new_terms_settled_by_hand_cannot_supersede_an_agreement_out_of_sight(office):
    # Gongshu holds draft a-1. Two Xihu mediators name different versions for Xihu's a-x.
    gongshu = office.enroll("supervisor")
    gongshu.push([gongshu.change("agreement", "a-1", {"terms": "Gongshu terms", "case": "k-1"})])
    x1 = office.enroll("mediator", ["Hangzhou/Xihu"], name="x1")
    x2 = office.enroll("mediator", ["Hangzhou/Xihu"], name="x2")
    terms = {"terms": "Nothing is owed.", "required_signers": ["p-1"], "case": "k-x"}
    ops = [Add(field="mediators", value=p.enrollment.user_id) for p in (x1, x2)]
    ops.append(Add(field="agreements", value="a-x"))
    x1.push(
        [
            x1.change("case", "k-x", {"title": "x", "location": XIHU}, ops),
            x1.change("agreement", "a-x", {**terms, "supersedes": "a-old-1"}),
        ],
        "x-1",
    )
    x2.push([x2.change("agreement", "a-x", {"supersedes": "a-old-2"})], "x-2")
    csrf = sign_in(office, supervisor(office, "Xihu", ["Hangzhou/Xihu"]))
    (conflict,) = office.http.get("/api/conflicts").json()["conflicts"]
    refused = settle_api(office, csrf, conflict, "a-1", record=("agreement", "a-x"))
    assert refused.status_code == 400 and "may not supersede agreement a-1" in refused.text
    assert office.store.open_conflicts() != []
