"""The sync endpoints through the real app: answers, stored state, and every refusal."""

import hmac
import re
from pathlib import Path

import msgspec
import pytest

from schemas import Add, Append
from tests.server.conftest import MSGPACK, enrolment, running_office

PROTOCOL_MD = Path(__file__).parents[2] / "docs" / "PROTOCOL.md"

GONGSHU = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang", "community": "Daguan"}
XIHU = {"city": "Hangzhou", "district": "Xihu", "street": "Beishan"}


def decode(answer):
    return msgspec.msgpack.decode(answer.content)


def error_of(answer):
    return answer.status_code, decode(answer)["error"]


def pulled_records(phone, version=1):
    items, _ = phone.pull_all(version)
    keys = set()
    for item in items:
        if item["type"] == "change":
            change = msgspec.msgpack.decode(item["change"])
            keys.add((change["record_type"], change["record_id"]))
    return keys


def test_office_keys_are_published_unsigned(office):
    info = decode(office.http.get("/v1/office"))
    assert info["signing_key"] == office.keys.signing_public
    assert info["kem_key"] == office.keys.kem_public


def test_enrolment_code_is_single_use_and_expires(office):
    user = office.directory.add_user("Zhao", "mediator", ["Hangzhou"], office.wall.ms)
    code = office.directory.issue_code(user.user_id, office.wall.ms, 60_000)
    phone = office.enroll_with(code.lower())  # typed in lower case on a phone
    assert (phone.enrollment.user_id, phone.enrollment.role) == (user.user_id, "mediator")
    with pytest.raises(AssertionError, match="enrollment_refused"):
        office.enroll_with(code)
    late = office.directory.issue_code(user.user_id, office.wall.ms, 60_000)
    office.wall.ms += 61_000
    with pytest.raises(AssertionError, match="enrollment_refused"):
        office.enroll_with(late)


def test_an_enrolment_sent_again_gets_the_same_device_and_is_audited_once(office):
    user = office.directory.add_user("Zhao", "mediator", ["Hangzhou"], office.wall.ms)
    code = office.directory.issue_code(user.user_id, office.wall.ms, 60_000)
    _, _, body = enrolment(code)
    first = office.http.post("/v1/enroll", content=body, headers=MSGPACK)
    again = office.http.post("/v1/enroll", content=body, headers=MSGPACK)  # the answer was lost
    assert again.status_code == 200
    assert decode(again)["device_id"] == decode(first)["device_id"]
    enrolled = office.store.db.execute("SELECT count(*) FROM audit WHERE action = 'enroll'")
    assert enrolled.fetchone()[0] == 1


def test_push_applies_a_batch_and_a_retry_writes_nothing_twice(office):
    phone = office.enroll("mediator")
    changes = [
        phone.change("case", "k-1", {"title": "Drains", "status": "new", "location": GONGSHU}),
        phone.change("case", "k-1", {"priority": "high"}),
        phone.change("case", "k-1", {"status": "closed"}),
    ]
    first = decode(phone.push(changes))
    assert [r["status"] for r in first["results"]] == ["applied", "applied", "rejected"]
    assert first["results"][2]["reason"] == "illegal_transition"
    stored = office.fingerprint()
    again = decode(phone.push(changes))
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 3
    assert office.fingerprint() == stored
    # Each stored change points at the signed batch that brought it.
    batch_ids = {row[0] for row in office.store.db.execute("SELECT batch_id FROM changes")}
    assert batch_ids == {"b-1"}


