"""Pull version 2 (PROTOCOL.md section 12): one signature inside a compact sealed body.

Every refusal gets its own status and code, names no device, and leaves the
store as it was.
"""

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import PullPage, Pushed
from schemas.state import RecordState
from schemas.wire import MAX_PUSHED
from server.erasure import erase_case
from sync import signing
from sync.changes import decode_change
from sync.envelope import CompactEnvelope, open_v2_answer
from sync.errors import Unsealable
from tests.server.test_push_v2 import error_of, new_case


def page_of(phone, answer):
    return msgspec.msgpack.decode(phone.pull_v2_answer(answer), type=PullPage)


def test_a_pull_gets_its_page_sealed_and_names_no_one_on_the_wire(office):
    phone = office.enroll("mediator")
    change = new_case(phone)
    phone.push([change])
    body = phone.pull_v2_body()
    answer = phone.pull_v2(body)

    page = page_of(phone, answer)

    assert [decode_change(item.change) for item in page.items] == [change]
    assert page.cursor and not page.has_more
    for seen in (body, answer.content):
        assert phone.device_id.encode() not in seen and b"k-1" not in seen
    # The next pull from that cursor brings nothing new.
    assert page_of(phone, phone.pull_v2(phone.pull_v2_body(page.cursor))).items == []


def test_an_answer_opens_only_for_the_pull_it_answers(office):
    phone = office.enroll("mediator")
    answer = phone.pull_v2(phone.pull_v2_body())
    first = phone.last_pull
    phone.pull_v2_body()  # another pull, signed with another request id

    assert open_v2_answer("pull", answer.content, 1, first.signature, phone.kem)
    with pytest.raises(Unsealable):
        open_v2_answer("pull", answer.content, 1, phone.last_pull.signature, phone.kem)
    with pytest.raises(Unsealable):  # nor as the answer to a push signed alike
        open_v2_answer("push", answer.content, 1, first.signature, phone.kem)


def test_a_pull_naming_the_devices_changes_where_they_were_logged_is_served(office):
    phone = office.enroll("mediator")
    pushed = []
    for record_id in ("k-1", "k-2"):
        (result,) = msgspec.msgpack.decode(
            phone.push([new_case(phone, record_id)], batch_id=f"b-{record_id}").content
        )["results"]
        pushed.append(Pushed(result["seq"], result["change_id"]))

    served = page_of(phone, phone.pull_v2(phone.pull_v2_body(pushed=pushed)))

    assert len(served.items) == 2
    # One of them not where it was logged: refused, however many are.
    wrong = [pushed[0], Pushed(pushed[0].seq, pushed[1].change_id)]
    assert error_of(phone.pull_v2(phone.pull_v2_body(pushed=wrong))) == (400, "bad_cursor")


def test_a_pull_may_send_pushed_empty_or_leave_it_out(office):
    # Every other pull here leaves it out, as the reference client does.
    phone = office.enroll("mediator")
    phone.push([new_case(phone)])
    phone.pull_v2_body()
    empty = msgspec.msgpack.encode(phone.last_pull)
    left_out = signing.encode_pull(phone.last_pull)
    assert (left_out[0], empty) == (0x96, b"\x97" + left_out[1:] + b"\x90")  # 6 or 7 items

    page = page_of(phone, phone.pull_v2(phone.sealed_v2("pull", msgspec.Raw(empty))))

    assert len(page.items) == 1


