"""CSV exports of the console's lists: `GET /console/export/<list>.csv`.

A list plugs in with one line in `EXPORTS`: its name, where its rows come
from (`Listing`: every row the page would list over all its pages, for the
same query filters, in the same order) and its columns (what the page shows,
no more). Every export

- is for supervisors, of the records in their view only (the list's own query);
- is written to the audit log (action `export`, subject the list, detail the
  filters and the row count) in the same request, before the file leaves;
- names columns in the user's language, and statuses as the page shows them;
- cannot run formulas: a text cell starting with = + - @ (or a tab or carriage
  return, which some spreadsheets skip first) gets a leading apostrophe, so a
  title like `=HYPERLINK(...)` stays text (OWASP, "CSV injection");
- is UTF-8 with a byte-order mark, which spreadsheet programs need to read
  Chinese correctly.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from litestar import Request, Response, get
from litestar.params import FromPath

from schemas.console.cases import CaseRow
from schemas.console.stats import WITHHELD, Count, Row, Stats
from server.console import cases, conflicts, quarantine, stats, triage
from server.console.actions import logged
from server.console.signin import Session
from server.console.web import language_of, service_of, signed_in, translations
from server.service import SyncService
from sync.errors import UnknownRecord

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Titles are opened from sealed states this many at a time.
CHUNK = 500


class Message(str):
    """A cell that is a message of the console (a status, a label): translated on export."""

    __slots__ = ()


def _(message: str) -> Message:
    """Marks a message for translation; the export translates it into the user's language."""
    return Message(message)


class Listing(NamedTuple):
    rows: Sequence[Any]
    filters: dict[str, str]  # the filters applied, as audited


class Column(NamedTuple):
    header: str  # a message
    cell: Callable[[Any], object]  # the value of one row


ListingOf = Callable[[SyncService, Session, Mapping[str, str]], Listing]


class Export(NamedTuple):
    listing: ListingOf
    columns: Sequence[Column]


def neutralised(value: object) -> str:
    """A cell's text, with a leading apostrophe if a spreadsheet would run it as a formula."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    return str(value)


def csv_bytes(export: Export, listing: Listing, gettext: Callable[[str], str]) -> bytes:
    """The listing as CSV, headers and messages in the language of `gettext`."""

    def text(value: object) -> str:
        if isinstance(value, Message) and value:  # gettext("") is the catalog's header
            value = gettext(value)
        return neutralised(value)

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([text(_(column.header)) for column in export.columns])
    for row in listing.rows:
        writer.writerow([text(column.cell(row)) for column in export.columns])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


# -- the case list ------------------------------------------------------------------------


def case_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    """Every case of the list at /console/cases for these filters, in its order.

    The same filters and SQL pieces as `server.console.cases.case_list`, without
    its page limit (which that function fixes at one page).
    """
    given = {name: value for name in cases.FILTERS if (value := query.get(name, ""))}
    params = {**given, "user": current.user.user_id, **cases.dated(service)}
    where = " AND ".join(["1", *(cases.FILTERS[name] for name in given)])
    # On a read connection: a whole district's list must not hold up the writer meanwhile.
    with service.store.snapshot() as conn:
        found = conn.execute(
            f"SELECT {cases.ROW_COLUMNS}{cases.FROM}"
            f" WHERE {where} ORDER BY ci.received_ms DESC, ci.case_id",
            params,
        ).fetchall()
    return Listing(list(_case_rows(service, found)), given)


def _case_rows(service: SyncService, found: list[tuple[Any, ...]]) -> Iterator[CaseRow]:
    for start in range(0, len(found), CHUNK):
        yield from cases.case_rows(service, found[start : start + CHUNK])


CASE_COLUMNS = [
    Column(_("Case"), lambda c: c.case_id),
    Column(_("Title"), lambda c: c.title),
    Column(_("Status"), lambda c: Message(c.status)),
    Column(_("Org unit"), lambda c: c.org_unit or ""),
    Column(_("Category"), lambda c: c.category),
    Column(_("Mediators"), lambda c: ", ".join(c.mediators)),
    Column(_("Households"), lambda c: c.households if c.households > 1 else ""),
    Column(_("Due"), lambda c: c.due or ""),
    Column(_("Overdue"), lambda c: _("overdue") if c.overdue else ""),
]


# -- the statistics (published figures only: see server.console.stats) ---------------------


def _stats(service: SyncService, current: Session) -> Stats:
    return stats.stats(service, current.user)


def _count(value: Count) -> object:
    """A published count; "withheld" in the user's words."""
    return Message(value) if value == WITHHELD else value