def test_pull_pages_are_resumable_and_cursors_bound_to_the_device(office):
    phone = office.enroll("mediator")
    phone.push([phone.change("case", f"k-{n}", {"title": f"case {n}"}) for n in range(7)])
    first = decode(phone.pull(limit=3))
    assert first["has_more"] and len(first["items"]) == 3
    # Fetching the same page again (an interrupted pull) gives the same items.
    assert decode(phone.pull(limit=3))["items"] == first["items"]
    second = decode(phone.pull(first["cursor"], limit=10))
    assert not second["has_more"]
    seqs = [i["seq"] for i in first["items"] + second["items"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    assert decode(phone.pull(second["cursor"]))["items"] == []

    other = office.enroll("mediator")
    assert error_of(other.pull(first["cursor"])) == (400, "bad_cursor")
    version, position, seq, mac = first["cursor"].split(".")
    tampered = ".".join([version, str(int(position) + 1), seq, mac])
    assert error_of(phone.pull(tampered)) == (400, "bad_cursor")
    assert error_of(phone.pull("v1.999.999.0")) == (400, "bad_cursor")
    huge = f"v2.0.{2**70}.{mac}"  # past what SQLite's integers hold: once a 500
    assert error_of(phone.pull(huge)) == (400, "bad_cursor")
    # A forged cursor is refused alike wherever it points: it learns nothing of the log.
    ahead = decode(phone.pull(f"v2.999999.999999.{mac}"))
    inside = decode(phone.pull(f"v2.1.1.{mac}"))
    assert ahead["detail"] == inside["detail"] and "ahead" not in ahead["detail"]
    # A version 1 cursor, as phones held them before cursors were bound to the log, opens.
    body = f"{position}.{seq}"
    legacy = hmac.new(office.keys.cursor_secret, f"{phone.device_id}.{body}".encode(), "sha256")
    old = f"v1.{body}.{legacy.hexdigest()[:32]}"
    assert decode(phone.pull(old, limit=10))["items"] == second["items"]


def test_visibility_by_role(office):
    informant = office.enroll("informant")
    mediator = office.enroll("mediator", name="Zhao")
    gongshu = office.enroll("supervisor", ["Hangzhou/Gongshu"])
    xihu = office.enroll("supervisor", ["Hangzhou/Xihu"])
    city = office.enroll("supervisor", ["Hangzhou"])

    informant.push([informant.change("warning", "w-1", {"location": GONGSHU, "status": "open"})])
    xihu.push([xihu.change("case", "k-xihu", {"title": "Grease", "location": XIHU})])
    gongshu.push(
        [
            gongshu.change(
                "case",
                "k-1",
                {"title": "Drains", "location": GONGSHU},
                [
                    Add(field="mediators", value=mediator.enrollment.user_id),
                    Add(field="warnings", value="w-1"),
                ],
            )
        ]
    )
    assert pulled_records(informant) == {("warning", "w-1")}
    assert pulled_records(mediator) == {("case", "k-1"), ("warning", "w-1")}
    assert pulled_records(gongshu) == {("case", "k-1"), ("warning", "w-1")}
    assert pulled_records(xihu) == {("case", "k-xihu")}
    assert pulled_records(city) == {("case", "k-1"), ("warning", "w-1"), ("case", "k-xihu")}


def test_a_supervisor_added_later_sees_what_one_there_all_along_sees(office):
    # A warning located in Xihu, linked by a Gongshu case: the Gongshu supervisors see it
    # with the case, whether they enrolled before the link or after.
    before = office.enroll("supervisor", ["Hangzhou/Gongshu"], name="before")
    xihu = office.enroll("supervisor", ["Hangzhou/Xihu"])
    informant = office.enroll("informant", ["Hangzhou/Xihu"])
    informant.push([informant.change("warning", "w-x", {"location": XIHU, "status": "open"})])
    party = xihu.change("party", "p-1", {"name": "Wang"})
    case = xihu.change(
        "case",
        "k-g",
        {"title": "Drains", "location": GONGSHU},
        [Add(field="warnings", value="w-x"), Add(field="parties", value="p-1")],
    )
    xihu.push([party, case])
    after = office.enroll("supervisor", ["Hangzhou/Gongshu"], name="after")

    expected = {("case", "k-g"), ("warning", "w-x"), ("party", "p-1")}
    assert pulled_records(before) == pulled_records(after) == expected


def test_unassigning_a_mediator_evicts_the_case_and_blocks_its_writes(office):
    supervisor = office.enroll("supervisor")
    mediator = office.enroll("mediator")
    user = mediator.enrollment.user_id
    supervisor.push(
        [
            supervisor.change(
                "case",
                "k-1",
                {"title": "Drains", "location": GONGSHU},
                [Add(field="mediators", value=user)],
            )
        ]
    )
    items, cursor = mediator.pull_all()
    assert [i["type"] for i in items] == ["change"]
    supervisor.push(
        [
            supervisor.change(
                "case", "k-1", ops=[{"type": "remove", "field": "mediators", "value": user}]
            )
        ],
        batch_id="b-2",
    )
    page = decode(mediator.pull(cursor))
    assert [(i["type"], i["record_id"]) for i in page["items"]] == [("evict", "k-1")]
    late = decode(mediator.push([mediator.change("case", "k-1", {"summary": "still mine?"})]))
    assert (late["results"][0]["status"], late["results"][0]["reason"]) == (
        "rejected",
        "not_permitted",
    )


def test_an_informant_can_never_write_or_read_a_case(office):
    informant = office.enroll("informant")
    supervisor = office.enroll("supervisor")
    supervisor.push([supervisor.change("case", "k-1", {"title": "x", "location": GONGSHU})])
    answer = decode(informant.push([informant.change("case", "k-2", {"title": "mine"})]))
    assert answer["results"][0]["reason"] == "not_permitted"
    assert pulled_records(informant) == set()


def test_admin_devices_get_no_case_data(office):
    admin = office.enroll("admin", ["Hangzhou"])
    supervisor = office.enroll("supervisor")
    supervisor.push([supervisor.change("case", "k-1", {"title": "x", "location": GONGSHU})])
    assert pulled_records(admin) == set()
    answer = decode(admin.push([admin.change("case", "k-9", {"title": "x"})]))
    assert answer["results"][0]["reason"] == "not_permitted"


REFUSALS = {
    "unsigned": lambda p, body: p.http.post("/v1/sync/pull", content=body, headers=MSGPACK),
    "bad_signature": lambda p, body: p.http.post(
        "/v1/sync/pull", content=body + b"x", headers=p.headers("/v1/sync/pull", body)
    ),
    "stale_request": lambda p, body: p.post(
        "/v1/sync/pull", body, timestamp=p.wall.ms // 1000 - 301
    ),
    "malformed_header": lambda p, body: p.post("/v1/sync/pull", body, nonce="short"),
    # The signature covers the timestamp as sent: a second spelling of it is refused.
    "padded_timestamp": lambda p, body: p.http.post(
        "/v1/sync/pull",
        content=body,
        headers=(h := p.headers("/v1/sync/pull", body))
        | {"lianxin-timestamp": "0" + h["lianxin-timestamp"]},
    ),
}


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("unsigned", 401, "unsigned"),
        ("bad_signature", 401, "bad_signature"),
        ("stale_request", 401, "stale_request"),
        ("malformed_header", 400, "malformed"),
        ("padded_timestamp", 400, "malformed"),
    ],
)
def test_refused_requests_get_their_own_code_and_change_nothing(office, case, status, code):
    phone = office.enroll("mediator")
    phone.push([phone.change("case", "k-1", {"title": "Drains"})])
    stored = office.fingerprint()
    body = msgspec.msgpack.encode({"cursor": None, "limit": 10})
    assert error_of(REFUSALS[case](phone, body)) == (status, code)
    assert office.fingerprint() == stored


