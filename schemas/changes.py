"""The sync types: a device's `Change` to one record and the server's answer.

A change is what one device did to one record at one moment:

    Change(change_id="c-1", record_type="case", record_id="k-9",
           device_id="dev-a", hlc=..., seen={"dev-b": ...},
           set={"title": "Drains overflow"}, ops=[Add(field="tags", value="drains")])

`hlc` with `device_id` is the change's *dot*, its identity in causal order.
`seen` is its causal context: for each device, the highest stamp of that
device's changes to this record that the editing device had applied. A
device's own earlier changes count as seen without being listed.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec

from schemas.records import Id

Stamp = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Add(msgspec.Struct, frozen=True, kw_only=True, tag="add", forbid_unknown_fields=True):
    """Add `value` to a set field."""

    field: str
    value: Any


class Remove(msgspec.Struct, frozen=True, kw_only=True, tag="remove", forbid_unknown_fields=True):
    """Remove `value` from a set field (only the adds this change had seen)."""

    field: str
    value: Any


class Append(msgspec.Struct, frozen=True, kw_only=True, tag="append", forbid_unknown_fields=True):
    """Append one entry to a log field."""

    field: str
    entry: Any


class Delete(msgspec.Struct, frozen=True, kw_only=True, tag="delete", forbid_unknown_fields=True):
    """Delete the record (a tombstone; its fields are kept)."""


class Restore(msgspec.Struct, frozen=True, kw_only=True, tag="restore", forbid_unknown_fields=True):
    """Undo a delete the device had seen."""


Op = Add | Remove | Append | Delete | Restore


class Change(msgspec.Struct, frozen=True, kw_only=True):
    change_id: Id
    record_type: Annotated[str, msgspec.Meta(max_length=32)]
    record_id: Id
    device_id: Id
    hlc: Stamp
    seen: Annotated[dict[Id, Stamp], msgspec.Meta(max_length=10_000)] = {}
    set: Annotated[dict[str, Any], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )
    ops: Annotated[list[Op], msgspec.Meta(max_length=1_000)] = []


class CompactChange(Change, frozen=True, array_like=True):
    """A `Change` encoded as an array in field order, without the keys (PROTOCOL.md section 4).

    Devices may send either form; `sync.changes.decode_change` reads both.
    """


class Reason(enum.StrEnum):
    """Why a change was rejected; stable machine codes (PROTOCOL.md lists them)."""

    UNKNOWN_RECORD_TYPE = "unknown_record_type"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_VALUE = "invalid_value"
    WRONG_OPERATION = "wrong_operation"
    ILLEGAL_TRANSITION = "illegal_transition"
    AGREEMENT_SEALED = "agreement_sealed"
    LOG_ENTRY_CONFLICT = "log_entry_conflict"
    STALE_STAMP = "stale_stamp"
    EMPTY_CHANGE = "empty_change"
    NOT_PERMITTED = "not_permitted"
    SIGNATURE_INVALID = "signature_invalid"
    CONTENT_MISMATCH = "signature_content_mismatch"
    SIGNER_NOT_REQUIRED = "signer_not_required"
    WITHDRAWAL_AFTER_EXECUTION = "withdrawal_after_execution"
    RECORD_ERASED = "record_erased"
    CHANGE_ID_TAKEN = "change_id_taken"


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One value in a conflict, with who wrote it and when."""

    value: Any
    device_id: str
    hlc: int
    change_id: str


class Conflict(msgspec.Struct, frozen=True, kw_only=True):
    """Concurrent writes kept for a human to settle.

    `kind` is `value` (a field written concurrently with different values),
    `status` (concurrent status transitions) or `deleted` (the record was
    deleted while `candidates` edited it). `winner` is the value shown until
    someone settles it.
    """

    record_type: str
    record_id: str
    field: str
    kind: Literal["value", "status", "deleted"]
    winner: Any
    candidates: list[Candidate]


class ChangeResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The server's answer for one change.

    `seq` is the change's place in the server change log (applied and
    conflict). A rejected change has a `reason` and is kept in quarantine.
    `clamped` says the change's stamp lay absurdly far in the future and was
    capped for ordering.
    """

    change_id: str
    status: Literal["applied", "duplicate", "conflict", "rejected"]
    seq: int | None = None
    reason: Reason | None = None
    detail: str | None = None
    conflicts: list[Conflict] = []
    clamped: bool = False
