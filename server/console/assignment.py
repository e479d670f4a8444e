"""Who mediates a case, how long each category of case may take, and the cases past it.

- Assigning: a supervisor adds and removes mediators of a case in view, in
  one office change with a reason (a mediator removed gets an eviction on
  their next pull; one added gets the whole case). Only mediators whose org
  units cover the case's may be added, and none who left the office (disabled).
- Deadlines: `deadlines` rows (category → days after the office received a
  case). They are office-wide: every list's due date derives from them
  (`DUE` in `server.console.cases`). Only supervisors change them; each
  change is audited.
- The overdue queue: the cases in view past their due date and still open,
  most overdue first, by the same SQL the case list filters with.
"""

from __future__ import annotations

import functools

import anyio.to_thread
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery

from schemas.changes import Add, Op, Remove
from schemas.console.assignment import (
    Assignment,
    AssignRequest,
    Deadline,
    DeadlineList,
    DeadlineRequest,
    MediatorChoice,
    OverdueList,
    OverdueRow,
)
from schemas.records import Case
from server.console.actions import logged, office_change
from server.console.cases import (
    DUE,
    FROM,
    OVERDUE,
    PAGE,
    ROW_COLUMNS,
    case_rows,
    dated,
    visible,
)
from server.console.web import (
    _,
    back_to,
    documents_body,
    json_body,
    page_offset,
    render,
    service_of,
    signed_call,
    signed_form,
    signed_in,
    whole_number,
)
from server.service import SyncService
from server.storage.directory import User
from sync.access import org_unit, within
from sync.errors import InvalidAction, UnknownRecord
from sync.merge import is_deleted, materialize

MAX_DEADLINE_DAYS = 3650


# -- mediators --------------------------------------------------------------------------


def mediators_covering(service: SyncService, unit: str | None) -> list[MediatorChoice]:
    """The mediators still at the office whose org units hold `unit` (none for a record
    without a place)."""
    return [
        MediatorChoice(user_id=user.user_id, name=user.name, org_units=user.org_units)
        for user in service.directory.users(role="mediator")
        if user.disabled_at_ms is None and within(unit, user.org_units)
    ]


def _choice(service: SyncService, user_id: str) -> MediatorChoice:
    user = service.directory.user(user_id)
    if user is None:
        return MediatorChoice(user_id=user_id, name="", org_units=[])
    return MediatorChoice(
        user_id=user_id,
        name=user.name,
        org_units=user.org_units,
        left=user.disabled_at_ms is not None,
    )


def _visible_case(service: SyncService, user_id: str, case_id: str) -> Case:
    key = ("case", case_id)
    state = service.store.states([key]).get(key)
    # A deleted case has left every list: nothing may be done with it but restore it.
    if state is None or is_deleted(state) or not visible(service, user_id, *key):
        raise UnknownRecord(_("no such case in your view"))
    case = materialize(state)
    assert isinstance(case, Case)
    return case


def assignment(service: SyncService, user_id: str, case_id: str) -> Assignment:
    """Who mediates the case and who else may; `UnknownRecord` if it is not in view."""
    case = _visible_case(service, user_id, case_id)
    unit = org_unit(case.location)
    return Assignment(
        case_id=case_id,
        title=case.title,
        org_unit=unit,
        mediators=[_choice(service, m) for m in sorted(case.mediators)],
        candidates=[
            m for m in mediators_covering(service, unit) if m.user_id not in case.mediators
        ],
    )


