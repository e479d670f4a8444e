"""Every wire type round-trips through msgpack and JSON; old payloads keep decoding."""

from datetime import UTC
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from schemas import (
    Add,
    Agreement,
    Append,
    Candidate,
    Case,
    Change,
    ChangeResult,
    Conflict,
    Delete,
    EarlyWarning,
    Gps,
    Location,
    Note,
    Party,
    Reason,
    Receipt,
    Remove,
    Restore,
    Signature,
    Visit,
    Withdrawal,
)
from schemas.wire import Nonce
from tests.schemas.examples import EXAMPLES

FROZEN = Path(__file__).parent / "frozen"
EXAMPLE_TYPES: dict[str, Any] = {
    "case": Case,
    "warning": EarlyWarning,
    "agreement": Agreement,
    "party": Party,
    "change": Change,
    "result": ChangeResult,
    "rejected": ChangeResult,
}

ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
short = st.text(max_size=200)
text = st.text(max_size=500)
moments = st.datetimes(timezones=st.just(UTC))
hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)
stamps = st.integers(min_value=0, max_value=2**63 - 1)
plain = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=50)
values = st.recursive(
    plain | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)

locations = st.builds(
    Location,
    city=short,
    district=short,
    street=short,
    community=short,
    address=st.none() | short,
    gps=st.none()
    | st.builds(
        Gps,
        lat=st.floats(-90, 90, allow_nan=False),
        lon=st.floats(-180, 180, allow_nan=False),
    ),
)
visits = st.builds(
    Visit, entry_id=ids, at=moments, by=ids, summary=text, attendees=st.lists(ids, max_size=3)
)
notes = st.builds(Note, entry_id=ids, at=moments, by=ids, text=text)
signatures = st.builds(
    Signature,
    signer=ids,
    signed_at=moments,
    content_hash=hashes,
    signature=st.binary(max_size=64),
    witness=st.none() | ids,
    handwriting_hash=st.none() | hashes,
    device_id=st.none() | ids,
)
receipts = st.builds(
    Receipt,
    office_id=ids,
    content_hash=hashes,
    signatures_hash=hashes,
    executed_at=moments,
    seq=st.integers(1, 2**62),
    signature=st.binary(max_size=64),
)
cases = st.builds(
    Case,
    category=short,
    title=short,
    summary=text,
    location=st.none() | locations,
    parties=st.lists(ids, max_size=4),
    status=st.sampled_from(
        ["new", "assigned", "in_mediation", "resolved", "closed", "referred", "withdrawn"]
    ),
    mediators=st.lists(ids, max_size=3),
    priority=st.sampled_from(["low", "normal", "high", "urgent"]),
    households=st.integers(0, 1_000_000),
    due=st.none() | st.dates(),
    visits=st.lists(visits, max_size=3),
    notes=st.lists(notes, max_size=3),
    tags=st.lists(short, max_size=3),
    warnings=st.lists(ids, max_size=3),
    agreements=st.lists(ids, max_size=3),
)
warnings = st.builds(
    EarlyWarning,
    observed_at=st.none() | moments,
    location=st.none() | locations,
    category=short,
    severity=st.sampled_from(["low", "medium", "high", "critical"]),
    description=text,
    people_affected=st.integers(0, 10**9),
    status=st.sampled_from(["open", "triaged", "converted", "dismissed"]),
    informant=st.none() | ids,
    response=text,
    case=st.none() | ids,
)
agreements = st.builds(
    Agreement,
    case=st.none() | ids,
    version=st.integers(1, 1000),
    terms=text,
    required_signers=st.lists(ids, max_size=5),
    supersedes=st.none() | ids,
    signatures=st.lists(signatures, max_size=3),
    status=st.sampled_from(["draft", "collecting", "executed", "superseded", "void"]),
    receipt=st.none() | receipts,
    withdrawals=st.lists(
        st.builds(
            Withdrawal, signer=ids, withdrawn_at=moments, reason=text, witness=st.none() | ids
        ),
        max_size=2,
    ),
)
parties = st.builds(
    Party,
    kind=st.sampled_from(["person", "household", "organisation"]),
    name=short,
    phone=st.none() | short,
    id_number=st.none() | short,
    address=st.none() | short,
    role=st.sampled_from(["petitioner", "respondent", "third_party"]),
)
field_names = st.sampled_from(["title", "tags", "notes", "status", "x"])
ops = st.one_of(
    st.builds(Add, field=field_names, value=values),
    st.builds(Remove, field=field_names, value=values),
    st.builds(Append, field=field_names, entry=values),
    st.just(Delete()),
    st.just(Restore()),
)
changes = st.builds(
    Change,
    change_id=ids,
    record_type=st.sampled_from(["case", "warning", "agreement", "party"]),
    record_id=ids,
    device_id=ids,
    hlc=stamps,
    seen=st.dictionaries(ids, stamps, max_size=4),
    set=st.dictionaries(st.text(max_size=20), values, max_size=4),
    ops=st.lists(ops, max_size=4),
)
candidates = st.builds(Candidate, value=values, device_id=ids, hlc=stamps, change_id=ids)
results = st.builds(
    ChangeResult,
    change_id=ids,
    status=st.sampled_from(["applied", "duplicate", "conflict", "rejected"]),
    seq=st.none() | st.integers(1, 2**62),
    reason=st.none() | st.sampled_from(list(Reason)),
    detail=st.none() | text,
    conflicts=st.lists(
        st.builds(
            Conflict,
            record_type=short,
            record_id=ids,
            field=short,
            kind=st.sampled_from(["value", "status", "deleted"]),
            winner=values,
            candidates=st.lists(candidates, max_size=3),
        ),
        max_size=2,
    ),
    clamped=st.booleans(),
)

