"""Statistics of the cases in a supervisor's view: received, resolved, how fast, and repeats.

The period is the last `WEEKS` weeks, Monday to Sunday on the office's clock
(`Settings.time_zone`, as the case list's dates), the current week included. For the cases in view:

- received / resolved per week, and over the period: in total, by category
  and by the org units directly below the supervisor's own;
- the resolution rate: of the cases received in the period, the share
  resolved or closed by now;
- the median days from receipt to resolution of the cases resolved in the
  period;
- repeat petitions: cases received in the period that share a person (the
  same phone or ID number in the blind index, or the same party record) with
  a case the office received earlier, wherever that one is;
- early warnings received in the period, and how many were turned into cases;
- mediation agreements executed in the period.

Small counts identify people (three resolved cases in one community this
week), so nothing leaves this module exact. The rule (`publish`):

- a count under 5 (0 included) is shown as "<5", never as its number;
- every other count, totals included, is rounded to the nearest multiple of 5.
  Rounding every cell, not only totals, is what stops subtraction: a total
  minus the cells beside it is off by up to 2 per figure used, more than the
  0–4 a suppressed cell hides in. Exact cells beside a rounded total would
  not do: 97 beside a total of 100 (rounded from 98 to 102) leaves a "<5" of
  1 to 4, but 99 beside 100 leaves 0 to 3, and so on down to one value;
- rounding alone still has edges: two "<5" cells under a total of 10 can
  only be 4 and 4, and a total rounded up beside cells rounded down can pin
  a "<5" likewise; so can a week of 10 beside those two cells, since every
  table (weeks, categories, org units) adds up to the same total. So for
  each total and the tables that split it, the range each "<5" cell could
  take given every published figure is worked out, and while one is down to
  a single value the figure that bounds it is shown as "withheld": the total
  first, then the cell of another table that gives the bound (`protect`);
- a rate is worked out from the published counts only (so it tells nothing
  they do not), and only when both are numbers;
- a median only over 5 or more cases;
- rows are in key order, not by size, so the order of "<5" rows says nothing.

The same published figures feed the page, its JSON twin, its charts and the
CSV exports; the exact `Figures` never leave the server.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
from litestar import Request, Response, get

from schemas.console.stats import SUPPRESSED, WITHHELD, Count, Row, Stats, Week
from server.console import charts, times
from server.console.web import render, service_of, signed_in
from server.service import SyncService
from server.storage.directory import User
from server.storage.index import RESOLVED

WEEKS = 26
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# The epoch was a Thursday: weeks counted from it start on Mondays three days later.
MONDAY_MS = 3 * DAY_MS
MINIMUM = 5
FIGURES = ("received", "resolved", "received_resolved", "repeats")

IN_VIEW = (
    " FROM case_index ci CROSS JOIN access a ON a.user_id = :user AND a.record_type = 'case'"
    " AND a.record_id = ci.case_id CROSS JOIN records r ON r.record_type = 'case'"
    " AND r.record_id = ci.case_id AND NOT r.deleted"  # a deleted case counts for nothing
)
# The cases in view received or resolved in the period, read once (materialised) and
# counted by category and org unit (with how long each resolved one took: a list, for
# the medians, and how many are repeats: `server.storage.repeats` keeps the flag) and by
# week. CROSS JOIN keeps SQLite reading the period's ranges of the
# two indexes first and looking each case up in `access`: a supervisor's view holds
# every year of cases, the period only half a year of them.
PERIOD_SQL = f"""
WITH period AS MATERIALIZED (
  SELECT coalesce(ci.category, '') AS category, ci.org_unit AS unit,
    ci.received_ms AS received_ms, ci.resolved_ms AS resolved_ms,
    ci.status IN {RESOLVED} AS settled, ci.repeat AS repeat,
    (ci.received_ms >= :start AND ci.received_ms < :end) AS fresh,
    coalesce(ci.resolved_ms >= :start AND ci.resolved_ms < :end, 0) AS done
  {IN_VIEW}
  WHERE (ci.received_ms >= :start AND ci.received_ms < :end)
    OR (ci.resolved_ms >= :start AND ci.resolved_ms < :end)
)
SELECT category, unit, NULL, sum(fresh), sum(fresh AND settled), sum(done),
  group_concat(CASE WHEN done THEN resolved_ms - received_ms END), sum(fresh AND repeat)