def assign(
    service: SyncService,
    user: User,
    case_id: str,
    add: list[str],
    remove: list[str],
    reason: str,
) -> list[str]:
    """Add and remove mediators of a case in one audited office change; the mediators after.

    `UnknownRecord` if the case is not in the user's view; `InvalidAction`
    without a reason, with nothing to do, to add someone who is not a
    mediator covering the case's org unit, or to remove someone not assigned.
    """
    if not reason.strip():
        raise InvalidAction(_("a reason is required"))
    with service.store.transaction():
        case = _visible_case(service, user.user_id, case_id)
        adding = [m for m in dict.fromkeys(add) if m and m not in case.mediators]
        removing = [m for m in dict.fromkeys(remove) if m and m not in adding]
        if not adding and not removing:
            raise InvalidAction(_("choose a mediator to add or remove"))
        allowed = {m.user_id for m in mediators_covering(service, org_unit(case.location))}
        for mediator in adding:
            if mediator not in allowed:
                raise InvalidAction(_("only a mediator of the case's area may be added"))
        for mediator in removing:
            if mediator not in case.mediators:
                raise InvalidAction(_("only a mediator assigned to the case may be removed"))
        ops: list[Op] = [
            *(Add(field="mediators", value=m) for m in adding),
            *(Remove(field="mediators", value=m) for m in removing),
        ]
        office_change(service, user, "case", case_id, "assign", reason, ops=ops)
        after = _visible_case(service, user.user_id, case_id)
    return sorted(after.mediators)


@get("/console/cases/{case_id:str}/mediators", sync_to_thread=True, include_in_schema=False)
def assignment_page(request: Request, case_id: FromPath[str]) -> Response:
    current = signed_in(request, "supervisor")
    data = assignment(service_of(request), current.user.user_id, case_id)
    return render(request, current, "assignment.html", data=data)


@get(
    "/api/cases/{case_id:str}/mediators",
    sync_to_thread=True,
    summary="A case's mediators and whom else it may be assigned to",
)
def assignment_api(request: Request, case_id: FromPath[str]) -> Assignment:
    current = signed_in(request, "supervisor")
    return assignment(service_of(request), current.user.user_id, case_id)


@post("/console/cases/{case_id:str}/mediators", include_in_schema=False)
async def assign_form(request: Request, case_id: FromPath[str]) -> Response:
    current, fields, form = await signed_form(request, "supervisor")
    work = functools.partial(
        assign,
        service_of(request),
        current.user,
        case_id,
        [fields.get("add", "")],
        [str(m) for m in form.getall("remove", [])],
        fields.get("reason", ""),
    )
    await anyio.to_thread.run_sync(work)
    return back_to(f"/console/cases/{case_id}")


@post(
    "/api/cases/{case_id:str}/mediators",
    status_code=200,
    summary="Add and remove a case's mediators (X-CSRF-Token header)",
    dependencies=documents_body(AssignRequest),
)
async def assign_api(request: Request, case_id: FromPath[str]) -> Assignment:
    current = await signed_call(request, "supervisor")
    asked = await json_body(request, AssignRequest)
    service = service_of(request)
    work = functools.partial(
        assign, service, current.user, case_id, asked.add, asked.remove, asked.reason
    )
    await anyio.to_thread.run_sync(work)
    return await anyio.to_thread.run_sync(assignment, service, current.user.user_id, case_id)


# -- deadlines --------------------------------------------------------------------------


def deadline_list(service: SyncService, user_id: str) -> DeadlineList:
    """Every category's deadline, and the categories of cases in view that have none."""
    with service.store.snapshot() as db:
        deadlines = [
            Deadline(category=category, days=days)
            for category, days in db.execute(
                "SELECT category, days FROM deadlines ORDER BY category"
            )
        ]
        without = [
            category
            for (category,) in db.execute(
                f"SELECT DISTINCT ci.category{FROM} WHERE d.category IS NULL"
                " AND coalesce(ci.category, '') != '' ORDER BY 1",
                {"user": user_id},
            )
        ]
        return DeadlineList(deadlines=deadlines, without_deadline=without)


def set_deadline(
    service: SyncService, user: User, category: str, days: int | None, reason: str
) -> None:
    """Set (or, with `days` None, remove) a category's deadline, audited.

    `InvalidAction` without a category or reason, or for days outside 1–3650.
    """
    category = category.strip()
    if not category or len(category) > 200:
        raise InvalidAction(_("name a category (at most 200 characters)"))
    if not reason.strip():
        raise InvalidAction(_("a reason is required"))
    if days is not None and not 1 <= days <= MAX_DEADLINE_DAYS:
        raise InvalidAction(_("a deadline is between 1 and 3650 days"))
    db = service.store.db
    with service.store.transaction():
        row = db.execute("SELECT days FROM deadlines WHERE category = ?", [category]).fetchone()
        before = row[0] if row else None
        if days is None:
            db.execute("DELETE FROM deadlines WHERE category = ?", [category])
        else:
            db.execute(
                "INSERT INTO deadlines (category, days) VALUES (?, ?)"
                " ON CONFLICT (category) DO UPDATE SET days = excluded.days",
                [category, days],
            )
        logged(
            service,
            user,
            "set_deadline",
            f"deadline/{category}",
            {"reason": reason, "days": days, "before": before},
        )


