"""Push version 2 (PROTOCOL.md section 11): one signature over request and batch, sealed.

Every refusal gets its own status and code, and leaves the store as it was.
"""

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from schemas import PushResponse
from server.audit_verify import verify_store
from sync import signing
from sync.changes import encode_change
from sync.envelope import open_v2_answer, seal_v2
from sync.errors import Unsealable


def error_of(answer):
    return answer.status_code, msgspec.msgpack.decode(answer.content)["error"]


def opened(phone, answer):
    return msgspec.msgpack.decode(phone.push_v2_answer(answer), type=PushResponse)


def new_case(phone, record_id="k-1"):
    return phone.change("case", record_id, set={"title": "Drains", "status": "new"})


def test_a_compact_push_is_applied_and_stored_as_sent(office):
    phone = office.enroll("mediator")
    raw = encode_change(new_case(phone))
    body = phone.push_v2_body([raw])
    sealed = phone.push_v2(body)
    # An onlooker learns neither which device pushed nor which batch.
    for seen in (body, sealed.content):
        assert phone.device_id.encode() not in seen and b"b-1" not in seen

    answer = opened(phone, sealed)

    assert [r.status for r in answer.results] == ["applied"]
    items, _ = phone.pull_all()
    assert [item["change"] for item in items] == [raw]  # the exact bytes the device signed
    assert verify_store(office.store, office.keys).problems == []
    (manifest,) = office.store.db.execute("SELECT manifest FROM batches").fetchone()
    assert manifest == signing.push_message(phone.device_id, "b-1", office.wall.ms, [raw])


def test_a_retry_signed_later_is_the_same_batch_and_answered_duplicate(office):
    phone = office.enroll("mediator")
    raws = [encode_change(new_case(phone, f"k-{n}")) for n in range(2)]
    first = opened(phone, phone.push_v2(phone.push_v2_body(raws)))
    office.wall.tick()
    retry = opened(phone, phone.push_v2(phone.push_v2_body(raws)))

    assert [r.status for r in first.results] == ["applied", "applied"]
    assert [r.status for r in retry.results] == ["duplicate", "duplicate"]
    assert [r.seq for r in retry.results] == [r.seq for r in first.results]
    assert office.store.db.execute("SELECT count(*) FROM batches").fetchone() == (1,)
    assert verify_store(office.store, office.keys).problems == []


def test_an_answer_opens_only_for_the_very_push_it_answers(office):
    phone = office.enroll("mediator")
    raws = [encode_change(new_case(phone))]
    answer = phone.push_v2(phone.push_v2_body(raws))
    first = phone.last_push
    office.wall.tick()
    phone.push_v2_body(raws)  # the same batch, signed a millisecond later
    retry = phone.last_push

    assert open_v2_answer("push", answer.content, 1, first.signature, phone.kem)
    with pytest.raises(Unsealable):
        open_v2_answer("push", answer.content, 1, retry.signature, phone.kem)


def test_a_batch_first_pushed_by_version_1_and_retried_by_version_2_is_a_duplicate(office):
    phone = office.enroll("mediator")
    changes = [new_case(phone, f"k-{n}") for n in range(2)]
    first = phone.pushed(changes, "b-1", version=1)
    raws = [msgspec.msgpack.encode(c) for c in changes]  # the bytes version 1 signed
    office.wall.tick()
    retry = opened(phone, phone.push_v2(phone.push_v2_body(raws)))

    assert [r["status"] for r in first["results"]] == ["applied", "applied"]
    assert [r.status for r in retry.results] == ["duplicate", "duplicate"]
    assert verify_store(office.store, office.keys).problems == []


def test_a_changed_push_message_is_named_by_the_audit(office):
    phone = office.enroll("mediator")
    raw = encode_change(new_case(phone))
    opened(phone, phone.push_v2(phone.push_v2_body([raw])))
    (manifest,) = office.store.db.execute("SELECT manifest FROM batches").fetchone()
    changed = manifest[:-1] + bytes([manifest[-1] ^ 1])
    office.store.db.execute("UPDATE batches SET manifest = ?", [changed])

    problems = verify_store(office.store, office.keys).problems

    assert problems[0] == (
        f"batch b-1 of {phone.device_id}: the device's signature does not verify over the"
        " stored manifest"
    )
    assert problems[-1].endswith("its bytes are not in the manifest of batch b-1")


def test_an_oversized_push_is_refused_before_its_sender_is_looked_up(office):
    phone = office.enroll("mediator")
    body = phone.push_v2_body([encode_change(new_case(phone))] * 51)
    office.store.db.execute("DELETE FROM devices WHERE device_id = ?", [phone.device_id])
    assert error_of(phone.push_v2(body)) == (413, "too_large")


