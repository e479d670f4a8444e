"""Early-warning triage: the warnings in a supervisor's view, grouped, and the office's answer.

New warnings (open or triaged) come first, newest first, grouped: reports of
the same place (org unit) and category received within `GROUP_DAYS` of the
group's first report are one group, since several informants reporting the
same thing is one brewing dispute, not several. Informants appear by their
pseudonym alone.

A supervisor who sees a warning answers it in one of two ways, for it and
for warnings of the same place and category (its group):

- **convert**: the office creates a case `k-<12 hex>` (place, category and
  summary from the warning, status `assigned`, the chosen mediator, the
  warnings linked), then sets each warning `converted` with the case and the
  reply. One transaction: either all of it or nothing.
- **dismiss**: each warning `dismissed`, with the reply.

Each is an audited office change (`server.console.actions`); the informant's
device receives the status and the reply on its next pull, the mediator's
the case and the warnings it links.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery

from schemas.changes import Add, Op
from schemas.console.triage import (
    ConvertRequest,
    DismissRequest,
    Triaged,
    WarningGroup,
    WarningList,
    WarningPage,
    WarningRow,
)
from schemas.records import EarlyWarning
from schemas.state import RecordState
from server.console import times
from server.console.actions import office_change
from server.console.assignment import mediators_covering
from server.console.cases import PAGE, visible
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
)
from server.service import SyncService
from server.storage.directory import User
from sync.access import org_unit
from sync.errors import InvalidAction, UnknownRecord
from sync.merge import is_deleted, materialize

GROUP_DAYS = 3
NEW = ("open", "triaged")
HANDLED = ("converted", "dismissed")
# At most this many new warnings are grouped on one page; the rest wait their turn.
NEW_LIMIT = 500
PRIORITY = {"low": "low", "medium": "normal", "high": "high", "critical": "urgent"}
DAY_MS = 24 * 3600 * 1000
FROM = (
    " FROM warning_index wi JOIN access a ON a.user_id = :user AND a.record_type = 'warning'"
    " AND a.record_id = wi.warning_id JOIN records r ON r.record_type = 'warning'"
    " AND r.record_id = wi.warning_id AND NOT r.deleted"  # a deleted warning waits for no one
)
COLUMNS = "SELECT wi.warning_id, wi.received_ms"

# The audit log's reason for an answer. The reply itself is the informant's to read and
# may name people: it is sealed in the warning's `response`, never put in the clear log.
IN_RESPONSE = "answered the informant (the reply is in the warning's response)"


def _rows(service: SyncService, found: list[tuple[str, int]]) -> list[WarningRow]:
    """The warnings `(id, received_ms)` as rows, opened from their states."""
    states = service.store.states(("warning", warning_id) for warning_id, _ in found)
    rows = []
    for warning_id, received_ms in found:
        state = states.get(("warning", warning_id))
        if state is not None:
            rows.append(_row(warning_id, state, received_ms, service.settings.zone))
    return rows


def _row(warning_id: str, state: RecordState, received_ms: int, zone: ZoneInfo) -> WarningRow:
    warning = materialize(state)
    assert isinstance(warning, EarlyWarning)
    return WarningRow(
        warning_id=warning_id,
        status=warning.status,
        org_unit=org_unit(warning.location),
        category=warning.category,
        severity=warning.severity,
        description=warning.description,
        people_affected=warning.people_affected,
        observed_at=warning.observed_at.isoformat() if warning.observed_at else None,
        informant=warning.informant,
        response=warning.response,
        case_id=warning.case,
        received_ms=received_ms,
        received_at=times.minute(received_ms, zone),
    )


def group(rows: list[WarningRow], days: int = GROUP_DAYS) -> list[WarningGroup]:
    """Warnings of one place and category received within `days` of the group's first.

    A warning without a place is a group of its own. Groups come newest
    first (by their newest warning), and so do the warnings in each.
    """
    window = days * DAY_MS
    grouped: list[list[WarningRow]] = []
    current: dict[tuple[str, str], list[WarningRow]] = {}
    for row in sorted(rows, key=lambda r: (r.received_ms, r.warning_id)):
        key = (row.org_unit or "", row.category)
        members = current.get(key)
        if row.org_unit and members and row.received_ms - members[0].received_ms <= window:
            members.append(row)
            continue
        members = [row]
        grouped.append(members)
        if row.org_unit:
            current[key] = members
    groups = [
        WarningGroup(
            org_unit=members[0].org_unit,
            category=members[0].category,
            warnings=members[::-1],
            informants=len({m.informant for m in members if m.informant}),
            first_ms=members[0].received_ms,
            last_ms=members[-1].received_ms,
        )
        for members in grouped
    ]
    return sorted(groups, key=lambda g: (g.last_ms, g.warnings[0].warning_id), reverse=True)


def warning_list(service: SyncService, user_id: str, offset: int = 0) -> WarningList:
    """The warnings `user_id` may see: the new ones grouped, then a page of handled ones."""
    params: dict[str, Any] = {"user": user_id}
    new_where = f" WHERE wi.status IN {NEW}"
    handled_where = f" WHERE wi.status IN {HANDLED}"
    order = " ORDER BY wi.received_ms DESC, wi.warning_id LIMIT :limit OFFSET :offset"
    with service.store.snapshot() as db:
        (new_total,) = db.execute(f"SELECT count(*){FROM}{new_where}", params).fetchone()
        (handled_total,) = db.execute(f"SELECT count(*){FROM}{handled_where}", params).fetchone()
        new = db.execute(
            f"{COLUMNS}{FROM}{new_where}{order}", {**params, "limit": NEW_LIMIT, "offset": 0}
        ).fetchall()
        handled = db.execute(
            f"{COLUMNS}{FROM}{handled_where}{order}", {**params, "limit": PAGE, "offset": offset}
        ).fetchall()
        return WarningList(
            groups=group(_rows(service, new)),
            new_total=new_total,
            new_limit=NEW_LIMIT,
            handled=_rows(service, handled),
            handled_total=handled_total,
            offset=offset,
            limit=PAGE,
            group_days=GROUP_DAYS,
        )


def _visible_warning(service: SyncService, user_id: str, warning_id: str) -> EarlyWarning:
    key = ("warning", warning_id)
    state = service.store.states([key]).get(key)
    # A deleted warning has left every list: nothing may be done with it but restore it.
    if state is None or is_deleted(state) or not visible(service, user_id, *key):
        raise UnknownRecord(_("no such warning in your view"))
    warning = materialize(state)
    assert isinstance(warning, EarlyWarning)
    return warning


def suggested_title(warning: EarlyWarning) -> str:
    """A case title from a warning: its category and the start of its description."""
    first = (warning.description.strip().splitlines() or [""])[0]
    title = f"{warning.category}: {first}" if warning.category else first
    return title if len(title) <= 80 else title[:79] + "…"


def warning_page(service: SyncService, user_id: str, warning_id: str) -> WarningPage:
    """One warning, the new warnings grouped with it, and whom a case of it may go to."""
    warning = _visible_warning(service, user_id, warning_id)
    with service.store.snapshot() as db:
        (received_ms,) = db.execute(
            "SELECT received_ms FROM warning_index WHERE warning_id = ?", [warning_id]
        ).fetchone() or (service.wall_ms(),)
    state = service.store.states([("warning", warning_id)])[("warning", warning_id)]
    row = _row(warning_id, state, received_ms, service.settings.zone)
    mates: list[WarningRow] = []
    if row.status in NEW:
        for found in warning_list(service, user_id).groups:
            if any(w.warning_id == warning_id for w in found.warnings):
                mates = [w for w in found.warnings if w.warning_id != warning_id]
    return WarningPage(
        warning=row,
        group=mates,
        mediators=mediators_covering(service, row.org_unit) if row.status in NEW else [],
        suggested_title=suggested_title(warning),
        group_days=GROUP_DAYS,
    )


def _answerable(
    service: SyncService, user: User, warning_id: str, also: list[str]
) -> dict[str, EarlyWarning]:
    """The new warnings to answer, each in view, all of one place and category as the first."""
    ids = list(dict.fromkeys([warning_id, *(a for a in also if a)]))
    warnings = {i: _visible_warning(service, user.user_id, i) for i in ids}
    first = warnings[warning_id]
    for warning in warnings.values():
        if warning.status not in NEW:
            raise InvalidAction(_("one of these warnings was answered already; reload the page"))
        same_place = org_unit(warning.location) == org_unit(first.location)
        if not same_place or warning.category != first.category:
            raise InvalidAction(_("warnings answered together must be of one place and category"))
    return warnings


def _reply(reply: str) -> str:
    if not reply.strip():
        raise InvalidAction(_("write the reply the informant will receive"))
    return reply.strip()


def new_case_id() -> str:
    """A new case's id: random, saying nothing about anyone (PROTOCOL.md section 15)."""
    return f"k-{uuid.uuid4().hex[:12]}"


