"""docs/PROTOCOL.md is normative: its tables and test vectors must match the code."""

import base64
import hashlib
import hmac
import re
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas import (
    RECORD_TYPES,
    AddRemoveSet,
    Agreement,
    Change,
    ChangeResult,
    Log,
    Lww,
    PulledChange,
    PullPage,
    Pushed,
    PushResponse,
    Reason,
    Receipt,
    Sealed,
    Signature,
    SignedPull,
    SignedPush,
    StatusMachine,
)
from schemas.records import Party
from schemas.state import RecordState
from schemas.wire import PullRequest
from server.errors import status_of
from server.pseudonyms import pseudonym
from server.storage.people import digests
from sync import agreements, errors, merge, signing
from sync.changes import decode_change, encode_change
from sync.clock import pack
from sync.envelope import SUITES, CompactEnvelope, open_envelope, open_v2, open_v2_answer
from sync.errors import Unsealable
from sync.merge import field_specs

DOC = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text()
POLICY_NAMES = {
    Lww: "lww",
    AddRemoveSet: "set",
    Log: "log",
    StatusMachine: "status",
    Sealed: "sealed",
}


def vector(name: str) -> str:
    match = re.search(rf"```\w+ vector:{name}\n(.*?)```", DOC, re.S)
    assert match, f"vector {name} missing from PROTOCOL.md"
    return match.group(1).strip()


def pairs(text: str) -> list[tuple[str, str]]:
    """`"a b c d"` as `[("a", "b"), ("c", "d")]`."""
    words = text.split(" ")
    return list(zip(words[::2], words[1::2], strict=True))


def fields(name: str) -> dict[str, str]:
    """A vector of `key=value` lines."""
    return dict(line.split("=", 1) for line in vector(name).splitlines())


def seal_with_ephemeral(seed: bytes, recipient: bytes, info: bytes, plaintext: bytes) -> bytes:
    """HPKE base mode, suite 1 (RFC 9180, sections 4.1 and 5), with the ephemeral key fixed.

    The library draws the ephemeral key itself; fixing it here is what lets the
    doc's sealed vectors be reproduced, and checked, byte for byte.
    """

    def extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return hmac.digest(salt, b"HPKE-v1" + suite_id + label + ikm, "sha256")

    def expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
        return hmac.digest(prk, labeled + b"\x01", "sha256")[:length]  # one block is enough

    kem = b"KEM\x00\x20"  # DHKEM(X25519, HKDF-SHA256)
    hpke = b"HPKE\x00\x20\x00\x01\x00\x02"  # that KEM, HKDF-SHA256, AES-256-GCM
    ephemeral = X25519PrivateKey.from_private_bytes(seed)
    encapsulated = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    eae_prk = extract(kem, b"", b"eae_prk", shared)
    secret = expand(kem, eae_prk, b"shared_secret", encapsulated + recipient, 32)
    context = (
        b"\x00"  # base mode
        + extract(hpke, b"", b"psk_id_hash", b"")
        + extract(hpke, b"", b"info_hash", info)
    )
    key_secret = extract(hpke, secret, b"secret", b"")
    key = expand(hpke, key_secret, b"key", context, 32)
    nonce = expand(hpke, key_secret, b"base_nonce", context, 12)
    return encapsulated + AESGCM(key).encrypt(nonce, plaintext, None)


def table_after(heading: str) -> list[list[str]]:
    section = DOC.split(heading, 1)[1]
    rows = re.findall(r"^\|(.*)\|$", section.split("\n\n", 2)[1], re.M)
    return [[cell.strip().strip("`") for cell in row.split("|")] for row in rows[2:]]


@pytest.mark.parametrize("record_type", RECORD_TYPES)
def test_field_tables_match_the_schema(record_type):
    documented = [(row[0], row[1]) for row in table_after(f"#### `{record_type}`")]
    actual = [
        (name, POLICY_NAMES[type(spec.policy)]) for name, spec in field_specs(record_type).items()
    ]
    assert documented == actual


def test_every_reason_code_is_documented():
    documented = {row[0] for row in table_after("### Reason codes")}
    assert documented == {reason.value for reason in Reason}


