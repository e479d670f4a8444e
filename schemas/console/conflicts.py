"""The console's conflicts queue: open conflicts in view, and how a supervisor settles one."""

from __future__ import annotations

from typing import Any

import msgspec


class Author(msgspec.Struct, frozen=True, kw_only=True):
    """Who wrote a value: a device and its user, or the office (console, countersignature)."""

    device_id: str
    user_id: str | None  # the device's user; for the office, the supervisor if known
    user_name: str | None  # an informant shows as their pseudonym in both (never their name)
    office: bool  # made by the office itself, not pushed by a device


class CandidateView(msgspec.Struct, frozen=True, kw_only=True):
    index: int  # what `SettleRequest.choice` names to pick this value
    value: Any
    shown: str  # the value as text
    author: Author
    change_id: str
    hlc: int
    at_ms: int  # the wall time in the stamp (hlc >> 16), by the author's clock
    at: str  # the same, as a date-time in UTC


class ConflictView(msgspec.Struct, frozen=True, kw_only=True):
    record_type: str
    record_id: str
    field: str  # `_record` for a record deleted while others edited it
    kind: str  # value / status / deleted
    title: str  # the record's title (or what stands for one)
    link: str | None  # the record's console page, if it has one
    winner: Any  # what everyone sees until it is settled
    winner_shown: str
    version: int  # the conflict's last change (seq): a settlement names it
    opened_seq: int
    candidates: list[CandidateView]
    # What `SettleRequest.choice` may be: candidate indexes and "custom",
    # or "restore" / "delete" for a deletion.
    choices: list[str]


class ConflictList(msgspec.Struct, frozen=True, kw_only=True):
    conflicts: list[ConflictView]
    total: int
    offset: int
    limit: int


class SettleRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settle one open conflict: pick a candidate, write a value, or restore/delete."""

    record_type: str
    record_id: str
    field: str
    choice: int | str  # a candidate index, "custom" (with `value`), "restore" or "delete"
    reason: str
    value: Any = None
    # The `version` the supervisor saw; if given, a conflict that changed since is refused.
    version: int | None = None


class Settled(msgspec.Struct, frozen=True, kw_only=True):
    record_type: str
    record_id: str
    field: str
    change_id: str  # the office's settling change
    seq: int | None
    status: str  # applied, or conflict if another conflict of the record remains
