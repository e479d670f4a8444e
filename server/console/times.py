"""Moments as the console shows them: on the office's own clock (`Settings.time_zone`).

A street office in Hangzhou reads 19:07, not 11:07 UTC, and a case due
"today" is due by the office's date, not Greenwich's. Stored times stay
milliseconds since the epoch; only what a page shows is local.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


def local(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, zone)


def minute(ms: int | None, zone: ZoneInfo) -> str:
    """`2026-11-18 19:07`, or "" for no time."""
    return "" if ms is None else local(ms, zone).strftime("%Y-%m-%d %H:%M")


def second(ms: int, zone: ZoneInfo) -> str:
    """`2026-11-18 19:07:42`: to tell apart edits made a minute apart."""
    return local(ms, zone).strftime("%Y-%m-%d %H:%M:%S")


def day(ms: int, zone: ZoneInfo) -> str:
    """The office's date at `ms`, as ISO 8601 (`2026-11-18`)."""
    return local(ms, zone).date().isoformat()


def offset_ms(ms: int, zone: ZoneInfo) -> int:
    """How far the office's clock is ahead of UTC at `ms` (8 hours in China)."""
    offset = local(ms, zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return int(offset.total_seconds() * 1000)