def test_status_machines_match_the_schema():
    rows = {row[0]: row for row in table_after("### Status machines")}
    for record_type, row in rows.items():
        (machine,) = [
            s.policy
            for s in field_specs(record_type).values()
            if isinstance(s.policy, StatusMachine)
        ]
        assert set(re.findall(r"`(\w+)`", row[1])) == machine.initial
        documented = {
            (source.strip(), target.strip())
            for move in row[2].split(";")
            for source, targets in [move.split("→")]
            for target in targets.split(",")
        }
        actual = {(s, t) for s, targets in machine.transitions.items() for t in targets}
        assert documented == actual, record_type


def test_hlc_vector():
    fields = dict(part.split("=") for part in vector("hlc").split())
    assert pack(int(fields["wall_ms"]), int(fields["counter"])) == int(fields["stamp"])


def test_change_vectors_are_one_change_in_both_encodings():
    from_json = msgspec.json.decode(vector("change-json"), type=Change)
    packed = bytes.fromhex(vector("change-msgpack"))
    assert msgspec.msgpack.decode(packed, type=Change) == from_json
    assert msgspec.msgpack.encode(from_json) == packed
    assert msgspec.json.encode(from_json).decode() == vector("change-json")


def test_the_office_keeps_values_in_the_documented_normal_form():
    sent = [bytes.fromhex(hex_) for hex_ in fields("normal-form").values()]
    # Compared as JSON text, so that 30.0 is not taken for 30.
    expected = msgspec.json.decode(vector("normal-form-kept"), type=list[msgspec.Raw])
    for raw, kept in zip(sent, expected, strict=True):
        state, rejected = merge.apply_change(None, msgspec.msgpack.decode(raw, type=Change))
        assert rejected is None
        written = {field: writes[0].value for field, writes in state.registers.items()}
        written |= {field: [w.value for w in log.values()] for field, log in state.logs.items()}
        assert msgspec.json.encode(written) == bytes(kept)


def test_merge_example_gives_the_documented_record_and_conflicts():
    changes = msgspec.json.decode(vector("merge-input"), type=list[Change])
    expected = msgspec.json.decode(vector("merge-output"))
    state = None
    for change in changes:
        state, rejected = merge.apply_change(state, change)
        assert rejected is None
    record = msgspec.to_builtins(merge.materialize(state))
    defaults = msgspec.to_builtins(RECORD_TYPES["case"]())
    assert {k: v for k, v in record.items() if v != defaults[k]} == expected["record"]
    assert msgspec.to_builtins(merge.conflicts(state)) == expected["conflicts"]


def test_the_state_vector_is_the_worked_example_merged():
    state = None
    for change in msgspec.json.decode(vector("merge-input"), type=list[Change]):
        state, rejected = merge.apply_change(state, change)
        assert rejected is None
    packed = bytes.fromhex(vector("state"))
    assert msgspec.msgpack.encode(state) == packed
    assert msgspec.json.encode(state).decode() == vector("state-json")
    # A state read from the vector shows the documented record, and merges on as one's own.
    received = msgspec.msgpack.decode(packed, type=RecordState)
    expected = msgspec.json.decode(vector("merge-output"))
    assert msgspec.to_builtins(merge.conflicts(received)) == expected["conflicts"]
    settling = Change(
        change_id="c-4",
        record_type="case",
        record_id="k-noise",
        device_id="dev-chen",
        hlc=state.vv["dev-sun"] + 1,
        seen=dict(received.vv),
        set={"summary": "Stop at 22:00."},
    )
    settled, rejected = merge.apply_change(received, settling)
    assert rejected is None and merge.conflicts(settled) == []


def test_request_signature_vector():
    fields = dict(line.split("=", 1) for line in vector("request-signature").splitlines())
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(fields["signing_key_seed"]))
    assert key.public_key().public_bytes_raw().hex() == fields["public_key"]
    message = signing.request_message(
        fields["method"],
        fields["path"],
        int(fields["timestamp"]),
        fields["nonce"],
        fields["device_id"],
        bytes.fromhex(fields["body_hex"]),
    )
    assert base64.b64encode(key.sign(message)).decode() == fields["signature_b64"]
    assert msgspec.msgpack.decode(bytes.fromhex(fields["body_hex"]), type=PullRequest) == (
        PullRequest(cursor=None, limit=1000)
    )


