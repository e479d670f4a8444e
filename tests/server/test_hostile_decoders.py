"""Every decoder the server runs on untrusted bytes, fed garbage: only our typed errors come out.

Garbage bytes, truncated and bit-flipped valid payloads, bodies nested
thousands deep, oversized strings and arrays, invalid UTF-8 (issue 8, point 5).
A decoder may answer `MalformedRequest`, `TooDeep` or an envelope or
authentication error, each with its stable code; anything else would reach
the client as a 500.
"""

import base64

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas import Change, CompactChange, SignedPull, SignedPush
from schemas.console.admin import CodeRequest, RevokeRequest
from schemas.console.assignment import AssignRequest, DeadlineRequest
from schemas.console.conflicts import SettleRequest
from schemas.console.quarantine import AcknowledgeRequest, ReapplyRequest
from schemas.console.triage import ConvertRequest, DismissRequest
from schemas.wire import EnrollRequest, PullRequest, PushRequest
from server import auth
from server.storage.directory import Directory
from sync import decoding, envelope, signing
from sync.changes import decode_change
from sync.errors import (
    AuthenticationError,
    EnvelopeError,
    LianxinError,
    MalformedRequest,
    TooDeep,
)
from tests.conftest import WALL_MS

MANY = settings(max_examples=500, deadline=None)
# One valid example of every body the server decodes, as the plain data a client sends.
VALID = {
    EnrollRequest: {"code": "ABCD-1234", "signing_key": bytes(32), "kem_key": bytes(32),
                    "label": "Wang's phone", "proof": bytes(64)},
    PushRequest: {"batch_id": "b-1", "changes": [b"\x80"], "signature": bytes(64)},
    PullRequest: {"cursor": "v1.3.3.abc", "limit": 100},
    SignedPush: ["dev-a", "b-1", 1795000000123, [b"\x93"], bytes(64)],
    SignedPull: ["dev-a", "KZ3c9vQm1L0pXw7rT2aYbA", 1795000000123, None, 1000, bytes(64),
                 [[7, "c-1"], [9, "c-4"]]],
    CompactChange: ["c-1", "case", "k-1", "dev-a", 5, {"dev-b": 3},
                    {"title": "DEEP", "location": {"city": "Hangzhou"}},
                    [{"type": "add", "field": "tags", "value": "drains"}]],
    Change: {"change_id": "c-1", "record_type": "case", "record_id": "k-1",
             "device_id": "dev-a", "hlc": 5, "seen": {"dev-b": 3},
             "set": {"title": "DEEP", "location": {"city": "Hangzhou"}},
             "ops": [{"type": "add", "field": "tags", "value": "drains"},
                     {"type": "append", "field": "visits", "entry": {"entry_id": "v-1"}}]},
    SettleRequest: {"record_type": "case", "record_id": "k-1", "field": "title",
                    "choice": "custom", "reason": "called both", "value": {"a": ["DEEP"]}},
    AcknowledgeRequest: {"change_id": "c-1"},
    ReapplyRequest: {"change_id": "c-1", "reason": "fixed the access"},
    ConvertRequest: {"mediator": "u-1", "reply": "we are on it", "also": ["w-2"]},
    DismissRequest: {"reply": "not ours", "also": ["w-3"]},
    AssignRequest: {"reason": "leave", "add": ["u-1"], "remove": ["u-2"]},
    DeadlineRequest: {"category": "noise", "reason": "policy", "days": 30},
    CodeRequest: {"user_id": "u-1"},
    RevokeRequest: {"reason": "lost on the bus"},
}  # fmt: skip
KINDS = list(VALID)


def encoded(kind, as_json):
    data = VALID[kind]
    if as_json:
        return msgspec.json.encode(msgspec.to_builtins(data))  # bytes become base64
    return msgspec.msgpack.encode(data)


def deepened(data: bytes, depth: int, as_json: bool) -> bytes:
    """`data` with its `"DEEP"` value (or, lacking one, all of it) nested `depth` arrays deep."""
    if as_json:
        nested = b"[" * depth + b"1" + b"]" * depth
        return data.replace(b'"DEEP"', nested) if b'"DEEP"' in data else nested[:-1] + data + b"]"
    nested = b"\x91" * depth + b"\x01"
    return data.replace(b"\xa4DEEP", nested) if b"\xa4DEEP" in data else nested[:-1] + data


def oversized(as_json: bool, length: int) -> bytes:
    """A body whose first string claims (or holds) `length` bytes."""
    if as_json:
        return b'{"reason": "' + b"x" * length + b'"}'
    return b"\x81\xa6reason\xdb" + length.to_bytes(4, "big") + b"x" * min(length, 1000)


