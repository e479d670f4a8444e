"""Cases: the filtered list with counts, and one case with its whole signed timeline."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery

from schemas.changes import Change, Conflict
from schemas.console.cases import CaseList, CasePage, CaseRow, Repeat, TimelineEntry
from schemas.records import Case
from server.console import times
from server.console.web import page_offset, render, service_of, signed_in, whole_number
from server.service import SyncService
from server.storage import people
from sync import signing
from sync.changes import decode_change
from sync.clock import wall_of
from sync.errors import BadSignature, UnknownRecord
from sync.merge import materialize

PAGE = 50
OPEN_STATUSES = ("new", "assigned", "in_mediation")
# The due date a list shows: the case's own, else its category's deadline after receipt.
# Counted from the office's date the case came in (`:offset_ms`: its clock ahead of UTC).
DUE = (
    "coalesce(ci.due, date((ci.received_ms + :offset_ms) / 1000, 'unixepoch',"
    " '+' || d.days || ' days'))"
)
OVERDUE = f"({DUE} < :today AND ci.status IN {OPEN_STATUSES})"
# A deleted case (a tombstone, until restored) is in no list: `records.deleted` is kept
# current for that.
FROM = (
    " FROM case_index ci JOIN access a ON a.user_id = :user AND a.record_type = 'case'"
    " AND a.record_id = ci.case_id JOIN records r ON r.record_type = 'case'"
    " AND r.record_id = ci.case_id AND NOT r.deleted"
    " LEFT JOIN deadlines d ON d.category = ci.category"
)
# What a listed case shows, in `case_rows`' order (extra columns may follow).
ROW_COLUMNS = (
    "ci.case_id, ci.status, ci.org_unit, ci.category, ci.mediators, ci.households,"
    f" ci.priority, {DUE}, {OVERDUE}, ci.received_ms"
)
FILTERS = {
    "status": "ci.status = :status",
    "org_unit": "(ci.org_unit = :org_unit OR substr(ci.org_unit, 1, length(:org_unit) + 1)"
    " = :org_unit || '/')",
    "category": "ci.category = :category",
    "assignee": "EXISTS (SELECT 1 FROM json_each(ci.mediators) WHERE value = :assignee)",
    "overdue": OVERDUE,
    "group": "ci.households > 1",
}


def _(message: str) -> str:
    """Marks a message for translation; pages translate it when they show it."""
    return message


def today(service: SyncService) -> str:
    """The office's date now: a case is overdue once its due date is past on its clock."""
    return times.day(service.wall_ms(), service.settings.zone)


def dated(service: SyncService) -> dict[str, Any]:
    """The parameters `DUE` and `OVERDUE` need: the office's date and its clock's offset."""
    offset_ms = times.offset_ms(service.wall_ms(), service.settings.zone)
    return {"today": today(service), "offset_ms": offset_ms}


def case_list(
    service: SyncService, user_id: str, filters: dict[str, str], offset: int = 0
) -> CaseList:
    """The cases `user_id` may see that match `filters`, newest first, a page at a time."""
    given = {k: v for k, v in filters.items() if k in FILTERS and v}
    params = {**given, "user": user_id, **dated(service)}
    where = " AND ".join(["1", *(FILTERS[k] for k in given)])
    others = " AND ".join(["1", *(FILTERS[k] for k in given if k != "status")])
    with service.store.snapshot() as db:
        (total,) = db.execute(f"SELECT count(*){FROM} WHERE {where}", params).fetchone()
        by_status = dict(
            db.execute(f"SELECT ci.status, count(*){FROM} WHERE {others} GROUP BY 1", params)
        )
        rows = db.execute(
            f"SELECT {ROW_COLUMNS}{FROM} WHERE {where}"
            " ORDER BY ci.received_ms DESC, ci.case_id LIMIT :limit OFFSET :offset",
            {**params, "limit": PAGE, "offset": offset},
        ).fetchall()
        found = case_rows(service, rows)
    return CaseList(
        cases=found,
        total=total,
        by_status=by_status,
        filters=given,
        offset=offset,
        limit=PAGE,
        names=service.directory.names(m for row in found for m in row.mediators),
    )