FROM period GROUP BY category, unit
UNION ALL
SELECT NULL, 'received', (received_ms - :start) / :week, count(*), 0, 0, NULL, 0
FROM period WHERE fresh GROUP BY 3
UNION ALL
SELECT NULL, 'resolved', (resolved_ms - :start) / :week, count(*), 0, 0, NULL, 0
FROM period WHERE done GROUP BY 3
"""
WARNINGS_SQL = """
SELECT count(*), coalesce(sum(wi.status = 'converted' OR wi.case_id IS NOT NULL
  OR EXISTS (SELECT 1 FROM links l WHERE l.record_type = 'warning'
    AND l.record_id = wi.warning_id)), 0)
FROM warning_index wi JOIN access a ON a.user_id = :user
  AND a.record_type = 'warning' AND a.record_id = wi.warning_id
  JOIN records r ON r.record_type = 'warning' AND r.record_id = wi.warning_id AND NOT r.deleted
WHERE wi.received_ms >= :start AND wi.received_ms < :end
"""
AGREEMENTS_SQL = """
SELECT count(*) FROM agreement_index ai JOIN access a ON a.user_id = :user
  AND a.record_type = 'agreement' AND a.record_id = ai.agreement_id
  JOIN records r ON r.record_type = 'agreement' AND r.record_id = ai.agreement_id
  AND NOT r.deleted
WHERE ai.executed_ms >= :start AND ai.executed_ms < :end
"""


def sub_unit(unit: str | None, own: list[str]) -> str:
    """The org unit directly below one of `own` that holds `unit`; `unit` if it is one of
    `own`; "" for no org unit or one outside them all (a case in view because the user
    created it or is named on it)."""
    if unit is None:
        return ""
    for mine in sorted(own, key=len, reverse=True):
        if unit == mine:
            return mine
        if unit.startswith(mine + "/"):
            return f"{mine}/{unit[len(mine) + 1 :].split('/')[0]}"
    return ""


# -- exact figures (never shown) ------------------------------------------------------------


@dataclass
class Tally:
    """Exact counts of one group of cases over the period."""

    received: int = 0
    resolved: int = 0
    received_resolved: int = 0
    repeats: int = 0
    durations_ms: list[int] = field(default_factory=list)  # of the cases resolved


@dataclass
class Figures:
    """Exact statistics of one user's view; `published` makes them fit to show."""

    start_ms: int
    end_ms: int
    weeks: list[tuple[int, int, int]]  # (Monday's ms, received, resolved)
    total: Tally
    by_category: dict[str, Tally]
    by_unit: dict[str, Tally]
    warnings_received: int
    warnings_converted: int
    agreements_executed: int
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))  # whose dates to show


def week_start(ms: int, offset_ms: int = 0) -> int:
    """The Monday 00:00 that begins the week holding `ms`, on a clock `offset_ms` ahead
    of UTC."""
    local = ms + offset_ms
    return (local + MONDAY_MS) // WEEK_MS * WEEK_MS - MONDAY_MS - offset_ms


Rows = list[tuple[Any, ...]]


class Reads(NamedTuple):
    """What the statistics read from the store, before any counting in Python."""

    period: Rows
    warnings: tuple[int, int]
    agreements: int


def _params(user: User, now_ms: int, weeks: int, zone: ZoneInfo) -> dict[str, Any]:
    end = week_start(now_ms, times.offset_ms(now_ms, zone)) + WEEK_MS
    return {"user": user.user_id, "start": end - weeks * WEEK_MS, "end": end, "week": WEEK_MS}


def _read_cases(service: SyncService, params: dict[str, Any]) -> Reads:
    """Everything, in one snapshot on this thread's read connection (a long read on the
    writer's connection would hold up every push behind it)."""
    with service.store.snapshot() as conn:
        return Reads(
            period=conn.execute(PERIOD_SQL, params).fetchall(),
            warnings=conn.execute(WARNINGS_SQL, params).fetchone(),
            agreements=conn.execute(AGREEMENTS_SQL, params).fetchone()[0],
        )


