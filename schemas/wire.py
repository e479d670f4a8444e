"""HTTP messages of the sync protocol (PROTOCOL.md, sections 8–11)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.changes import ChangeResult
from schemas.records import Id

Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Signature64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
# A request's own id, used once: as random as the Lianxin-Nonce header of version 1.
Nonce = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{16,64}\Z")]
Millis = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Cursor = Annotated[str, msgspec.Meta(max_length=200)]
# Bytes of one change, encoded (PROTOCOL.md section 11): offices refuse a batch holding a
# larger one, and clients make none, since a change no batch can carry jams the outbox.
MAX_CHANGE_BYTES = 1024 * 1024


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error answer: a stable machine `error` code and a human `detail`."""

    error: str
    detail: str = ""


class OfficeInfo(msgspec.Struct, frozen=True, kw_only=True):
    office_id: str
    signing_key: bytes
    kem_key: bytes
    server_time_ms: int
    # The key id that envelopes sealed to `kem_key` name (PROTOCOL.md section 14).
    kem_key_id: str = ""
    # Since when `kem_key` is current, and the office's signature over both
    # (`sync.signing.office_key_message`): a device learns a rotated key only from the
    # office it enrolled with, and never goes back to an older one.
    kem_key_since_ms: int = 0
    kem_key_signature: bytes = b""


class EnrollRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    signing_key: Key32
    kem_key: Key32
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""
    proof: Signature64


class Enrollment(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    user_id: str
    role: str
    org_units: list[str]
    office: OfficeInfo
    # An informant's pseudonym: the only `informant` value its warnings may carry.
    pseudonym: str = ""


class PushRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A batch: each change as its exact msgpack bytes, and the batch signature."""

    batch_id: Id
    changes: list[bytes]
    signature: Signature64


class SignedPush(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Push version 2: a batch and its request in one signed array (PROTOCOL.md section 11)."""

    device_id: Id
    batch_id: Id
    timestamp_ms: Millis
    changes: list[bytes]
    signature: Signature64


class PushResponse(msgspec.Struct, frozen=True, kw_only=True):
    batch_id: str
    results: list[ChangeResult]


# A pull from this cursor gets every record the device may see as the office holds it
# now (`PulledState`), instead of its history: what a device holding nothing asks for.
STATES_CURSOR = "states"


class PullRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cursor: Cursor | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] = 1000


class Pushed(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The newest change of one pushed batch the office accepted, where it logged it.

    A device sends those of every batch answered since a pull last passed them:
    the cursor binds only what the device pulled, so this is what tells it that
    an office restored from a backup lost its changes (PROTOCOL.md section 12).
    """

    seq: Annotated[int, msgspec.Meta(ge=1, le=2**53)]
    change_id: Id


# The most `Pushed` a pull may name. A device pulls, naming those it keeps, before each
# batch: it keeps more only against an office that checks none, and then the newest.
MAX_PUSHED = 1000


class SignedPull(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Pull version 2: a pull request signed in one array (PROTOCOL.md section 12)."""

    device_id: Id
    request_id: Nonce
    timestamp_ms: Millis
    cursor: Annotated[Cursor, msgspec.Meta(min_length=1)] | None  # null, never empty
    limit: Annotated[int, msgspec.Meta(ge=1)]
    signature: Signature64
    # Last, so that a pull of six elements, from before it, still decodes; and left out
    # when empty (`sync.signing.encode_pull`).
    pushed: Annotated[list[Pushed], msgspec.Meta(max_length=MAX_PUSHED)] = []


class PulledChange(msgspec.Struct, frozen=True, kw_only=True, tag="change", omit_defaults=True):
    """An accepted change as its author sent it; `order` only when the server clamped it."""

    seq: int
    change: bytes
    order: int | None = None


# Why a record left a device's view: its access was taken back, or its case was erased.
EvictionReason = Literal["access_removed", "erased"]


class Eviction(msgspec.Struct, frozen=True, kw_only=True, tag="evict"):
    """The record left this device's view: delete the local copy."""

    seq: int
    record_type: str
    record_id: str
    reason: EvictionReason


class PulledState(msgspec.Struct, frozen=True, kw_only=True, tag="state"):
    """A record as the office holds it now: its merge state (`schemas.state.RecordState`)
    as MessagePack bytes, sent instead of its history to a pull from cursor "states".
    `seq` is where that pull began: changes logged after it follow as changes."""

    seq: int
    state: bytes


PulledItem = PulledChange | Eviction | PulledState


class PullPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[PulledItem]
    cursor: str
    has_more: bool
    server_time_ms: int
    # The office's current KEM key, vouched for as in `OfficeInfo`: after a rotation,
    # devices seal to it from now on.
    kem_key_id: str = ""
    kem_key: bytes = b""
    kem_key_since_ms: int = 0
    kem_key_signature: bytes = b""