def convert(
    service: SyncService,
    user: User,
    warning_id: str,
    mediator: str,
    reply: str,
    title: str = "",
    also: list[str] | None = None,
) -> Triaged:
    """Make one case of a warning (and `also` those of its place and category), assigned
    to `mediator`, and answer each warning with `reply`. All or nothing.

    `UnknownRecord` for a warning not in the user's view; `InvalidAction` for
    an answered warning, one of another place or category, a mediator whose
    org units do not cover the place, an empty reply, or a title too long.
    """
    reply = _reply(reply)
    with service.store.transaction():
        warnings = _answerable(service, user, warning_id, also or [])
        first = warnings[warning_id]
        unit = org_unit(first.location)
        if mediator not in {m.user_id for m in mediators_covering(service, unit)}:
            raise InvalidAction(_("choose a mediator whose area covers the warning's place"))
        title = title.strip() or suggested_title(first)
        if len(title) > 200:
            raise InvalidAction(_("a case title has at most 200 characters"))
        case_id = new_case_id()
        fields: dict[str, Any] = {
            "title": title,
            "category": first.category,
            "summary": first.description,
            "location": msgspec.to_builtins(first.location),
            "priority": PRIORITY[max(warnings.values(), key=_severity).severity],
            "status": "assigned",
        }
        ops: list[Op] = [
            Add(field="mediators", value=mediator),
            *(Add(field="warnings", value=w) for w in warnings),
        ]
        office_change(service, user, "case", case_id, "convert_warning", IN_RESPONSE, fields, ops)
        for answered in warnings:
            office_change(
                service,
                user,
                "warning",
                answered,
                "convert_warning",
                IN_RESPONSE,
                {"status": "converted", "case": case_id, "response": reply},
            )
    return Triaged(warnings=list(warnings), status="converted", case_id=case_id)


