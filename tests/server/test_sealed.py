"""Sealed sync (PROTOCOL.md section 14): plain bodies refused, tampered ones too."""

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from schemas import PullRequest
from sync.envelope import ENVELOPE, Header, seal
from tests.server.conftest import running_office


@pytest.fixture
def sealed_office(tmp_path):
    with running_office(tmp_path, require_sealed=True) as office:
        yield office


def sealed_pull(office, phone, header_changes=None, tamper=None):
    fields = {
        "suite": 1,
        "key_id": office.keys.kem_key_id,
        "device_id": phone.device_id,
        "batch_id": "p-1",
        "purpose": "pull",
        **(header_changes or {}),
    }
    header = Header(**fields)
    body = seal(
        msgspec.msgpack.encode(PullRequest()),
        header,
        X25519PublicKey.from_public_bytes(office.keys.kem_public),
    )
    if tamper is not None:
        body = body[:tamper] + bytes([body[tamper] ^ 1]) + body[tamper + 1 :]
    headers = {**phone.headers("/v1/sync/pull", body), "content-type": ENVELOPE}
    return office.http.post("/v1/sync/pull", content=body, headers=headers)


def error_of(answer):
    return answer.status_code, msgspec.msgpack.decode(answer.content)["error"]


def test_an_unsealed_request_is_refused(sealed_office):
    phone = sealed_office.enroll("mediator")
    assert error_of(phone.pull()) == (400, "bad_envelope")


def test_a_sealed_pull_is_answered_sealed_to_the_device(sealed_office):
    phone = sealed_office.enroll("mediator")
    answer = sealed_pull(sealed_office, phone)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(ENVELOPE)
    assert b"has_more" not in answer.content  # the page travels encrypted


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"header_changes": {"purpose": "push"}}, "bad_envelope"),
        ({"header_changes": {"device_id": "dev-someone-else"}}, "bad_envelope"),
        ({"header_changes": {"key_id": "office-elsewhere.kem1"}}, "wrong_key"),
        ({"tamper": -3}, "unsealable"),
    ],
    ids=["other-endpoint", "other-device", "other-office", "flipped-bit"],
)
def test_misdirected_or_tampered_envelopes_are_refused(sealed_office, options, code):
    phone = sealed_office.enroll("mediator")
    stored = sealed_office.fingerprint()
    assert error_of(sealed_pull(sealed_office, phone, **options)) == (400, code)
    assert sealed_office.fingerprint() == stored


def sealed_push(office, phone, change, *, batch_id="b-1", public_key=None, key_id=None, edit=None):
    """A sealed push of one change; `edit(header_bytes, sealed)` may change the envelope."""
    plain = phone.push_body([change], batch_id)
    header = Header(
        suite=1,
        key_id=key_id or office.keys.kem_key_id,
        device_id=phone.device_id,
        batch_id=batch_id,
        purpose="push",
    )
    recipient = X25519PublicKey.from_public_bytes(public_key or office.keys.kem_public)
    body = seal(plain, header, recipient)
    if edit is not None:
        envelope = msgspec.msgpack.decode(body)
        envelope["header"], envelope["sealed"] = edit(envelope["header"], envelope["sealed"])
        body = msgspec.msgpack.encode(envelope)
    headers = {**phone.headers("/v1/sync/push", body), "content-type": ENVELOPE}
    return body, headers


def flip(data, index):
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def with_suite(header, suite):
    return msgspec.msgpack.encode({**msgspec.msgpack.decode(header), "suite": suite})


def other_office_key():
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


@pytest.mark.parametrize(
    ("tampering", "code"),
    [
        ({"edit": lambda h, s: (h.replace(b"b-1", b"b-2"), s)}, "unsealable"),
        ({"edit": lambda h, s: (h, flip(s, 5))}, "unsealable"),  # encapsulated key
        ({"edit": lambda h, s: (h, flip(s, 40))}, "unsealable"),  # ciphertext
        ({"edit": lambda h, s: (h, flip(s, len(s) - 1))}, "unsealable"),  # tag
        ({"edit": lambda h, s: (with_suite(h, 0), s)}, "unsupported_suite"),
        ({"public_key": other_office_key(), "key_id": "office-elsewhere.kem1"}, "wrong_key"),
        ({"public_key": other_office_key()}, "unsealable"),  # another key under our key id
    ],
    ids=["header", "key", "ciphertext", "tag", "downgraded-suite", "other-office", "forged-id"],
)
def test_a_tampered_sealed_push_is_refused_and_stores_nothing(sealed_office, tampering, code):
    phone = sealed_office.enroll("mediator")
    stored = sealed_office.fingerprint()
    change = phone.change("case", "k-1", {"title": "Drains", "status": "new"})
    body, headers = sealed_push(sealed_office, phone, change, **tampering)
    answer = sealed_office.http.post("/v1/sync/push", content=body, headers=headers)
    assert error_of(answer) == (400, code)
    assert sealed_office.fingerprint() == stored


def test_a_header_swapped_onto_another_push_is_refused(sealed_office):
    phone = sealed_office.enroll("mediator")
    first = phone.change("case", "k-1", {"title": "Drains"})
    second = phone.change("case", "k-2", {"title": "Noise"})
    # Another request's header (it names another batch) on this request's ciphertext.
    one, _ = sealed_push(sealed_office, phone, first, batch_id="b-9")
    header = msgspec.msgpack.decode(one)["header"]
    stored = sealed_office.fingerprint()
    body, headers = sealed_push(
        sealed_office, phone, second, batch_id="b-1", edit=lambda h, s: (header, s)
    )
    answer = sealed_office.http.post("/v1/sync/push", content=body, headers=headers)
    assert error_of(answer) == (400, "unsealable")
    assert sealed_office.fingerprint() == stored


def test_a_replayed_sealed_push_is_refused_and_a_resent_batch_writes_nothing_twice(sealed_office):
    phone = sealed_office.enroll("mediator")
    change = phone.change("case", "k-1", {"title": "Drains", "status": "new"})
    body, headers = sealed_push(sealed_office, phone, change)
    assert sealed_office.http.post("/v1/sync/push", content=body, headers=headers).is_success
    stored = sealed_office.fingerprint()
    # The same request again, byte for byte: its nonce is spent.
    again = sealed_office.http.post("/v1/sync/push", content=body, headers=headers)
    assert error_of(again) == (401, "replayed")
    # The same batch freshly signed and sealed (a retry after a lost answer): duplicates.
    body, headers = sealed_push(sealed_office, phone, change)
    retry = sealed_office.http.post("/v1/sync/push", content=body, headers=headers)
    assert retry.is_success
    assert sealed_office.fingerprint() == stored