def figures(service: SyncService, user: User, now_ms: int, weeks: int = WEEKS) -> Figures:
    """The exact statistics of the cases `user` may see, over the `weeks` weeks up to `now_ms`."""
    zone = service.settings.zone
    params = _params(user, now_ms, weeks, zone)
    reads = _read_cases(service, params)
    start = params["start"]
    warnings_received, warnings_converted = reads.warnings
    counted = Figures(
        start_ms=start,
        end_ms=params["end"],
        weeks=[],
        total=Tally(),
        by_category={},
        by_unit={},
        warnings_received=warnings_received,
        warnings_converted=warnings_converted,
        agreements_executed=reads.agreements,
        zone=zone,
    )
    groups = _Groups(user, counted)
    by_week: dict[str, dict[int, int]] = {"received": {}, "resolved": {}}
    for category, unit, week, fresh, settled, done, took, repeats in reads.period:
        if category is None:  # a week's count: `unit` says of what
            by_week[unit][week] = fresh
            continue
        durations = [int(ms) for ms in took.split(",")] if took else []
        for tally in groups(category, unit):
            tally.received += fresh
            tally.received_resolved += settled
            tally.resolved += done
            tally.repeats += repeats
            tally.durations_ms.extend(durations)
    for tally in (counted.total, *counted.by_category.values(), *counted.by_unit.values()):
        tally.durations_ms.sort()
    counted.weeks = [
        (start + n * WEEK_MS, by_week["received"].get(n, 0), by_week["resolved"].get(n, 0))
        for n in range(weeks)
    ]
    return counted


class _Groups:
    """Adds rows of (category, org unit, ...) into the total, the category and the sub-unit."""

    def __init__(self, user: User, figures: Figures) -> None:
        self.user = user
        self.figures = figures
        self.units: dict[str | None, str] = {}

    def __call__(self, category: str, unit: str | None) -> tuple[Tally, Tally, Tally]:
        if unit not in self.units:
            self.units[unit] = sub_unit(unit, self.user.org_units)
        return (
            self.figures.total,
            self.figures.by_category.setdefault(category, Tally()),
            self.figures.by_unit.setdefault(self.units[unit], Tally()),
        )


# -- published figures (what every page, API answer and export shows) -----------------------


def published(count: int) -> Count:
    """Show a count under 5 as "<5", any other rounded to the nearest multiple of 5."""
    if count < MINIMUM:
        return SUPPRESSED
    return (count + 2) // 5 * 5


UNBOUNDED = 2**62


def _range(value: Count) -> tuple[int, int]:
    """What an exact count can be, knowing only its published value."""
    if value == SUPPRESSED:
        return 0, MINIMUM - 1
    if isinstance(value, str):  # withheld: anything
        return 0, UNBOUNDED
    return max(value - 2, MINIMUM), value + 2


def _pinned(total: Count, tables: list[list[Count]]) -> tuple[str, int] | None:
    """A "<5" cell that the published figures leave one value only, and why; else None.

    Every table adds up to the total, exactly. So the total is at least the
    largest of the lower ends (its own range's, and each table's sum of its
    cells' lower ends) and at most the smallest of the upper ends; a cell is
    then at least that lower bound less the most the other cells of its table
    may be, and at most the upper bound less the least they may be. Returns
    ("low" or "high": the bound that pins it, and its table) for the first one.
    """
    ranges = [[_range(cell) for cell in table] for table in tables]
    sums = [(sum(r[0] for r in table), sum(r[1] for r in table)) for table in ranges]
    own_low, own_high = _range(total)
    for index, table in enumerate(tables):
        # The table's own cells add nothing about the total that the cells do not.
        low = max([own_low, *(s[0] for k, s in enumerate(sums) if k != index)])
        high = min([own_high, *(s[1] for k, s in enumerate(sums) if k != index)])
        table_low, table_high = sums[index]
        for cell, (cell_low, cell_high) in zip(table, ranges[index], strict=True):
            if cell != SUPPRESSED:
                continue
            least = max(cell_low, low - (table_high - cell_high))
            most = min(cell_high, high - (table_low - cell_low))
            if least >= most:
                return ("low" if least > cell_low else "high"), index
    return None


