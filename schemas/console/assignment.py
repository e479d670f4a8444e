"""The console's assignment pages: who mediates a case, deadlines by category, overdue cases."""

from __future__ import annotations

import msgspec

from schemas.console.cases import CaseRow


class MediatorChoice(msgspec.Struct, frozen=True, kw_only=True):
    """A mediator a supervisor may assign: one whose org units cover the record's."""

    user_id: str
    name: str
    org_units: list[str]
    left: bool = False  # disabled: they left the office, so reassign their cases


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    case_id: str
    title: str
    org_unit: str | None
    mediators: list[MediatorChoice]  # assigned now (a user no longer in the directory: no name)
    candidates: list[MediatorChoice]  # mediators covering the case's org unit, not yet assigned


class AssignRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Add and remove mediators in one change; the reason goes to the audit log."""

    reason: str
    add: list[str] = []
    remove: list[str] = []


class Deadline(msgspec.Struct, frozen=True, kw_only=True):
    category: str
    days: int  # a case of this category is due this many days after the office received it


class DeadlineList(msgspec.Struct, frozen=True, kw_only=True):
    deadlines: list[Deadline]
    # Categories of cases in the user's view that have no deadline yet.
    without_deadline: list[str]


class DeadlineRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Set a category's deadline, or remove it with `days` null."""

    category: str
    reason: str
    days: int | None = None


class OverdueRow(msgspec.Struct, frozen=True, kw_only=True):
    case: CaseRow
    days_overdue: int  # whole days past `case.due`


class OverdueList(msgspec.Struct, frozen=True, kw_only=True):
    cases: list[OverdueRow]  # most overdue first
    total: int
    offset: int
    limit: int
    today: str  # ISO date the queue was worked out for (the office's clock, UTC)
