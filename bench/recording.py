"""Appending a benchmark's dated table to its own section of docs/BENCHMARKS.md.

Shared by bench/peer.py, bench/initial_sync.py and bench/memory.py; the row
and table formats are bench/http_sync.py's (`Row`, `plain`, `markdown`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from bench.http_sync import BENCHMARKS_MD, Row, machine, markdown


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
