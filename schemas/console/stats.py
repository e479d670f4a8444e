"""The console's statistics: cases received and resolved by week, category and org unit.

Every count here is published, not exact: a count under 5 is the string
`"<5"`, any other is rounded to the nearest multiple of 5; a figure is
`"withheld"` in the rare case where it and the rounded figures beside a "<5"
would pin that cell down (see `server.console.stats` for why). Rates are
worked out from published counts only, and medians only over at least 5 cases.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

SUPPRESSED: Final = "<5"
WITHHELD: Final = "withheld"
# A published count: a multiple of 5 (5 and up), "<5" for 0 to 4, or "withheld" (it
# would give a "<5" away).
Count = int | Literal["<5", "withheld"]


class Week(msgspec.Struct, frozen=True, kw_only=True):
    start: str  # ISO date of the week's Monday (weeks run Monday to Sunday, UTC)
    received: Count
    resolved: Count


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One group of cases over the whole period (all of them, a category, an org unit)."""

    key: str  # the category or org-unit path; "" for cases without one
    received: Count  # received in the period
    resolved: Count  # resolved (or closed) in the period, whenever received
    received_resolved: Count  # received in the period and resolved or closed by now
    # received_resolved / received, both as published; None if either is "<5".
    resolution_rate: float | None
    # Of the cases resolved in the period: days from receipt to resolution, to 0.1 day;
    # None with fewer than 5 of them.
    median_days: float | None
    # Received in the period and sharing a person (same phone or ID number, or the same
    # party record) with a case the office received earlier.
    repeats: Count


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    since: str  # ISO date: the first day of the period (a Monday)
    until: str  # ISO date: the last day of the period (a Sunday; the current week)
    weeks: list[Week]
    total: Row
    by_category: list[Row]
    # The org units directly below the user's own (a case in the unit itself keeps its path).
    by_unit: list[Row]
    warnings_received: Count  # early warnings received in the period
    warnings_converted: Count  # of those, turned into cases
    agreements_executed: Count  # mediation agreements executed in the period
    rule: str = (
        "counts under 5 are shown as <5, other counts are rounded to the nearest 5;"
        " a figure that would give a <5 away is withheld"
    )