def case_rows(service: SyncService, rows: list[tuple[Any, ...]]) -> list[CaseRow]:
    """`CaseRow`s of rows that start with `ROW_COLUMNS`, titles opened from the states."""
    states = service.store.states(("case", row[0]) for row in rows)
    cases = []
    for case_id, status, unit, category, mediators, households, priority, due, late, at in (
        row[:10] for row in rows
    ):
        state = states.get(("case", case_id))
        title = ""
        if state:
            case = materialize(state)
            assert isinstance(case, Case)
            title = case.title
        cases.append(
            CaseRow(
                case_id=case_id,
                title=title,
                status=status,
                org_unit=unit,
                category=category or "",
                mediators=json.loads(mediators or "[]"),
                households=households or 0,
                priority=priority or "normal",
                due=due,
                overdue=bool(late),
                received_ms=at,
            )
        )
    return cases


def visible(service: SyncService, user_id: str, record_type: str, record_id: str) -> bool:
    with service.store.snapshot() as db:
        row = db.execute(
            "SELECT 1 FROM access WHERE user_id = ? AND record_type = ? AND record_id = ?",
            [user_id, record_type, record_id],
        ).fetchone()
    return row is not None


def case_page(service: SyncService, user_id: str, case_id: str) -> CasePage:
    """One case as the office holds it; `UnknownRecord` if it is not in the user's view."""
    with service.store.snapshot() as db:  # every part of the page from one moment
        return _case_page(service, db, user_id, case_id)


def _case_page(
    service: SyncService, db: sqlite3.Connection, user_id: str, case_id: str
) -> CasePage:
    key = ("case", case_id)
    state = service.store.states([key]).get(key)
    if state is None or not visible(service, user_id, *key):
        raise UnknownRecord(_("no such case in your view"))
    case = materialize(state)
    assert isinstance(case, Case)
    parties = service.store.states(("party", p) for p in case.parties)
    due, overdue = db.execute(
        f"SELECT {DUE}, {OVERDUE} FROM case_index ci LEFT JOIN deadlines d"
        " ON d.category = ci.category WHERE ci.case_id = :case",
        {"case": case_id, **dated(service)},
    ).fetchone() or (None, False)
    return CasePage(
        case_id=case_id,
        case=msgspec.to_builtins(case),
        parties={k[1]: msgspec.to_builtins(materialize(s)) for k, s in parties.items()},
        due=due,
        overdue=bool(overdue),
        open_conflicts=[msgspec.to_builtins(c) for c in open_conflicts(service, key)],
        timeline=timeline(service, key),
        repeats=[
            Repeat(
                case_id=r.case_id,
                party_id=r.party_id,
                matched_by=list(r.matched_by),
                strong=r.strong,
            )
            for r in people.repeats(service.store, case_id)
            # Ids of cases out of view are not for this user (nor is whether there are any).
            if visible(service, user_id, "case", r.case_id)
        ],
        names=service.directory.names(case.mediators),
    )


def open_conflicts(service: SyncService, key: tuple[str, str]) -> list[Conflict]:
    """The record's unsettled conflicts, opened."""
    with service.store.snapshot() as db:
        rows = db.execute(
            "SELECT field, conflict FROM conflicts WHERE record_type = ? AND record_id = ?"
            " AND settled_seq IS NULL ORDER BY id",
            list(key),
        ).fetchall()
    found = []
    for field, sealed in rows:
        plain = service.store.open_value("conflicts", key, field, sealed)
        if plain is not None:
            found.append(msgspec.msgpack.decode(plain, type=Conflict))
    return found