def test_every_error_code_is_documented_with_its_status():
    documented = {(int(row[0]), row[1]) for row in table_after("Every error is answered with")}
    # Never raised themselves.
    abstract = {errors.AuthenticationError, errors.EnvelopeError, errors.ConsoleError}
    raised = [k for k in _subclasses(errors.LianxinError) if k not in abstract]
    codes = {(status_of(kind()), kind.code) for kind in raised}
    from_http_layer = {
        (400, "bad_request"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (500, "internal"),
    }
    assert documented == codes | from_http_layer


def _subclasses(kind):
    for sub in kind.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_agreement_vectors():
    v = dict(line.split("=", 1) for line in vector("agreement").splitlines())
    agreement = Agreement(
        case=v["case"],
        version=int(v["version"]),
        terms=v["terms"],
        required_signers=v["required_signers"].split(","),
    )
    aid = v["agreement_id"]
    assert agreements.canonical_content(aid, agreement).hex() == v["canonical_hex"]
    assert agreements.content_hash(aid, agreement) == v["content_hash"]
    device = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["device_key_seed"]))
    assert device.public_key().public_bytes_raw().hex() == v["device_public_key"]
    unsigned = Signature(
        signer=v["signer"],
        signed_at=agreements.moment(int(v["signed_at_ms"])),
        content_hash=v["content_hash"],
        signature=b"",
        witness=v["witness"],
        handwriting_hash=v["handwriting_hash"],
        device_id=v["device_id"],
    )
    signed = device.sign(agreements.signature_message(aid, unsigned))
    assert base64.b64encode(signed).decode() == v["signature_b64"]
    signature = msgspec.structs.replace(unsigned, signature=signed)
    assert (
        agreements.check_signature(
            aid, agreement, signature, bytes.fromhex(v["device_public_key"]), v["witness"]
        )
        is None
    )
    assert agreements.signatures_hash(aid, [signature]) == v["signatures_hash"]
    office = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["office_key_seed"]))
    assert office.public_key().public_bytes_raw().hex() == v["office_public_key"]
    receipt = Receipt(
        office_id=v["office_id"],
        content_hash=v["content_hash"],
        signatures_hash=v["signatures_hash"],
        executed_at=agreements.moment(int(v["executed_at_ms"])),
        seq=int(v["seq"]),
        signature=b"",
    )
    sealed = office.sign(agreements.receipt_message(aid, receipt))
    assert base64.b64encode(sealed).decode() == v["receipt_signature_b64"]


def test_envelope_vector_opens_to_its_plaintext():
    v = dict(line.split("=", 1) for line in vector("envelope").splitlines())
    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["recipient_key_seed"]))
    assert key.public_key().public_bytes_raw().hex() == v["recipient_public_key"]
    header, plaintext = open_envelope(bytes.fromhex(v["envelope_hex"]), {v["key_id"]: key})
    assert plaintext == v["plaintext"].encode()
    assert (header.suite, header.key_id, header.purpose) == (1, v["key_id"], "push")
    # The documented suites are exactly those the code knows.
    suites_table = DOC.split("| suite | KEM | KDF | AEAD |", 1)[1].split("\n\n", 1)[0]
    assert {int(n) for n in re.findall(r"^\| (\d+) \|", suites_table, re.M)} == set(SUITES)


def test_the_pseudonym_vector():
    v = dict(line.split("=", 1) for line in vector("pseudonym").splitlines())
    assert pseudonym(bytes.fromhex(v["pseudonym_key"]), v["user_id"]) == v["pseudonym"]


def test_the_blind_index_vector():
    v = dict(line.split("=", 1) for line in vector("blind-index").splitlines())
    found = dict(digests(bytes.fromhex(v["index_key"]), Party(name=v["name"], phone=v["phone"])))
    assert found == {"name": v["name_digest"], "phone": v["phone_digest"]}