ROUND_TRIPS = [
    (Case, cases),
    (EarlyWarning, warnings),
    (Agreement, agreements),
    (Party, parties),
    (Change, changes),
    (ChangeResult, results),
]


@pytest.mark.parametrize(
    ("kind", "strategy"), ROUND_TRIPS, ids=lambda x: getattr(x, "__name__", "")
)
@pytest.mark.parametrize("codec", [msgspec.msgpack, msgspec.json], ids=["msgpack", "json"])
def test_every_type_round_trips(kind, strategy, codec):
    @settings(max_examples=500, deadline=None)
    @given(strategy)
    def round_trip(value):
        assert codec.decode(codec.encode(value), type=kind) == value

    round_trip()


@pytest.mark.parametrize("codec,name", [(msgspec.msgpack, "v1.msgpack"), (msgspec.json, "v1.json")])
def test_frozen_v1_payloads_still_decode(codec, name):
    payload = (FROZEN / name).read_bytes()
    decoded = codec.decode(payload, type=dict[str, Any])
    assert decoded.keys() == EXAMPLES.keys()
    for key, raw in decoded.items():
        typed = msgspec.convert(raw, EXAMPLE_TYPES[key], strict=codec is msgspec.msgpack)
        assert typed == EXAMPLES[key], key


def test_old_change_without_optional_fields_decodes_with_defaults():
    # A change from the oldest clients: no seen, no ops.
    raw = (
        b'{"change_id":"c","record_type":"case","record_id":"k",'
        b'"device_id":"d","hlc":1,"set":{"title":"t"}}'
    )
    change = msgspec.json.decode(raw, type=Change)
    assert (change.seen, change.ops) == ({}, [])


def test_public_surface_is_pinned():
    # Adding a public name is a decision: add it here too.
    assert len(schemas.__all__) == len(set(schemas.__all__))
    assert set(schemas.__all__) == {
        "LOG",
        "LWW",
        "RECORD_TYPES",
        "SEALED",
        "SET",
        "Add",
        "AddRemoveSet",
        "Agreement",
        "Append",
        "Candidate",
        "Case",
        "Change",
        "ChangeResult",
        "CompactChange",
        "Conflict",
        "Delete",
        "EarlyWarning",
        "EnrollRequest",
        "Enrollment",
        "ErrorBody",
        "Eviction",
        "Gps",
        "Location",
        "Log",
        "Lww",
        "Note",
        "OfficeInfo",
        "Op",
        "Party",
        "Policy",
        "PullPage",
        "PullRequest",
        "Pushed",
        "PulledChange",
        "PushRequest",
        "PushResponse",
        "Reason",
        "Receipt",
        "RecordState",
        "Remove",
        "Restore",
        "Sealed",
        "Signature",
        "SignedPull",
        "SignedPush",
        "StatusMachine",
        "Visit",
        "Withdrawal",
        "Write",
    }
    assert all(hasattr(schemas, name) for name in schemas.__all__)


@pytest.mark.parametrize(
    ("kind", "text"),
    [(Nonce, "r" * 16)],
    ids=["nonce"],
)
def test_nonces_hold_no_trailing_newline(kind, text):
    # A pattern ending in `$` matches before a final newline: the whole text must match.
    assert msgspec.convert(text, kind) == text
    with pytest.raises(msgspec.ValidationError, match="regex"):
        msgspec.convert(text + "\n", kind)