def hostile(kind, as_json):
    valid = encoded(kind, as_json)
    return st.one_of(
        st.binary(max_size=300),
        # Truncated, and with one byte changed.
        st.integers(0, len(valid) - 1).map(lambda cut: valid[:cut]),
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
            lambda at: valid[: at[0]] + bytes([at[1]]) + valid[at[0] + 1 :]
        ),
        st.integers(500, 20_000).map(lambda depth: deepened(valid, depth, as_json)),
        st.integers(0, 2**32 - 1).map(lambda length: oversized(as_json, min(length, 10**6))),
        # Invalid UTF-8 where a string goes.
        st.binary(min_size=1, max_size=8).map(
            lambda junk: valid.replace(b"c-1", b"\xff" + junk, 1).replace(b"u-1", b"\xc3" + junk)
        ),
    )


def assert_only_typed_errors(kind, body, as_json):
    try:
        decoded = decoding.decode(body, kind, json=as_json)
    except (MalformedRequest, TooDeep) as error:
        assert error.code in {"malformed", "too_deep"} and error.detail
    else:
        assert isinstance(decoded, kind)


@pytest.mark.parametrize("as_json", [False, True], ids=["msgpack", "json"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_every_body_type_decodes_or_is_refused_with_a_code(kind, as_json):
    @MANY
    @given(body=hostile(kind, as_json))
    def run(body):
        assert_only_typed_errors(kind, body, as_json)

    run()


@pytest.mark.parametrize("as_json", [False, True], ids=["msgpack", "json"])
@pytest.mark.parametrize(
    "kind", [Change, CompactChange, SettleRequest], ids=lambda kind: kind.__name__
)
def test_a_value_nested_thousands_deep_is_too_deep_not_a_crash(kind, as_json):
    # Field values are `Any`: msgspec follows the nesting until Python's recursion limit.
    body = deepened(encoded(kind, as_json), 50_000, as_json)
    with pytest.raises(TooDeep) as refused:
        decoding.decode(body, kind, json=as_json)
    assert refused.value.code == "too_deep"


def test_every_valid_example_still_decodes():
    for kind in KINDS:
        for as_json in (False, True):
            assert isinstance(decoding.decode(encoded(kind, as_json), kind, json=as_json), kind)


def mangled(good: bytes):
    """`good` cut short anywhere, or with one byte changed."""
    return st.one_of(
        st.integers(0, len(good) - 1).map(lambda cut: good[:cut]),
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(
            lambda at: good[: at[0]] + bytes([good[at[0]] ^ at[1]]) + good[at[0] + 1 :]
        ),
    )


OFFICE_KEM = X25519PrivateKey.generate()
HEADER = envelope.Header(suite=1, key_id="kem-1", device_id="dev-a", batch_id="b-1", purpose="push")
SEALED = envelope.seal(b"\x80", HEADER, OFFICE_KEM.public_key())


@MANY
@given(
    body=st.one_of(
        st.binary(max_size=300),
        mangled(SEALED),
        st.builds(
            lambda header, sealed: msgspec.msgpack.encode({"header": header, "sealed": sealed}),
            st.binary(max_size=2000),
            st.binary(max_size=100),
        ),
    )
)
def test_a_mangled_envelope_is_an_envelope_error(body):
    try:
        header, plaintext = envelope.open_envelope(body, {"kem-1": OFFICE_KEM})
    except EnvelopeError as error:
        assert error.code in {"bad_envelope", "unsupported_suite", "wrong_key", "unsealable"}
    else:  # only an unchanged envelope opens: HPKE binds every bit of it
        assert (header, plaintext) == (HEADER, b"\x80")


def change_bodies():
    """Both forms of a change, mangled as `hostile` mangles any body."""
    return st.one_of(hostile(Change, False), hostile(CompactChange, False))


@MANY
@given(raw=change_bodies())
def test_a_mangled_change_in_either_form_is_a_decode_error(raw):
    # The server answers these `malformed` (or `too_deep`) naming the change (server.service).
    try:
        change = decode_change(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return
    assert type(change) is Change


PUSH_SEALED = envelope.seal_v2("push", b"\x95", "kem-1", OFFICE_KEM.public_key())


@MANY
@given(
    body=st.one_of(
        st.binary(max_size=300),
        mangled(PUSH_SEALED),
        st.builds(
            lambda suite, key_id, sealed: msgspec.msgpack.encode([suite, key_id, sealed]),
            st.integers(-(2**63), 2**64 - 1),
            st.text(max_size=300),
            st.binary(max_size=100),
        ),
    )
)
def test_a_mangled_push_envelope_is_an_envelope_error(body):
    try:
        suite, plaintext = envelope.open_v2("push", body, {"kem-1": OFFICE_KEM})
    except EnvelopeError as error:
        assert error.code in {"bad_envelope", "unsupported_suite", "wrong_key", "unsealable"}
    else:
        assert (suite, plaintext) == (1, b"\x95")


DEVICE_KEM = X25519PrivateKey.generate()
ANSWERED = SignedPush(
    device_id="dev-a", batch_id="b-1", timestamp_ms=WALL_MS, changes=[], signature=bytes(64)
)
ANSWER = envelope.seal_v2_answer("push", b"\x82", 1, ANSWERED.signature, DEVICE_KEM.public_key())


@MANY
@given(body=st.one_of(st.binary(max_size=300), mangled(ANSWER)))
def test_a_mangled_push_answer_does_not_open(body):
    # The device then sends its batch again: the server answers a retry as before.
    with pytest.raises(EnvelopeError) as refused:
        envelope.open_v2_answer("push", body, 1, ANSWERED.signature, DEVICE_KEM)
    assert refused.value.code == "unsealable"


HEADER_TEXT = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),  # as ASGI hands bytes over
    st.sampled_from(["", " ", "0", "-1", "²³", "1e9", "9" * 40, "=" * 90, "../../etc"]),
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    from tests.conftest import make_store

    store = make_store(tmp_path_factory.mktemp("hostile") / "lianxin.db")
    directory = Directory(store)
    user = directory.add_user("Zhao Min", "mediator", ["Hangzhou"], WALL_MS)
    code = directory.issue_code(user.user_id, WALL_MS, 3600_000)
    key = Ed25519PrivateKey.generate()
    device, _ = directory.enroll(
        code, key.public_key().public_bytes_raw(), bytes(32), "phone", WALL_MS
    )
    yield directory, device.device_id, key
    store.close()


@MANY
@given(
    device=HEADER_TEXT,
    timestamp=HEADER_TEXT,
    nonce=HEADER_TEXT,
    signature=st.one_of(HEADER_TEXT, st.binary(max_size=80).map(lambda b: base64.b64encode(b))),
    known_device=st.booleans(),
)
# Found by this test in CI: a non-ASCII character in the signature header was a 500.
@example(device="x", timestamp="1764000000", nonce="n" * 16, signature="\x80", known_device=True)
def test_garbage_signature_headers_are_refused_with_a_code(
    directory, device, timestamp, nonce, signature, known_device
):
    directory, device_id, _ = directory
    headers = {
        auth.DEVICE: device_id if known_device else device,
        auth.TIMESTAMP: timestamp,
        auth.NONCE: nonce,
        auth.SIGNATURE: signature.decode() if isinstance(signature, bytes) else signature,
    }
    with pytest.raises((AuthenticationError, MalformedRequest)) as refused:
        auth.authenticate(headers, "POST", "/v1/sync/pull", b"", directory, WALL_MS, 300, None)
    assert isinstance(refused.value, LianxinError) and refused.value.code != "error"


@MANY
@given(
    known_device=st.booleans(),
    device=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
    batch_id=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
    timestamp_ms=st.integers(0, 2**53),
    changes=st.lists(st.binary(max_size=40), max_size=3),
    signature=st.binary(min_size=64, max_size=64),
)
def test_a_garbage_push_is_refused_with_a_code(
    directory, known_device, device, batch_id, timestamp_ms, changes, signature
):
    directory, device_id, _ = directory
    push = SignedPush(
        device_id=device_id if known_device else device,
        batch_id=batch_id,
        timestamp_ms=timestamp_ms,
        changes=changes,
        signature=signature,
    )
    with pytest.raises(AuthenticationError) as refused:
        auth.authenticate_push(push, directory, WALL_MS, 300, None)
    assert refused.value.code in {"unknown_device", "bad_signature"}


@MANY
@given(
    known_device=st.booleans(),
    device=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
    request_id=st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True),
    timestamp_ms=st.integers(0, 2**53),
    cursor=st.none() | st.text(max_size=200),
    limit=st.integers(1, 2**63),
    signature=st.binary(min_size=64, max_size=64),
)
def test_a_garbage_pull_is_refused_with_a_code(
    directory, known_device, device, request_id, timestamp_ms, cursor, limit, signature
):
    directory, device_id, _ = directory
    pull = SignedPull(
        device_id=device_id if known_device else device,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        cursor=cursor,
        limit=limit,
        signature=signature,
    )
    with pytest.raises(AuthenticationError) as refused:
        auth.authenticate_pull(pull, directory, WALL_MS, 300, None)
    assert refused.value.code in {"unknown_device", "bad_signature"}


def test_a_well_signed_request_still_authenticates(directory):
    directory, device_id, key = directory
    timestamp, nonce = WALL_MS // 1000, "nonce-hostile-0001"
    message = signing.request_message("POST", "/v1/sync/pull", timestamp, nonce, device_id, b"")
    headers = {
        auth.DEVICE: device_id,
        auth.TIMESTAMP: str(timestamp),
        auth.NONCE: nonce,
        auth.SIGNATURE: base64.b64encode(key.sign(message)).decode(),
    }
    device = auth.authenticate(headers, "POST", "/v1/sync/pull", b"", directory, WALL_MS, 300, None)
    assert device.device_id == device_id