def test_the_compact_change_vector_is_the_example_change():
    compact = bytes.fromhex(vector("change-compact"))
    example = msgspec.json.decode(vector("change-json"), type=Change)
    assert encode_change(example) == compact
    assert decode_change(compact) == example


def test_push_v2_vectors():
    v = dict(line.split("=", 1) for line in vector("push-v2").splitlines())
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["signing_key_seed"]))
    change = bytes.fromhex(v["change_hex"])
    assert change == bytes.fromhex(vector("change-compact"))
    message = signing.push_message(v["device_id"], v["batch_id"], int(v["timestamp_ms"]), [change])
    assert message.hex() == v["message_hex"]
    signature = key.sign(message)
    assert base64.b64encode(signature).decode() == v["signature_b64"]
    push = SignedPush(
        device_id=v["device_id"],
        batch_id=v["batch_id"],
        timestamp_ms=int(v["timestamp_ms"]),
        changes=[change],
        signature=signature,
    )
    assert msgspec.msgpack.encode(push).hex() == v["plaintext_hex"]

    body = fields("push-v2-body")
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(body["recipient_key_seed"]))
    suite, plaintext = open_v2("push", bytes.fromhex(body["body_hex"]), {body["key_id"]: recipient})
    assert (suite, plaintext.hex()) == (1, v["plaintext_hex"])
    info = b"lianxin push v2\n1\n" + body["key_id"].encode()
    assert body["info_hex"] == info.hex()
    sealed_body = msgspec.msgpack.decode(bytes.fromhex(body["body_hex"]), type=CompactEnvelope)
    assert SUITES[1].decrypt(sealed_body.sealed, recipient, info=info) == plaintext
    seed = bytes.fromhex(body["ephemeral_key_seed"])
    recipient_public = recipient.public_key().public_bytes_raw()
    assert seal_with_ephemeral(seed, recipient_public, info, plaintext) == sealed_body.sealed

    answer = fields("push-v2-answer")
    device = X25519PrivateKey.from_private_bytes(bytes.fromhex(answer["device_kem_seed"]))
    assert device.public_key().public_bytes_raw().hex() == answer["device_kem_public"]
    assert hashlib.sha256(push.signature).hexdigest() == answer["signature_sha256"]
    answer_info = b"lianxin push v2 answer\n1\n" + hashlib.sha256(push.signature).digest()
    assert answer["info_hex"] == answer_info.hex()
    sealed = bytes.fromhex(answer["answer_hex"])
    assert SUITES[1].decrypt(sealed, device, info=answer_info).hex() == answer["plaintext_hex"]
    opened = open_v2_answer("push", sealed, 1, push.signature, device)
    assert msgspec.msgpack.decode(opened, type=PushResponse) == PushResponse(
        batch_id=v["batch_id"],
        results=[ChangeResult(change_id="c-7f3a-0001", status="applied", seq=1)],
    )
    assert opened.hex() == answer["plaintext_hex"]
    later = signing.signed_push(key, v["device_id"], v["batch_id"], push.timestamp_ms + 1, [change])
    with pytest.raises(Unsealable):  # the same batch signed a millisecond later
        open_v2_answer("push", sealed, 1, later.signature, device)