def protect(total: Count, tables: list[list[Count]]) -> tuple[Count, list[list[Count]]]:
    """Withhold the total, then cells of the tables splitting it, until no "<5" is pinned.

    A cell pinned at its top (4) is pinned by a lower bound on the total from
    elsewhere: the total itself, withheld first, then the cell of the table
    giving that bound with the largest lower end. One pinned at 0 likewise by
    an upper bound. Each round withholds one more figure, so this ends.
    """
    tables = [list(table) for table in tables]
    if not all(tables):
        # A table with no rows: nothing was counted in the period, every figure is 0, and
        # a count of no one singles no one out.
        return total, tables
    while (found := _pinned(total, tables)) is not None:
        side, index = found
        if total != WITHHELD:
            total = WITHHELD
            continue
        ranges = [[_range(cell) for cell in table] for table in tables]
        end = 0 if side == "low" else 1
        others = [k for k in range(len(tables)) if k != index]
        bound = [sum(r[end] for r in ranges[k]) for k in others]
        source = others[bound.index(max(bound) if side == "low" else min(bound))]
        cells = [(r[end], n) for n, r in enumerate(ranges[source]) if tables[source][n] != WITHHELD]
        _, cell = max(cells)
        tables[source][cell] = WITHHELD
    return total, tables


def rate(part: Count, whole: Count) -> float | None:
    """`part / whole` of two published counts, to a whole percent; None unless both are numbers."""
    if isinstance(part, str) or isinstance(whole, str) or whole == 0:
        return None
    return round(part / whole, 2)


def median_days(durations_ms: list[int]) -> float | None:
    """The median in days (to 0.1), over at least `MINIMUM` cases; else None."""
    if len(durations_ms) < MINIMUM:
        return None
    return round(statistics.median(durations_ms) / DAY_MS, 1)


def _row(key: str, tally: Tally) -> Row:
    received = published(tally.received)
    received_resolved = published(tally.received_resolved)
    return Row(
        key=key,
        received=received,
        resolved=published(tally.resolved),
        received_resolved=received_resolved,
        resolution_rate=rate(received_resolved, received),
        median_days=median_days(tally.durations_ms),
        repeats=published(tally.repeats),
    )


def _with(row: Row, **figures: Count) -> Row:
    """`row` with some figures replaced (withheld), its rate worked out again."""
    if all(getattr(row, name) == value for name, value in figures.items()):
        return row
    row = msgspec.structs.replace(row, **figures)
    return msgspec.structs.replace(row, resolution_rate=rate(row.received_resolved, row.received))


def publish(exact: Figures) -> Stats:
    """The figures as they may be shown (see the module docstring for the rule)."""
    weeks = [
        Week(
            start=times.day(at, exact.zone),
            received=published(received),
            resolved=published(resolved),
        )
        for at, received, resolved in exact.weeks
    ]
    by_category = [_row(k, t) for k, t in sorted(exact.by_category.items())]
    by_unit = [_row(k, t) for k, t in sorted(exact.by_unit.items())]
    total = _row("", exact.total)
    # Each total and the tables that split it, protected together (see `protect`).
    for name in FIGURES:
        tables = [[getattr(r, name) for r in by_category], [getattr(r, name) for r in by_unit]]
        if name in ("received", "resolved"):
            tables.append([getattr(w, name) for w in weeks])
        shown, tables = protect(getattr(total, name), tables)
        total = _with(total, **{name: shown})
        by_category = [_with(r, **{name: v}) for r, v in zip(by_category, tables[0], strict=True)]
        by_unit = [_with(r, **{name: v}) for r, v in zip(by_unit, tables[1], strict=True)]
        if len(tables) == 3:
            weeks = [
                msgspec.structs.replace(w, **{name: v})
                for w, v in zip(weeks, tables[2], strict=True)
            ]
    return Stats(
        since=times.day(exact.start_ms, exact.zone),
        until=times.day(exact.end_ms - DAY_MS, exact.zone),
        weeks=weeks,
        total=total,
        by_category=by_category,
        by_unit=by_unit,
        warnings_received=published(exact.warnings_received),
        warnings_converted=published(exact.warnings_converted),
        agreements_executed=published(exact.agreements_executed),
    )


def stats(service: SyncService, user: User) -> Stats:
    """The published statistics of `user`'s view, now."""
    return publish(figures(service, user, service.wall_ms()))


# -- routes ---------------------------------------------------------------------------------


@get("/console/stats", sync_to_thread=True, include_in_schema=False)
def stats_page(request: Request) -> Response:
    current = signed_in(request, "supervisor")
    data = stats(service_of(request), current.user)
    return render(request, current, "stats.html", data=data, charts=charts)


@get(
    "/api/stats",
    sync_to_thread=True,
    summary="Statistics of the cases in view, small counts hidden",
)
def stats_api(request: Request) -> Stats:
    current = signed_in(request, "supervisor")
    return stats(service_of(request), current.user)


ROUTES = [stats_page, stats_api]
