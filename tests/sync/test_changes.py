"""Both forms of a change's bytes decode to the same change (PROTOCOL.md section 4)."""

import msgspec
import pytest
from hypothesis import given, settings

from schemas import Change
from sync import signing
from sync.changes import decode_change, encode_change
from tests.schemas.test_roundtrip import changes


@settings(max_examples=500, deadline=None)
@given(changes)
def test_the_compact_and_keyed_forms_decode_to_the_same_change(change):
    compact = encode_change(change)
    keyed = msgspec.msgpack.encode(change)
    assert decode_change(compact) == change == decode_change(keyed)
    assert type(decode_change(compact)) is Change
    assert len(compact) < len(keyed)


def test_a_compact_change_from_a_newer_client_may_carry_more_at_its_end():
    fields = ["c-1", "case", "k-1", "dev-a", 5, {}, {"title": "Drains"}, [], "later"]
    change = decode_change(msgspec.msgpack.encode(fields))
    assert (change.change_id, change.set, change.ops) == ("c-1", {"title": "Drains"}, [])


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (msgspec.msgpack.encode(["c 1", "case", "k-1", "dev-a", 5]), "$[0]"),
        (msgspec.msgpack.encode(["c-1", "case", "k-1", "dev-a", -5]), "$[4]"),
        (msgspec.msgpack.encode({"change_id": "c-1"}), "record_type"),
        (b"", "truncated"),
    ],
)
def test_a_bad_change_names_what_is_wrong(raw, path):
    with pytest.raises(msgspec.DecodeError, match=path.replace("$", r"\$").replace("[", r"\[")):
        decode_change(raw)


def test_signed_digests_reads_batch_and_push_messages_for_their_device_and_batch_only():
    raws = [b"one", b"two"]
    digests = [signing.digest(b"one"), signing.digest(b"two")]
    v1 = signing.batch_message("dev-a", "b-1", raws)
    v2 = signing.push_message("dev-a", "b-1", 1795000000123, raws)
    assert signing.signed_digests(v1, "dev-a", "b-1") == digests
    assert signing.signed_digests(v2, "dev-a", "b-1") == digests
    assert signing.signed_digests(v2, "dev-b", "b-1") is None
    assert signing.signed_digests(v2, "dev-a", "b-2") is None
    assert signing.signed_digests(v2[:-1], "dev-a", "b-1") is None
    assert signing.signed_digests(v2.replace(b"123\n", b"12x\n"), "dev-a", "b-1") is None