def test_replayed_request_is_refused(office):
    phone = office.enroll("mediator")
    body = phone.push_body([phone.change("case", "k-1", {"title": "x"})])
    headers = phone.headers("/v1/sync/push", body)
    assert office.http.post("/v1/sync/push", content=body, headers=headers).status_code == 200
    stored = office.fingerprint()
    replay = office.http.post("/v1/sync/push", content=body, headers=headers)
    assert error_of(replay) == (401, "replayed")
    assert office.fingerprint() == stored


def test_unknown_and_revoked_devices_are_refused_and_past_work_stays(office):
    phone = office.enroll("mediator")
    phone.push([phone.change("case", "k-1", {"title": "before the loss"})])
    assert office.directory.revoke(phone.device_id, office.wall.ms)
    stored = office.fingerprint()
    late = phone.push([phone.change("case", "k-1", {"title": "thief"})], batch_id="b-2")
    assert error_of(late) == (403, "revoked_device")
    assert error_of(phone.pull()) == (403, "revoked_device")
    assert office.fingerprint() == stored
    author = office.store.db.execute("SELECT device_id FROM changes").fetchall()
    assert author == [(phone.device_id,)]

    phone.enrollment = msgspec.structs.replace(phone.enrollment, device_id="dev-nobody")
    assert error_of(phone.pull()) == (401, "unknown_device")


@pytest.mark.parametrize(
    ("make_body", "status", "code", "detail"),
    [
        (lambda p: b"\xc1garbage", 400, "malformed", ""),
        (
            lambda p: msgspec.msgpack.encode({"batch_id": "b", "changes": "x"}),
            400,
            "malformed",
            "$.changes",
        ),
        (lambda p: p.push_body([], raw=[b"\x93\x01"]), 400, "malformed", "$.changes[0]"),
        (
            lambda p: p.push_body([p.change("case", "k", {"title": "x"})] * 51),
            413,
            "too_large",
            "at most 50",
        ),
        (lambda p: p.push_body([], raw=[b"x" * 70_000]), 413, "too_large", ""),
    ],
    ids=["not-msgpack", "wrong-type", "bad-change-bytes", "too-many-changes", "body-too-large"],
)
def test_malformed_and_oversized_pushes(office, make_body, status, code, detail):
    phone = office.enroll("mediator")
    stored = office.fingerprint()
    answer = phone.post("/v1/sync/push", make_body(phone))
    assert error_of(answer) == (status, code)
    assert detail in decode(answer)["detail"]
    assert office.fingerprint() == stored