def test_both_forms_of_a_change_are_accepted_and_pulled_back_byte_for_byte(office):
    phone = office.enroll("mediator")
    compact = encode_change(new_case(phone, "k-1"))
    keyed = msgspec.msgpack.encode(new_case(phone, "k-2"))
    answer = opened(phone, phone.push_v2(phone.push_v2_body([compact, keyed])))
    assert [r.status for r in answer.results] == ["applied", "applied"]

    items, _ = phone.pull_all()
    assert [item["change"] for item in items] == [compact, keyed]


def refusals():
    """(name, how to spoil a one-change push, status, code)."""
    other = Ed25519PrivateKey.generate()

    def replayed(office, phone, raws):
        body = phone.push_v2_body(raws)
        assert phone.push_v2(body).status_code == 200
        return body

    def reused(office, phone, raws):
        assert phone.push_v2(phone.push_v2_body(raws)).status_code == 200
        office.wall.tick()
        return phone.push_v2_body([encode_change(new_case(phone, "k-other"))])

    def revoked(office, phone, raws):
        office.directory.revoke(phone.device_id, office.wall.ms)
        return phone.push_v2_body(raws)

    def flipped(office, phone, raws):
        body = phone.push_v2_body(raws)
        return body[:-3] + bytes([body[-3] ^ 1]) + body[-2:]

    def by_another_device(office, phone, raws):
        someone = office.enroll("mediator", name="someone")
        return phone.push_v2_body([encode_change(new_case(someone, "k-9"))])

    def unknown_device(office, phone, raws):
        stranger = office.enroll("mediator", name="stranger")
        office.store.db.execute("DELETE FROM devices WHERE device_id = ?", [stranger.device_id])
        return stranger.push_v2_body([encode_change(new_case(stranger, "k-9"))])

    def plaintext(data):
        return lambda office, phone, raws: seal_v2(
            "push", data, office.keys.kem_key_id, office_kem_public(office)
        )

    return [
        ("not-an-envelope", lambda o, p, r: b"\x93\x01", 400, "bad_envelope"),
        ("flipped-bit", flipped, 400, "unsealable"),
        (
            "other-office",
            lambda o, p, r: p.push_v2_body(r, key_id="office-elsewhere.kem1"),
            400,
            "wrong_key",
        ),
        (
            "unknown-suite",
            lambda o, p, r: msgspec.msgpack.encode([9, o.keys.kem_key_id, b"x" * 64]),
            400,
            "unsupported_suite",
        ),
        ("plaintext-not-a-push", plaintext(b"\x81\xa1a\x01"), 400, "malformed"),
        ("bad-signature", lambda o, p, r: p.push_v2_body(r, key=other), 401, "bad_signature"),
        ("unknown-device", unknown_device, 401, "unknown_device"),
        ("revoked-device", revoked, 403, "revoked_device"),
        (
            "stale",
            lambda o, p, r: p.push_v2_body(r, timestamp_ms=o.wall.ms - 301_000),
            401,
            "stale_request",
        ),
        ("replayed", replayed, 401, "replayed"),
        ("another-devices-change", by_another_device, 403, "forbidden"),
        ("batch-reused", reused, 409, "batch_reused"),
        (
            "too-many-changes",
            lambda o, p, r: p.push_v2_body(r * 51),
            413,
            "too_large",
        ),
        (
            "change-does-not-decode",
            lambda o, p, r: p.push_v2_body([b"\x93\x01\x02\x03"]),
            400,
            "malformed",
        ),
    ]


def office_kem_public(office):
    return X25519PublicKey.from_public_bytes(office.keys.kem_public)


@pytest.mark.parametrize(
    ("spoil", "status", "code"),
    [case[1:] for case in refusals()],
    ids=[case[0] for case in refusals()],
)
def test_a_spoiled_push_is_refused_precisely_and_changes_nothing(office, spoil, status, code):
    phone = office.enroll("mediator")
    raws = [encode_change(new_case(phone))]
    body = spoil(office, phone, raws)
    stored = office.fingerprint()

    answer = phone.push_v2(body)

    assert error_of(answer) == (status, code)
    # The refusal travels in the clear: it names neither the device nor the batch.
    assert phone.device_id.split("-", 1)[1] not in answer.text and "b-1" not in answer.text
    assert office.fingerprint() == stored
    # ...and the office keeps serving: the device's next honest push applies.
    office.wall.tick()
    fresh = [encode_change(new_case(phone, "k-fresh"))]
    if code != "revoked_device":
        answer = opened(phone, phone.push_v2(phone.push_v2_body(fresh, batch_id="b-2")))
        assert [r.status for r in answer.results] == ["applied"]
