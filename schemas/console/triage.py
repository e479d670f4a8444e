"""The console's early-warning triage: warnings grouped by place and category, and the answers."""

from __future__ import annotations

import msgspec

from schemas.console.assignment import MediatorChoice


class WarningRow(msgspec.Struct, frozen=True, kw_only=True):
    warning_id: str
    status: str
    org_unit: str | None
    category: str
    severity: str
    description: str
    people_affected: int
    observed_at: str | None  # ISO timestamp the informant gave, if any
    informant: str | None  # the informant's pseudonym, never who they are
    response: str  # the office's answer, as the informant's device shows it
    case_id: str | None  # the case it became
    received_ms: int  # when the office first received it
    received_at: str  # the same, ISO in UTC to the minute


class WarningGroup(msgspec.Struct, frozen=True, kw_only=True):
    """New warnings of one place and category received within `group_days` of the first."""

    org_unit: str | None
    category: str
    warnings: list[WarningRow]  # newest first
    informants: int  # distinct pseudonyms among them
    first_ms: int
    last_ms: int


class WarningList(msgspec.Struct, frozen=True, kw_only=True):
    groups: list[WarningGroup]  # the new warnings (open or triaged), newest group first
    new_total: int  # new warnings in view (the groups hold at most `new_limit` of them)
    new_limit: int
    handled: list[WarningRow]  # converted or dismissed, newest first, a page at a time
    handled_total: int
    offset: int
    limit: int
    group_days: int


class WarningPage(msgspec.Struct, frozen=True, kw_only=True):
    warning: WarningRow
    group: list[WarningRow]  # the other new warnings grouped with it
    mediators: list[MediatorChoice]  # whom a case made from it may be assigned to
    suggested_title: str
    group_days: int


class ConvertRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Make a case of a warning (and of `also`, warnings of the same place and category)."""

    mediator: str  # user id of the mediator to assign
    reply: str  # the answer every converted warning's informant receives
    title: str = ""  # of the new case; derived from the warning when empty
    also: list[str] = []


class DismissRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reply: str
    also: list[str] = []


class Triaged(msgspec.Struct, frozen=True, kw_only=True):
    warnings: list[str]
    status: str  # converted / dismissed
    case_id: str | None = None  # the new case, when converted