def timeline(service: SyncService, key: tuple[str, str]) -> list[TimelineEntry]:
    """Every logged change of the record, oldest first, each with its batch signature checked."""
    with service.store.snapshot() as db:
        rows = db.execute(
            "SELECT c.seq, c.change_id, c.device_id, c.hlc, c.status, c.batch_id, c.raw,"
            " b.manifest, b.signature, d.signing_key, d.user_id FROM changes c"
            " LEFT JOIN batches b ON b.device_id = c.device_id AND b.batch_id = c.batch_id"
            " LEFT JOIN devices d ON d.device_id = c.device_id"
            " WHERE c.record_type = ? AND c.record_id = ? AND c.status != 'erased'"
            " ORDER BY c.seq",
            list(key),
        ).fetchall()
    raws = service.store.open_changes([(*key, row[1], row[6]) for row in rows])
    names: dict[str, str | None] = {}
    zone = service.settings.zone
    entries = []
    for row, raw in zip(rows, raws, strict=True):
        seq, change_id, device_id, hlc, status, batch_id, _raw, manifest, sig, public, user_id = row
        if raw is None:
            continue
        try:
            change: Change | None = decode_change(raw)
        except msgspec.DecodeError:  # stored under an older, looser schema
            change = None
        verified, why = _attributed(device_id, batch_id, raw, manifest, sig, public)
        if user_id is not None and user_id not in names:
            user = service.directory.user(user_id)
            names[user_id] = user.name if user else None
        entries.append(
            TimelineEntry(
                seq=seq,
                change_id=change_id,
                device_id=device_id,
                user_id=user_id,
                user_name=names.get(user_id) if user_id else None,
                hlc=hlc,
                made_at=times.minute(wall_of(hlc), zone),
                status=status,
                set=change.set if change else {},
                ops=msgspec.to_builtins(change.ops) if change else [],
                readable=change is not None,
                signature_verified=verified,
                why_not=why,
            )
        )
    return entries


def _attributed(
    device_id: str,
    batch_id: str | None,
    raw: bytes,
    manifest: bytes | None,
    signature: bytes | None,
    public_key: bytes | None,
) -> tuple[bool, str]:
    """Whether the change's device signed a manifest naming exactly these bytes."""
    if batch_id is None or manifest is None or signature is None or public_key is None:
        return False, _("made by the office, not pushed by a device")
    if signing.digest(raw) not in (signing.signed_digests(manifest, device_id, batch_id) or []):
        return False, _("its bytes are not in the batch manifest")
    try:
        signing.verify(public_key, signature, manifest, "batch")
    except BadSignature:
        return False, _("the batch signature does not verify")
    return True, ""


def _filters(request: Request) -> dict[str, str]:
    return {k: request.query_params.get(k, "") for k in FILTERS}


def _offset(request: Request) -> int:
    text = request.query_params.get("offset", "0")
    return page_offset(whole_number(text) or 0)


@get("/console/cases", sync_to_thread=True, include_in_schema=False)
def cases_page(request: Request) -> Response:
    current = signed_in(request, "supervisor")
    data = case_list(service_of(request), current.user.user_id, _filters(request), _offset(request))
    return render(request, current, "cases.html", data=data)


@get("/api/cases", sync_to_thread=True, summary="Cases in view, filtered, with counts")
def cases_api(
    request: Request,
    status: FromQuery[str] = "",
    org_unit: FromQuery[str] = "",
    category: FromQuery[str] = "",
    assignee: FromQuery[str] = "",
    overdue: FromQuery[str] = "",
    group: FromQuery[str] = "",
    offset: FromQuery[int] = 0,
) -> CaseList:
    current = signed_in(request, "supervisor")
    filters = {
        "status": status,
        "org_unit": org_unit,
        "category": category,
        "assignee": assignee,
        "overdue": overdue,
        "group": group,
    }
    return case_list(service_of(request), current.user.user_id, filters, page_offset(offset))


@get("/console/cases/{case_id:str}", sync_to_thread=True, include_in_schema=False)
def case_page_html(request: Request, case_id: FromPath[str]) -> Response:
    current = signed_in(request, "supervisor")
    data = case_page(service_of(request), current.user.user_id, case_id)
    return render(request, current, "case.html", data=data)


@get("/api/cases/{case_id:str}", sync_to_thread=True, summary="One case with its timeline")
def case_api(request: Request, case_id: FromPath[str]) -> CasePage:
    current = signed_in(request, "supervisor")
    return case_page(service_of(request), current.user.user_id, case_id)


ROUTES = [cases_page, cases_api, case_page_html, case_api]