def test_pull_v2_vectors():
    v = fields("pull-v2")
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["signing_key_seed"]))
    args = (v["device_id"], v["request_id"], int(v["timestamp_ms"]), v["cursor"], int(v["limit"]))
    assert signing.pull_message(*args).hex() == v["message_hex"]
    pull = signing.signed_pull(key, *args)
    assert base64.b64encode(pull.signature).decode() == v["signature_b64"]
    plaintext = signing.encode_pull(pull)
    assert plaintext.hex() == v["plaintext_hex"]

    # The next pull names the newest change the office answered: one line more, signed.
    pushed = fields("pull-v2-pushed")
    args = (
        *(pushed[name] for name in ("device_id", "request_id")),
        int(pushed["timestamp_ms"]),
        pushed["cursor"],
        int(pushed["limit"]),
        [Pushed(int(seq), change_id) for seq, change_id in pairs(pushed["pushed"])],
    )
    assert signing.pull_message(*args).hex() == pushed["message_hex"]
    named = signing.signed_pull(key, *args)
    assert base64.b64encode(named.signature).decode() == pushed["signature_b64"]
    assert signing.encode_pull(named).hex() == pushed["plaintext_hex"]
    assert msgspec.msgpack.decode(bytes.fromhex(pushed["plaintext_hex"]), type=SignedPull) == named

    # The request body: sealed to the office key of the `envelope` vector.
    body = fields("pull-v2-body")
    office = X25519PrivateKey.from_private_bytes(bytes.fromhex(body["recipient_key_seed"]))
    office_public = office.public_key().public_bytes_raw()
    assert office_public.hex() == fields("envelope")["recipient_public_key"]
    info = b"lianxin pull v2\n1\n" + body["key_id"].encode()
    assert body["info_hex"] == info.hex()
    seed = bytes.fromhex(body["ephemeral_key_seed"])
    sealed = seal_with_ephemeral(seed, office_public, info, plaintext)
    compact = CompactEnvelope(suite=1, key_id=body["key_id"], sealed=sealed)
    assert msgspec.msgpack.encode(compact).hex() == body["body_hex"]
    opened_body = open_v2("pull", bytes.fromhex(body["body_hex"]), {body["key_id"]: office})
    assert opened_body == (1, plaintext)

    # Its answer: a page of one change, sealed to the device key of `push-v2-answer`.
    answer = fields("pull-v2-answer")
    device_seed = bytes.fromhex(fields("push-v2-answer")["device_kem_seed"])
    device = X25519PrivateKey.from_private_bytes(device_seed)
    change = bytes.fromhex(vector("change-compact"))
    page = PullPage(
        items=[PulledChange(seq=int(answer["seq"]), change=change)],
        cursor=answer["cursor"],
        has_more=False,
        server_time_ms=int(answer["server_time_ms"]),
        kem_key_id=answer["kem_key_id"],
        kem_key=bytes.fromhex(answer["kem_key"]),
        kem_key_since_ms=int(answer["kem_key_since_ms"]),
        kem_key_signature=base64.b64decode(answer["kem_key_signature_b64"]),
    )
    assert (page.kem_key_id, page.kem_key) == (body["key_id"], office_public)
    # The page vouches for the key it names as OfficeInfo does (the `office-key` vector).
    statement = signing.office_key_message(
        fields("office-key")["office_id"], page.kem_key_id, page.kem_key_since_ms, page.kem_key
    )
    signing.verify(
        bytes.fromhex(fields("office-key")["office_signing_key"]),
        page.kem_key_signature,
        statement,
        "office key",
    )
    page_bytes = msgspec.msgpack.encode(page)
    assert page_bytes.hex() == answer["plaintext_hex"]
    assert hashlib.sha256(pull.signature).hexdigest() == answer["signature_sha256"]
    answer_info = b"lianxin pull v2 answer\n1\n" + hashlib.sha256(pull.signature).digest()
    assert answer["info_hex"] == answer_info.hex()
    answer_seed = bytes.fromhex(answer["ephemeral_key_seed"])
    device_public = device.public_key().public_bytes_raw()
    sealed_answer = seal_with_ephemeral(answer_seed, device_public, answer_info, page_bytes)
    assert sealed_answer.hex() == answer["answer_hex"]
    assert open_v2_answer("pull", sealed_answer, 1, pull.signature, device) == page_bytes
    assert msgspec.msgpack.decode(page_bytes, type=PullPage) == page
    with pytest.raises(Unsealable):  # the answer is bound to its purpose too
        open_v2_answer("push", sealed_answer, 1, pull.signature, device)


def test_office_key_vector():
    v = fields("office-key")
    office = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["office_signing_key_seed"]))
    assert office.public_key().public_bytes_raw().hex() == v["office_signing_key"]
    assert v["kem_key"] == fields("envelope")["recipient_public_key"]
    message = signing.office_key_message(
        v["office_id"], v["kem_key_id"], int(v["kem_key_since_ms"]), bytes.fromhex(v["kem_key"])
    )
    assert message.hex() == v["message_hex"]
    assert base64.b64encode(office.sign(message)).decode() == v["kem_key_signature_b64"]
