"""The console's quarantine: rejected changes in view, acknowledged or re-applied."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.console.conflicts import Author


class QuarantinedView(msgspec.Struct, frozen=True, kw_only=True):
    change_id: str
    record_type: str
    record_id: str
    exists: bool  # the record exists (else the change would have created it)
    title: str  # the record's title if it exists, else ""
    link: str | None
    author: Author
    reason: str  # the machine reason code (PROTOCOL.md section 6)
    detail: str
    set: dict[str, Any]  # what the change tried to write
    ops: list[dict[str, Any]]
    hlc: int
    made_ms: int  # when the device made it, by its clock (hlc >> 16)
    received_ms: int | None  # when its batch reached the office
    received: str  # the same as a date-time in UTC, or ""
    acknowledged_ms: int | None
    acknowledged_by: str | None  # a user id


class Reapplied(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a re-applied change."""

    change_id: str
    status: str  # applied / conflict, or rejected (back in quarantine)
    seq: int | None = None
    reason: str | None = None  # why it was rejected again
    detail: str | None = None


class QuarantineList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[QuarantinedView]
    total: int
    all: bool  # acknowledged ones included
    offset: int
    limit: int
    # The outcome of a re-apply just made (the page after the form), if any.
    reapplied: Reapplied | None = None


class AcknowledgeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    change_id: str


class ReapplyRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    change_id: str
    reason: str  # what was fixed, for the audit log


class Acknowledged(msgspec.Struct, frozen=True, kw_only=True):
    change_id: str
    acknowledged_ms: int
    acknowledged_by: str
