"""Sealed sync (PROTOCOL.md section 14): plain bodies refused, tampered ones too."""

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

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