def _percent(value: float | None) -> str:
    return "" if value is None else f"{round(value * 100)}%"


def _days(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def summary_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    data = _stats(service, current)
    total = data.total
    return Listing(
        [
            (_("Period from"), data.since),
            (_("Period to"), data.until),
            (_("Received"), _count(total.received)),
            (_("Resolved"), _count(total.resolved)),
            (_("Received and resolved"), _count(total.received_resolved)),
            (_("Resolution rate"), _percent(total.resolution_rate)),
            (_("Median days to resolution"), _days(total.median_days)),
            (_("Repeat petitions"), _count(total.repeats)),
            (_("Warnings received"), _count(data.warnings_received)),
            (_("Warnings turned into cases"), _count(data.warnings_converted)),
            (_("Agreements executed"), _count(data.agreements_executed)),
        ],
        {},
    )


def weeks_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    return Listing(_stats(service, current).weeks, {})


def categories_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    return Listing(_stats(service, current).by_category, {})


def units_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    return Listing(_stats(service, current).by_unit, {})


def _figures(key: str, empty: str) -> list[Column]:
    """The columns of a breakdown table: its key (`empty` when blank), then the figures."""

    def name(row: Row) -> object:
        return row.key or Message(empty)

    return [
        Column(key, name),
        Column(_("Received"), lambda r: _count(r.received)),
        Column(_("Resolved"), lambda r: _count(r.resolved)),
        Column(_("Received and resolved"), lambda r: _count(r.received_resolved)),
        Column(_("Resolution rate"), lambda r: _percent(r.resolution_rate)),
        Column(_("Median days to resolution"), lambda r: _days(r.median_days)),
        Column(_("Repeat petitions"), lambda r: _count(r.repeats)),
    ]


SUMMARY_COLUMNS = [Column(_("Figure"), lambda r: r[0]), Column(_("Value"), lambda r: r[1])]
WEEK_COLUMNS = [
    Column(_("Week of"), lambda w: w.start),
    Column(_("Received"), lambda w: _count(w.received)),
    Column(_("Resolved"), lambda w: _count(w.resolved)),
]


# -- the other queues: every page of each, as its page shows them ---------------------------


def _every_page(
    page: Callable[[int], Any],
    rows: Callable[[Any], list[Any]],
    total: Callable[[Any], int] = lambda answer: int(answer.total),
) -> list[Any]:
    """Every row of a paged list: `page(offset)` answers a `limit` of rows of a total."""
    found: list[Any] = []
    offset = 0
    while True:
        answer = page(offset)
        found += rows(answer)
        offset += answer.limit
        if offset >= total(answer) or not rows(answer):
            return found


def conflicts_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    user_id = current.user.user_id
    every = _every_page(
        lambda offset: conflicts.conflict_list(service, user_id, offset), lambda a: a.conflicts
    )
    return Listing(every, {})


def _author(author: Any) -> object:
    if author.office:
        return _("the office")
    return author.user_name or _("unknown user")


def _candidates(conflict: Any) -> str:
    return "\n".join(
        f"{c.shown} — {c.author.user_name or c.author.device_id} · {c.at}"
        for c in conflict.candidates
    )


CONFLICT_COLUMNS = [
    Column(_("Record"), lambda c: c.title or c.record_id),
    Column(_("Type"), lambda c: Message(c.record_type)),
    Column(_("Id"), lambda c: c.record_id),
    Column(_("Field"), lambda c: c.field),
    Column(_("Shown now"), lambda c: c.winner_shown),
    Column(_("Candidates"), _candidates),
]


def quarantine_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    everything = query.get("all", "") in ("1", "true", "yes", "on")
    # One page of every row: each page reads (and opens) the whole queue it is cut from.
    every = quarantine.quarantine_list(service, current.user, everything, limit=sys.maxsize)
    return Listing(every.items, {"all": "1"} if everything else {})


def _tried(item: Any) -> str:
    writes = [f"{name}: {value}" for name, value in item.set.items()]
    writes += [f"{op.get('type', '')} {op.get('field') or ''}".strip() for op in item.ops]
    return "\n".join(writes)


QUARANTINE_COLUMNS = [
    Column(_("Record"), lambda q: q.title or q.record_id),
    Column(_("Type"), lambda q: Message(q.record_type)),
    Column(_("Id"), lambda q: q.record_id),
    Column(_("Reason"), lambda q: q.reason),
    Column(_("Detail"), lambda q: q.detail),
    Column(_("What it tried"), _tried),
    Column(_("Who"), lambda q: _author(q.author)),
    Column(_("Device"), lambda q: q.author.device_id),
    Column(_("Received"), lambda q: q.received),
    Column(_("Acknowledged"), lambda q: _("Acknowledged") if q.acknowledged_ms else ""),
]


def warnings_listing(service: SyncService, current: Session, query: Mapping[str, str]) -> Listing:
    """The new warnings the page shows (its newest, grouped), then every answered one."""
    user_id = current.user.user_id
    first = triage.warning_list(service, user_id)
    new = [w for group in first.groups for w in group.warnings]
    handled = _every_page(
        lambda offset: triage.warning_list(service, user_id, offset),
        lambda answer: answer.handled,
        lambda answer: answer.handled_total,
    )
    return Listing([*new, *handled], {})


WARNING_COLUMNS = [
    Column(_("Warning"), lambda w: w.warning_id),
    Column(_("Received"), lambda w: w.received_at),
    Column(_("Category"), lambda w: w.category),
    Column(_("Org unit"), lambda w: w.org_unit or ""),
    Column(_("Severity"), lambda w: Message(w.severity)),
    Column(_("People affected"), lambda w: w.people_affected),
    Column(_("Informant"), lambda w: w.informant or ""),
    Column(_("Description"), lambda w: w.description),
    Column(_("Status"), lambda w: Message(w.status)),
    Column(_("Case"), lambda w: w.case_id or ""),
    Column(_("Reply"), lambda w: w.response),
]


# -- the registry: one line a list ---------------------------------------------------------

EXPORTS: dict[str, Export] = {
    "cases": Export(case_listing, CASE_COLUMNS),
    "stats": Export(summary_listing, SUMMARY_COLUMNS),
    "stats-weeks": Export(weeks_listing, WEEK_COLUMNS),
    "stats-categories": Export(categories_listing, _figures(_("Category"), _("none"))),
    "stats-units": Export(units_listing, _figures(_("Org unit"), _("elsewhere or none"))),
    "conflicts": Export(conflicts_listing, CONFLICT_COLUMNS),
    "quarantine": Export(quarantine_listing, QUARANTINE_COLUMNS),
    "warnings": Export(warnings_listing, WARNING_COLUMNS),
}


def export(service: SyncService, current: Session, name: str, query: Mapping[str, str]) -> Listing:
    """The rows of list `name` for `current`, audited; `UnknownRecord` for no such list."""
    chosen = EXPORTS.get(name)
    if chosen is None:
        raise UnknownRecord(_("no such list to export"))
    listing = chosen.listing(service, current, query)
    with service.store.transaction():
        logged(
            service,
            current.user,
            "export",
            name,
            {"filters": listing.filters, "rows": len(listing.rows)},
        )
    return listing


@get("/console/export/{name:str}", sync_to_thread=True, include_in_schema=False)
def export_csv(request: Request, name: FromPath[str]) -> Response:
    """`/console/export/<list>.csv` with the list page's query string."""
    current = signed_in(request, "supervisor")
    list_name = name.removesuffix(".csv")
    if list_name == name:
        raise UnknownRecord(_("no such list to export"))
    service = service_of(request)
    query = {key: request.query_params.get(key, "") for key in request.query_params}
    listing = export(service, current, list_name, query)
    gettext = translations(language_of(current, request)).gettext
    body = csv_bytes(EXPORTS[list_name], listing, gettext)
    day = cases.today(service)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="lianxin-{list_name}-{day}.csv"',
            "x-content-type-options": "nosniff",
        },
    )


ROUTES = [export_csv]