NOTE = {"entry_id": "n-1", "at": "2026-11-18T09:00:00Z", "by": "sun"}


def noted(phone, case_id, characters, entry_id="n-1"):
    """A change adding a note of `characters` to case `case_id` (made by `phone`)."""
    note = {**NOTE, "entry_id": entry_id, "text": "字" * characters}
    return phone.change(
        "case",
        case_id,
        {"title": "Minutes", "location": GONGSHU},
        [Append(field="notes", entry=note)],
    )


def test_a_change_over_1_mib_is_refused_whole_however_large_the_body_may_be(tmp_path):
    with running_office(tmp_path, max_body_bytes=4 * 1024 * 1024) as office:
        phone = office.enroll("mediator")
        stored = office.fingerprint()
        fits, over = noted(phone, "k-1", 1000), noted(phone, "k-2", 350_000)  # 3 bytes each
        answer = phone.push([fits, over])
        assert error_of(answer) == (413, "too_large")
        assert decode(answer)["detail"].startswith("$.changes[1] is ")
        assert office.fingerprint() == stored


def test_pages_end_once_their_changes_pass_the_page_bytes(tmp_path):
    with running_office(tmp_path, max_page_bytes=100_000) as office:
        phone = office.enroll("mediator")
        for n in range(5):  # about 60 KB each: two pass the page's bytes
            assert phone.pushed([noted(phone, f"k-{n}", 20_000)], f"b-{n}")["results"]
        small = [
            phone.change("case", f"k-s{n}", {"title": "Small", "location": GONGSHU})
            for n in range(20)
        ]
        phone.pushed(small, "b-small")
        chen = office.enroll("supervisor", org_units=["Hangzhou"])
        pages, cursor = [], None
        while True:
            page = chen.pulled(cursor)
            pages.append(len(page["items"]))
            cursor = page["cursor"]
            if not page["has_more"]:
                break
        assert pages == [1, 1, 1, 1, 21]  # the small ones fit beside the last large one
        states, cursor = [], "states"
        while True:  # the same, as records' states
            page = msgspec.msgpack.decode(
                chen.pull_v2_answer(chen.pull_v2(chen.pull_v2_body(cursor)))
            )
            states.append(len(page["items"]))
            cursor = page["cursor"]
            if not page["has_more"]:
                break
        assert states == [1, 1, 1, 1, 21]


def test_a_change_claiming_another_author_is_forbidden(office):
    phone = office.enroll("mediator")
    other = office.enroll("mediator")
    stored = office.fingerprint()
    answer = phone.push([other.change("case", "k-1", {"title": "forged"})])
    assert error_of(answer) == (403, "forbidden")
    assert office.fingerprint() == stored


def test_a_batch_id_reused_with_other_changes_is_refused(office):
    phone = office.enroll("mediator")
    phone.push([phone.change("case", "k-1", {"title": "one"})])
    stored = office.fingerprint()
    answer = phone.push([phone.change("case", "k-1", {"title": "two"})])
    assert error_of(answer) == (409, "batch_reused")
    assert office.fingerprint() == stored


def test_json_is_accepted_and_answered_in_kind(office):
    phone = office.enroll("mediator")
    body = msgspec.json.encode({"cursor": None, "limit": 5})
    headers = {**phone.headers("/v1/sync/pull", body), "content-type": "application/json"}
    answer = office.http.post("/v1/sync/pull", content=body, headers=headers)
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["has_more"] is False


def test_unknown_paths_and_methods_answer_with_codes(office):
    assert error_of(office.http.get("/v1/nothing")) == (404, "not_found")
    assert error_of(office.http.get("/v1/sync/push")) == (405, "method_not_allowed")


def test_openapi_lists_every_endpoint_of_the_protocol(office):
    paths = office.http.get("/schema/openapi.json").json()["paths"]
    documented = re.findall(r"^\| `(GET|POST) (/v\d/[^`]*)`", PROTOCOL_MD.read_text(), re.M)
    assert {path for _, path in documented} == {
        "/v1/office",
        "/v1/enroll",
        "/v1/sync/push",
        "/v2/sync/push",
        "/v1/sync/pull",
        "/v2/sync/pull",
    }
    for method, path in documented:
        assert method.lower() in paths[path], path
    assert {p for p in paths if re.match(r"/v\d/", p)} == {path for _, path in documented}
