"""Who may see and write which record (PROTOCOL.md, "Visibility").

- informant: the records it created (its warnings) — their answers arrive
  in the same record.
- mediator: records it created, cases naming it in `mediators`, and the
  parties, agreements and warnings those cases link. Only a user whose role
  is mediator is assigned by `mediators`: anyone else named there sees nothing
  by it.
- supervisor: every record whose org unit lies inside one of theirs (a
  record without a location takes the org unit of a case linking it).
- admin: no case data over sync.

A device may write a record it may see, or create a new one, within its
role: informants write only warnings.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Iterable
from typing import NamedTuple

from schemas.changes import Add, Change, Reason
from schemas.records import Location
from schemas.state import RecordState
from sync.merge import materialize

WRITABLE_BY = {
    "informant": frozenset({"warning"}),
    "mediator": frozenset({"case", "warning", "agreement", "party"}),
    "supervisor": frozenset({"case", "warning", "agreement", "party"}),
    "admin": frozenset(),
}
LINK_FIELDS = {"parties": "party", "agreements": "agreement", "warnings": "warning"}
# The fields that decide who sees a record; a change to none of them keeps its readers.
VISIBILITY_FIELDS = frozenset({"location", "mediators", *LINK_FIELDS})


# Ids are strings; any other value is refused by merging (`invalid_value`), so the checks
# below pass it by rather than spell it out (a value nested a thousand deep has no str()).


def links_added(change: Change) -> list[tuple[str, str]]:
    """The records `change` links to its record (each would inherit its readers)."""
    return [
        (LINK_FIELDS[op.field], op.value)
        for op in change.ops
        if isinstance(op, Add)
        and op.field in LINK_FIELDS
        and change.record_type == "case"
        and isinstance(op.value, str)
    ]


def mediators_added(change: Change) -> list[str]:
    """The user ids `change` adds to its case's `mediators` (each would become a reader)."""
    return [
        op.value
        for op in change.ops
        if isinstance(op, Add) and op.field == "mediators" and isinstance(op.value, str)
    ]


def superseded(change: Change) -> tuple[str, str] | None:
    """The agreement `change` names in `supersedes` (executing it ends that one), if any."""
    old = change.set.get("supersedes") if change.record_type == "agreement" else None
    return ("agreement", old) if isinstance(old, str) and old else None


def changes_visibility(change: Change) -> bool:
    """Whether `change` may change who sees its record (or those it links)."""
    return not VISIBILITY_FIELDS.isdisjoint(change.set) or any(
        getattr(op, "field", None) in VISIBILITY_FIELDS for op in change.ops
    )


class Scope(NamedTuple):
    """What visibility needs to know of one record, read from its state."""

    org_unit: str | None
    named_users: frozenset[str]
    links: frozenset[tuple[str, str]]


def scope(state: RecordState) -> Scope:
    """The record's org unit, the users it names, and the records it links."""
    record = materialize(state, VISIBILITY_FIELDS)
    unit = org_unit(getattr(record, "location", None))
    named = frozenset(getattr(record, "mediators", ()))
    links = frozenset(
        (record_type, record_id)
        for field, record_type in LINK_FIELDS.items()
        for record_id in getattr(record, field, ())
    )
    return Scope(unit, named, links)


def location_refused(change: Change) -> tuple[Reason, str] | None:
    """Why a change's `location` cannot be taken, if it cannot: its steps would spell the
    path of another unit. Checked on what devices send, not on stored states, which must
    go on decoding as they are."""
    location = change.set.get("location")
    if not isinstance(location, dict):
        return None  # merging judges its type
    steps = [location.get(name) or "" for name in ("city", "district", "street", "community")]
    if any(isinstance(step, str) and "/" in step for step in steps):
        return Reason.INVALID_VALUE, "location: a step of the org-unit path cannot hold /"
    if any(not step and later for step, later in itertools.pairwise(steps)):
        # "Hangzhou", "", "Xihu" would lie in the district of Xihu.
        return Reason.INVALID_VALUE, "location: an empty step cannot come before a named one"
    return None


def org_unit(location: Location | None) -> str | None:
    """The org-unit path a location lies in: city/district/street/community."""
    if location is None:
        return None
    parts = [location.city, location.district, location.street, location.community]
    return "/".join(p for p in parts if p)


def within(org_unit: str | None, units: Iterable[str]) -> bool:
    """Whether `org_unit` is one of `units` or lies beneath one (by path segment)."""
    if org_unit is None:
        return False
    return any(org_unit == unit or org_unit.startswith(unit + "/") for unit in units)


def readers(
    creator: str | None,
    own: Scope,
    linking: Iterable[tuple[str | None, Scope]],
    supervisors: Iterable[tuple[str, list[str]]],
    *,
    mediators: Container[str],
) -> set[str]:
    """Every user who may see a record.

    `linking` are the (creator, scope) of the cases that link this record;
    `supervisors` are (user id, org units) of every supervisor; `mediators`
    holds the user ids whose role is mediator (at least those the scopes name).
    """

    # An informant or admin named in `mediators` (pushed before the office refused
    # that) must not read the case: "an informant can never read a case".
    def assigned(case: Scope) -> set[str]:
        return {user for user in case.named_users if user in mediators}

    users = {creator} if creator else set()
    users |= assigned(own)
    units = {own.org_unit} if own.org_unit else set()
    for case_creator, case_scope in linking:
        if case_creator:
            users.add(case_creator)
        users |= assigned(case_scope)
        if case_scope.org_unit:
            units.add(case_scope.org_unit)
    users |= {user for user, theirs in supervisors if any(within(u, theirs) for u in units)}
    return users