def _severity(warning: EarlyWarning) -> int:
    return list(PRIORITY).index(warning.severity)


def dismiss(
    service: SyncService, user: User, warning_id: str, reply: str, also: list[str] | None = None
) -> Triaged:
    """Dismiss a warning (and `also` those of its place and category) with `reply`.

    Errors as for `convert`.
    """
    reply = _reply(reply)
    with service.store.transaction():
        warnings = _answerable(service, user, warning_id, also or [])
        for answered in warnings:
            office_change(
                service,
                user,
                "warning",
                answered,
                "dismiss_warning",
                IN_RESPONSE,
                {"status": "dismissed", "response": reply},
            )
    return Triaged(warnings=list(warnings), status="dismissed")


@get("/console/warnings", sync_to_thread=True, include_in_schema=False)
def warnings_page(request: Request, offset: FromQuery[int] = 0) -> Response:
    current = signed_in(request, "supervisor")
    data = warning_list(service_of(request), current.user.user_id, page_offset(offset))
    return render(request, current, "warnings.html", data=data)


@get("/api/warnings", sync_to_thread=True, summary="Warnings in view: new ones grouped first")
def warnings_api(request: Request, offset: FromQuery[int] = 0) -> WarningList:
    current = signed_in(request, "supervisor")
    return warning_list(service_of(request), current.user.user_id, page_offset(offset))


@get("/console/warnings/{warning_id:str}", sync_to_thread=True, include_in_schema=False)
def warning_page_html(request: Request, warning_id: FromPath[str]) -> Response:
    current = signed_in(request, "supervisor")
    data = warning_page(service_of(request), current.user.user_id, warning_id)
    return render(request, current, "warning.html", data=data)


@get(
    "/api/warnings/{warning_id:str}",
    sync_to_thread=True,
    summary="One warning, its group, and the mediators a case of it may go to",
)
def warning_api(request: Request, warning_id: FromPath[str]) -> WarningPage:
    current = signed_in(request, "supervisor")
    return warning_page(service_of(request), current.user.user_id, warning_id)


@post("/console/warnings/{warning_id:str}/convert", include_in_schema=False)
async def convert_form(request: Request, warning_id: FromPath[str]) -> Response:
    current, fields, form = await signed_form(request, "supervisor")
    work = functools.partial(
        convert,
        service_of(request),
        current.user,
        warning_id,
        fields.get("mediator", ""),
        fields.get("reply", ""),
        fields.get("title", ""),
        [str(a) for a in form.getall("also", [])],
    )
    done = await anyio.to_thread.run_sync(work)
    return back_to(f"/console/cases/{done.case_id}")


@post("/console/warnings/{warning_id:str}/dismiss", include_in_schema=False)
async def dismiss_form(request: Request, warning_id: FromPath[str]) -> Response:
    current, fields, form = await signed_form(request, "supervisor")
    work = functools.partial(
        dismiss,
        service_of(request),
        current.user,
        warning_id,
        fields.get("reply", ""),
        [str(a) for a in form.getall("also", [])],
    )
    await anyio.to_thread.run_sync(work)
    return back_to("/console/warnings")


@post(
    "/api/warnings/{warning_id:str}/convert",
    status_code=200,
    summary="Make a case of a warning (and of its group) for a mediator (X-CSRF-Token header)",
    dependencies=documents_body(ConvertRequest),
)
async def convert_api(request: Request, warning_id: FromPath[str]) -> Triaged:
    current = await signed_call(request, "supervisor")
    asked = await json_body(request, ConvertRequest)
    work = functools.partial(
        convert,
        service_of(request),
        current.user,
        warning_id,
        asked.mediator,
        asked.reply,
        asked.title,
        asked.also,
    )
    return await anyio.to_thread.run_sync(work)


@post(
    "/api/warnings/{warning_id:str}/dismiss",
    status_code=200,
    summary="Dismiss a warning (and its group) with a reply (X-CSRF-Token header)",
    dependencies=documents_body(DismissRequest),
)
async def dismiss_api(request: Request, warning_id: FromPath[str]) -> Triaged:
    current = await signed_call(request, "supervisor")
    asked = await json_body(request, DismissRequest)
    work = functools.partial(
        dismiss, service_of(request), current.user, warning_id, asked.reply, asked.also
    )
    return await anyio.to_thread.run_sync(work)


ROUTES = [
    warnings_page,
    warnings_api,
    warning_page_html,
    warning_api,
    convert_form,
    dismiss_form,
    convert_api,
    dismiss_api,
]