def refusals():
    """(name, how to make a spoiled pull, status, code)."""
    other = Ed25519PrivateKey.generate()

    def replayed(office, phone):
        body = phone.pull_v2_body(request_id="the-same-request-id")
        assert phone.pull_v2(body).status_code == 200
        office.wall.tick()
        return phone.pull_v2_body(request_id="the-same-request-id")

    def revoked(office, phone):
        office.directory.revoke(phone.device_id, office.wall.ms)
        return phone.pull_v2_body()

    def unknown_device(office, phone):
        stranger = office.enroll("mediator", name="stranger")
        office.store.db.execute("DELETE FROM devices WHERE device_id = ?", [stranger.device_id])
        return stranger.pull_v2_body()

    def flipped(office, phone):
        body = phone.pull_v2_body()
        return body[:-3] + bytes([body[-3] ^ 1]) + body[-2:]

    def sealed_as_a_push(office, phone):
        phone.pull_v2_body()
        return phone.sealed_v2("push", phone.last_pull)

    def plaintext(data):
        return lambda office, phone: phone.sealed_v2("pull", msgspec.Raw(data))

    def unknown_suite(office, phone):
        # An honest pull, its body relabelled as sealed in a suite this office does not
        # accept: refused as such, never opened with the suite it does accept.
        sealed = msgspec.msgpack.decode(phone.pull_v2_body(), type=CompactEnvelope)
        return msgspec.msgpack.encode(msgspec.structs.replace(sealed, suite=9))

    def cursor_of_another_device(office, phone):
        # The same user's second phone sees the same records, but a cursor is bound to
        # the device it was issued to, not to its user (PROTOCOL.md section 12).
        code = office.directory.issue_code(phone.enrollment.user_id, office.wall.ms, 3600_000)
        sibling = office.enroll_with(code)
        page = sibling.pulled(version=2)
        assert len(page["items"]) == 1 and page["cursor"]  # good for the device it was issued to
        return phone.pull_v2_body(page["cursor"])

    def pushed_elsewhere(office, phone):
        # Another device's change, named where it was logged: a device vouches only for
        # its own.
        other = office.enroll("mediator", name="other")
        (result,) = msgspec.msgpack.decode(other.push([new_case(other, "k-2")]).content)["results"]
        return phone.pull_v2_body(pushed=[Pushed(result["seq"], result["change_id"])])

    def pushed_altered(office, phone):
        phone.pull_v2_body(pushed=[Pushed(1, "c-1")])
        altered = msgspec.structs.replace(phone.last_pull, pushed=[Pushed(1, "c-2")])
        return phone.sealed_v2("pull", altered)

    def pushed_at_seq_0(office, phone):
        phone.pull_v2_body(pushed=[Pushed(1, "c-1")])
        return phone.sealed_v2(
            "pull", msgspec.structs.replace(phone.last_pull, pushed=[Pushed(0, "c-1")])
        )

    return [
        ("not-an-envelope", lambda o, p: b"\x93\x01", 400, "bad_envelope"),
        ("flipped-bit", flipped, 400, "unsealable"),
        ("sealed-as-a-push", sealed_as_a_push, 400, "unsealable"),
        (
            "other-office",
            lambda o, p: p.pull_v2_body(key_id="office-elsewhere.kem1"),
            400,
            "wrong_key",
        ),
        ("unknown-suite", unknown_suite, 400, "unsupported_suite"),
        ("plaintext-not-a-pull", plaintext(b"\x81\xa1a\x01"), 400, "malformed"),
        ("short-request-id", lambda o, p: p.pull_v2_body(request_id="short"), 400, "malformed"),
        ("bad-signature", lambda o, p: p.pull_v2_body(key=other), 401, "bad_signature"),
        ("unknown-device", unknown_device, 401, "unknown_device"),
        ("revoked-device", revoked, 403, "revoked_device"),
        (
            "stale",
            lambda o, p: p.pull_v2_body(timestamp_ms=o.wall.ms - 301_000),
            401,
            "stale_request",
        ),
        ("replayed", replayed, 401, "replayed"),
        ("forged-cursor", lambda o, p: p.pull_v2_body("v1.0.0.forged"), 400, "bad_cursor"),
        ("another-devices-cursor", cursor_of_another_device, 400, "bad_cursor"),
        ("non-ascii-cursor", lambda o, p: p.pull_v2_body("v1.0.0.é"), 400, "bad_cursor"),
        ("empty-cursor", lambda o, p: p.pull_v2_body(""), 400, "malformed"),
        (
            "pushed-beyond-the-log",
            lambda o, p: p.pull_v2_body(pushed=[Pushed(2, "c-1")]),
            400,
            "bad_cursor",
        ),
        (
            "pushed-another-change",
            lambda o, p: p.pull_v2_body(pushed=[Pushed(1, "c-9")]),
            400,
            "bad_cursor",
        ),
        ("pushed-elsewhere", pushed_elsewhere, 400, "bad_cursor"),
        ("pushed-altered", pushed_altered, 401, "bad_signature"),
        ("pushed-at-seq-0", pushed_at_seq_0, 400, "malformed"),
        (
            "pushed-too-many",
            lambda o, p: p.pull_v2_body(pushed=[Pushed(1, "c-1")] * (MAX_PUSHED + 1)),
            400,
            "malformed",
        ),
    ]


