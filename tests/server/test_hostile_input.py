"""Garbage, truncated and wrongly typed bodies: a precise 4xx, never a 5xx, nothing stored."""

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Change
from schemas.changes import Add, Append, Remove
from tests.server.test_app import GONGSHU, decode

ANY_MSGPACK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
PUSH_SHAPED = st.fixed_dictionaries(
    {
        "batch_id": st.text(max_size=70),
        "changes": st.lists(st.binary(max_size=60), max_size=3),
        "signature": st.binary(max_size=70),
    },
    optional={"extra": ANY_MSGPACK},
)
CHANGE_SHAPED = st.fixed_dictionaries(
    {
        "change_id": st.text(max_size=70),
        "record_type": st.text(max_size=40),
        "record_id": st.text(max_size=70),
        "hlc": st.integers(-5, 2**64 - 1),
        "seen": st.dictionaries(st.text(max_size=5), st.integers(-5, 2**64 - 1), max_size=2),
        "set": st.dictionaries(st.text(max_size=10), ANY_MSGPACK, max_size=3),
        "ops": st.lists(
            st.dictionaries(
                st.sampled_from(["type", "field", "value", "entry"]), ANY_MSGPACK, max_size=4
            ),
            max_size=3,
        ),
    }
)
# MessagePack maps whose strings are arbitrary bytes: invalid UTF-8 more often than not.
BAD_UTF8 = st.lists(st.binary(min_size=1, max_size=20), min_size=2, max_size=6).map(
    lambda parts: (
        bytes([0x80 | len(parts) // 2])
        + b"".join(bytes([0xA0 | len(p)]) + p for p in parts[: len(parts) // 2 * 2])
    )
)
BODIES = st.one_of(
    st.binary(max_size=200),
    BAD_UTF8,
    ANY_MSGPACK.map(msgspec.msgpack.encode),
    PUSH_SHAPED.map(msgspec.msgpack.encode),
    st.builds(
        lambda body, cut: body[:cut], PUSH_SHAPED.map(msgspec.msgpack.encode), st.integers(0, 40)
    ),
)
REFUSALS = {400, 401, 403, 409, 413}
SLOW = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SLOW
@given(body=BODIES, path=st.sampled_from(["/v1/sync/push", "/v1/sync/pull", "/v1/enroll"]))
def test_signed_garbage_is_refused_precisely_and_changes_nothing(office, body, path):
    phone = office.enroll("mediator")
    stored = office.fingerprint()
    answer = phone.post(path, body)
    assert answer.status_code in REFUSALS | {200}, answer.content
    if answer.status_code != 200:
        assert msgspec.msgpack.decode(answer.content)["error"]
    if path != "/v1/sync/push" or answer.status_code != 200:
        assert office.fingerprint() == stored


@SLOW
@given(fields=CHANGE_SHAPED)
def test_any_change_in_a_well_signed_batch_gets_an_answer_or_a_precise_refusal(office, fields):
    phone = office.enroll("mediator")  # a fresh device: no batch id or nonce to collide with
    raw = msgspec.msgpack.encode({**fields, "device_id": phone.device_id})
    stored = office.fingerprint()
    answer = phone.post("/v1/sync/push", phone.push_body([], raw=[raw]))
    assert answer.status_code in REFUSALS | {200}, answer.content
    if answer.status_code == 200:
        (result,) = msgspec.msgpack.decode(answer.content)["results"]
        assert result["status"] in {"applied", "rejected", "duplicate", "conflict"}
        change = msgspec.msgpack.decode(raw, type=Change)
        assert result["change_id"] == change.change_id
    else:
        assert office.fingerprint() == stored


def test_a_value_nested_near_the_decoders_limit_gets_an_answer_or_too_deep(office):
    # Just under the depth the decoder follows, a value decoded but then broke the
    # visibility checks a few frames deeper: 500 for a band of depths, every retry.
    phone = office.enroll("mediator")
    phone.push([phone.change("case", "k-1", {"title": "Drains"})])
    answers = set()
    for depth in range(900, 1040, 2):
        value = b"\x91" * depth + b"\xa1x"  # [[...["x"]...]]
        op = b"\x83\xa4type\xa3add\xa5field\xa7parties\xa5value" + value
        head = msgspec.msgpack.encode(
            {"change_id": f"c-{depth}", "record_type": "case", "record_id": "k-1"}
            | {"device_id": phone.device_id, "hlc": phone.change("case", "k-1", {}).hlc}
        )
        raw = bytes([head[0] + 1]) + head[1:] + b"\xa3ops\x91" + op  # one more key: ops
        answer = phone.post("/v1/sync/push", phone.push_body([], f"b-{depth}", raw=[raw]))
        body = msgspec.msgpack.decode(answer.content)
        answers.add((answer.status_code, body.get("error") or body["results"][0]["reason"]))
    assert answers == {(200, "invalid_value"), (413, "too_deep")}


@pytest.mark.parametrize("where", ["record_id", "change_id", "seen"])
def test_an_id_ending_in_a_newline_is_malformed_and_nothing_is_stored(office, where):
    # The `Id` pattern's `$` matches before a final newline; PROTOCOL.md section 4 allows
    # none, and ids go into messages whose lines are joined by newlines.
    phone = office.enroll("mediator")
    change = phone.change("case", "k-1", {"title": "Drains"})
    fields = msgspec.to_builtins(change)
    if where == "seen":
        fields["seen"] = {"dev-other\n": 1}
    else:
        fields[where] += "\n"
    stored = office.fingerprint()
    answer = phone.post(
        "/v1/sync/push", phone.push_body([], "b-1", raw=[msgspec.msgpack.encode(fields)])
    )
    body = msgspec.msgpack.decode(answer.content)
    assert (answer.status_code, body["error"]) == (400, "malformed")
    assert "ends in a newline" in body["detail"]
    assert office.fingerprint() == stored


VISIT = {
    "entry_id": "v-1",
    "at": "2026-11-28T04:00:00Z",
    "by": "u-1",
    "summary": "Both households met at the drain.",
    "attendees": ["p-1", "p-2\n"],
}
SIGNATURE = {
    "signer": "p-1",
    "signed_at": "2026-11-28T04:00:00Z",
    "content_hash": "ab" * 32 + "\n",
    "signature": "AAAA",
}


@pytest.mark.parametrize(
    ("record_type", "set_", "op", "where"),
    [
        ("case", {}, Add(field="parties", value="p-1\n"), "ops[0].value"),
        ("case", {}, Append(field="visits", entry=VISIT), "ops[0].entry.attendees[1]"),
        ("agreement", {"case": "k-1\n"}, None, "set.case"),
        ("agreement", {"required_signers": ["p-1", "p-2\n"]}, None, "set.required_signers[1]"),
        ("agreement", {}, Append(field="signatures", entry=SIGNATURE), "content_hash"),
    ],
)
def test_an_id_or_hash_ending_in_a_newline_inside_a_value_is_rejected(
    office, record_type, set_, op, where
):
    # Inside values, as in a change's own ids: `$` lets a final newline through, and the
    # office's receipts and signatures join ids and hashes into lines.
    phone = office.enroll("mediator")
    record_id, first = {
        "case": ("k-1", {"title": "Drains", "location": GONGSHU}),
        "agreement": ("a-1", {"terms": "The Wangs mend the drain by Friday."}),
    }[record_type]
    phone.push([phone.change(record_type, record_id, first)], "b-0")
    stored = [office.store.states([(record_type, record_id)])]
    change = phone.change(record_type, record_id, set_, [op] if op else [])
    (result,) = decode(phone.push([change]))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "invalid_value")
    assert f"{where} ends in a newline" in result["detail"]
    assert [office.store.states([(record_type, record_id)])] == stored
    (held,) = office.store.db.execute("SELECT change_id FROM quarantine").fetchall()
    assert held == (change.change_id,)


def test_a_value_ending_in_a_newline_may_still_be_removed(office):
    # States stored before the check may hold one; taking it out must stay possible.
    phone = office.enroll("mediator")
    change = phone.change(
        "case", "k-1", {"title": "Drains"}, [Remove(field="parties", value="p-1\n")]
    )
    (result,) = decode(phone.push([change]))["results"]
    assert result["status"] == "applied"
