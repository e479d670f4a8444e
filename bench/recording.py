"""Benchmark tables: their rows, printed and as Markdown, and their dated place in
docs/BENCHMARKS.md. Shared by every script in bench/ that records a table."""

from __future__ import annotations

import os
import platform
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


class Row(NamedTuple):
    metric: str
    value: str
    target: str
    met: str
    baseline: str
    ratio: str


def markdown(table: list[Row]) -> str:
    lines = [
        "| metric | value | target | met | baseline (same run) | ratio |",
        "|---|---:|---:|---|---|---:|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def plain(table: list[Row]) -> str:
    header = Row("metric", "value", "target", "met", "baseline (same run)", "ratio")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    right = {1, 2, 5}

    def line(row: Row) -> str:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(row) for row in table)])


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{len(os.sched_getaffinity(0))} × {model}, Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}"
    )


def dated_block(command: str, table: list[Row], note: str = "", summary: str = "") -> str:
    """One run: a dated title, the machine and load, the command, the table, a summary."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"### {when}" + (f" — {note}" if note else "")
    load = Path("/proc/loadavg").read_text().split()[0]
    block = f"{title}\n\nMachine: {machine()}; load average {load} at the end.\n\n"
    block += f"    {command}\n\n{markdown(table)}"
    return block + (f"\n{summary}\n" if summary else "")


def record(heading: str, intro: str, block: str, path: Path = BENCHMARKS_MD) -> None:
    """Add `block` at the end of the section `heading`, made (with `intro`) at the file's end.

    bench/apply_changes.py finds its own table wherever it stands, so sections may follow it.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{intro.strip()}\n\n{block}"
    else:
        start = text.index(heading) + len(heading)
        end = text.find("\n## ", start)
        if end < 0:
            text = text.rstrip("\n") + "\n\n" + block
        else:
            text = text[:end].rstrip("\n") + "\n\n" + block + text[end:]
    path.write_text(text)