@pytest.mark.parametrize(
    ("spoil", "status", "code"),
    [case[1:] for case in refusals()],
    ids=[case[0] for case in refusals()],
)
def test_a_spoiled_pull_is_refused_precisely_and_changes_nothing(office, spoil, status, code):
    phone = office.enroll("mediator")
    phone.push([new_case(phone)])
    body = spoil(office, phone)
    stored = office.fingerprint()

    answer = phone.pull_v2(body)

    assert error_of(answer) == (status, code)
    assert phone.device_id.split("-", 1)[1] not in answer.text
    assert office.fingerprint() == stored
    # ...and the office keeps serving: the device's next honest pull gets its page.
    if code != "revoked_device":
        office.wall.tick()
        assert len(page_of(phone, phone.pull_v2(phone.pull_v2_body())).items) == 1


def test_a_pull_from_states_sends_each_record_once_as_the_office_holds_it(office):
    phone = office.enroll("mediator")
    phone.push([new_case(phone, f"k-{n}") for n in range(3)], batch_id="b-1")
    phone.push([phone.change("case", "k-0", {"priority": "high"})], batch_id="b-2")
    held = office.store.states([("case", f"k-{n}") for n in range(3)])

    first = page_of(phone, phone.pull_v2(phone.pull_v2_body("states", limit=2)))
    rest = page_of(phone, phone.pull_v2(phone.pull_v2_body(first.cursor, limit=2)))

    assert first.has_more and first.cursor.startswith("s1.")
    sent = [msgspec.msgpack.decode(item.state, type=RecordState) for item in first.items]
    sent += [msgspec.msgpack.decode(item.state, type=RecordState) for item in rest.items]
    assert sent == [held[("case", f"k-{n}")] for n in range(3)]  # k-0 with both changes
    assert {item.seq for item in [*first.items, *rest.items]} == {4}  # where the log stood
    # After the last record the page went on as from an ordinary cursor: nothing since.
    assert not rest.has_more and rest.cursor.startswith("v2.4.4.")
    office.wall.tick()
    phone.push([phone.change("case", "k-1", {"priority": "low"})], batch_id="b-3")
    (change,) = page_of(phone, phone.pull_v2(phone.pull_v2_body(rest.cursor))).items
    assert decode_change(change.change).set == {"priority": "low"}


def test_a_pull_from_states_sends_nothing_of_an_erased_record(office):
    phone = office.enroll("mediator")
    phone.push([new_case(phone, f"k-{n}") for n in range(2)])
    erase_case(office.store, "k-0", "court order", "operator:wang", office.wall.ms)

    page = page_of(phone, phone.pull_v2(phone.pull_v2_body("states")))

    (item,) = page.items
    assert msgspec.msgpack.decode(item.state, type=RecordState).record_id == "k-1"


def test_a_states_cursor_opens_only_for_its_device_and_as_issued(office):
    phone = office.enroll("mediator")
    phone.push([new_case(phone, f"k-{n}") for n in range(2)])
    code = office.directory.issue_code(phone.enrollment.user_id, office.wall.ms, 3600_000)
    sibling = office.enroll_with(code)
    issued = page_of(sibling, sibling.pull_v2(sibling.pull_v2_body("states", limit=1))).cursor
    assert issued.startswith("s1.")
    version, begun, held, mac, key = issued.split(".", 4)
    stored = office.fingerprint()

    for cursor in (
        issued,  # another device's
        f"{version}.{begun}.{held}.{mac}.case/k-9",  # another place in the list
        f"{version}.{begun}.{int(held) + 1}.{mac}.{key}",  # holding another stretch of log
        f"{version}.{begun}.{held}.{'0' * 32}.{key}",  # forged
        f"{version}.{begun}.{held}.{mac}",
        f"{version}.{begun}.{held}.{mac}.casek-1",
        f"{version}.é.{held}.{mac}.{key}",
    ):
        answer = phone.pull_v2(phone.pull_v2_body(cursor))
        assert error_of(answer) == (400, "bad_cursor"), cursor
    assert office.fingerprint() == stored
    # ...and it goes on for the device it was issued to.
    (rest,) = page_of(sibling, sibling.pull_v2(sibling.pull_v2_body(issued))).items
    assert msgspec.msgpack.decode(rest.state, type=RecordState).record_id == "k-1"
