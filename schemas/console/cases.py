"""The console's cases: the filtered list and one case with its timeline."""

from __future__ import annotations

from typing import Any

import msgspec


class CaseRow(msgspec.Struct, frozen=True, kw_only=True):
    case_id: str
    title: str
    status: str
    org_unit: str | None
    category: str
    mediators: list[str]
    households: int
    priority: str
    due: str | None  # ISO date: the case's own, else from its category's deadline
    overdue: bool
    received_ms: int


class CaseList(msgspec.Struct, frozen=True, kw_only=True):
    cases: list[CaseRow]
    total: int  # matching the filters
    by_status: dict[str, int]  # matching the filters other than status
    filters: dict[str, str]
    offset: int
    limit: int
    names: dict[str, str] = {}  # the display names of the mediators listed, by user id


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    change_id: str
    device_id: str
    user_id: str | None  # the device's user (None for the office's own changes)
    user_name: str | None
    hlc: int
    made_at: str  # when its device made it, on the office's clock, to the minute
    status: str  # applied / conflict
    set: dict[str, Any]
    ops: list[dict[str, Any]]
    # The change's bytes hash into the manifest its device signed for its batch.
    signature_verified: bool
    why_not: str = ""
    readable: bool = True  # False: its bytes no longer decode as a change (shown as kept)


class Repeat(msgspec.Struct, frozen=True, kw_only=True):
    case_id: str
    party_id: str
    matched_by: list[str]
    strong: bool


class CasePage(msgspec.Struct, frozen=True, kw_only=True):
    case_id: str
    case: dict[str, Any]  # the materialised `Case`
    parties: dict[str, dict[str, Any]]
    due: str | None
    overdue: bool
    open_conflicts: list[dict[str, Any]]
    timeline: list[TimelineEntry]
    repeats: list[Repeat]
    names: dict[str, str] = {}  # the display names of the case's mediators, by user id