def _days(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    days = whole_number(text)
    if days is None:
        raise InvalidAction(_("a deadline is a whole number of days"))
    return days


@get("/console/deadlines", sync_to_thread=True, include_in_schema=False)
def deadlines_page(request: Request) -> Response:
    current = signed_in(request, "supervisor")
    data = deadline_list(service_of(request), current.user.user_id)
    return render(request, current, "deadlines.html", data=data)


@get("/api/deadlines", sync_to_thread=True, summary="Deadlines by case category")
def deadlines_api(request: Request) -> DeadlineList:
    current = signed_in(request, "supervisor")
    return deadline_list(service_of(request), current.user.user_id)


@post("/console/deadlines", include_in_schema=False)
async def deadline_form(request: Request) -> Response:
    current, fields, _form = await signed_form(request, "supervisor")
    days = None if "remove" in fields else _days(fields.get("days", ""))
    if days is None and "remove" not in fields:
        raise InvalidAction(_("give the number of days, or remove the deadline"))
    work = functools.partial(
        set_deadline,
        service_of(request),
        current.user,
        fields.get("category", ""),
        days,
        fields.get("reason", ""),
    )
    await anyio.to_thread.run_sync(work)
    return back_to("/console/deadlines")


@post(
    "/api/deadlines",
    status_code=200,
    summary="Set or remove a category's deadline (X-CSRF-Token header)",
    dependencies=documents_body(DeadlineRequest),
)
async def deadline_api(request: Request) -> DeadlineList:
    current = await signed_call(request, "supervisor")
    asked = await json_body(request, DeadlineRequest)
    service = service_of(request)
    work = functools.partial(
        set_deadline, service, current.user, asked.category, asked.days, asked.reason
    )
    await anyio.to_thread.run_sync(work)
    return await anyio.to_thread.run_sync(deadline_list, service, current.user.user_id)


# -- the overdue queue ------------------------------------------------------------------


def overdue_list(service: SyncService, user_id: str, offset: int = 0) -> OverdueList:
    """The open cases in view past their due date, most overdue first, a page at a time."""
    params = {"user": user_id, **dated(service)}
    with service.store.snapshot() as db:
        (total,) = db.execute(f"SELECT count(*){FROM} WHERE {OVERDUE}", params).fetchone()
        rows = db.execute(
            f"SELECT {ROW_COLUMNS}, CAST(julianday(:today) - julianday({DUE}) AS INTEGER)"
            f"{FROM} WHERE {OVERDUE} ORDER BY {DUE}, ci.received_ms, ci.case_id"
            " LIMIT :limit OFFSET :offset",
            {**params, "limit": PAGE, "offset": offset},
        ).fetchall()
        cases = [
            OverdueRow(case=row, days_overdue=found[-1])
            for row, found in zip(case_rows(service, rows), rows, strict=True)
        ]
        return OverdueList(
            cases=cases, total=total, offset=offset, limit=PAGE, today=params["today"]
        )


@get("/console/overdue", sync_to_thread=True, include_in_schema=False)
def overdue_page(request: Request, offset: FromQuery[int] = 0) -> Response:
    current = signed_in(request, "supervisor")
    data = overdue_list(service_of(request), current.user.user_id, page_offset(offset))
    return render(request, current, "overdue.html", data=data)


@get("/api/overdue", sync_to_thread=True, summary="Overdue cases in view, most overdue first")
def overdue_api(request: Request, offset: FromQuery[int] = 0) -> OverdueList:
    current = signed_in(request, "supervisor")
    return overdue_list(service_of(request), current.user.user_id, page_offset(offset))


ROUTES = [
    assign_form,
    assign_api,
    deadline_form,
    deadline_api,
    assignment_page,
    assignment_api,
    deadlines_page,
    deadlines_api,
    overdue_page,
    overdue_api,
]
