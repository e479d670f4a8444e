"""How long a supervisor's move holds the writer gate, against doing it in one transaction.

    uv run python -m bench.move
    uv run python -m bench.move --cases 100000

`lianxin user move` of a supervisor works out again who may read every record
of their old and new org units. A push waits for the writer gate meanwhile (up
to SQLite's 5 s, then `storage_busy`).

Built first, untimed: the console benchmark's office (`bench.console.build`:
`--cases` cases over a year in the city of Fuzhou, their parties, warnings and
agreements), its supervisor holding the whole city. Measured, alternating:
the supervisor moved to one district and back to the city by
`Directory.move` (a chunk of records to a transaction), and the baseline: the
same records' readers worked out again in one transaction, as the move did
before. Printed: for each, the whole time and the longest of its transactions.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.console import build
from server.storage.access import update_access
from server.storage.sqlite import SqliteStore


def timing_transactions(store: SqliteStore) -> list[float]:
    """Make `store` note how long each outermost transaction takes, in seconds."""
    held: list[float] = []
    transaction = store.transaction
    depth = 0

    @contextlib.contextmanager
    def timed() -> Iterator[None]:
        nonlocal depth
        depth += 1
        started = time.perf_counter()
        try:
            with transaction():
                yield
        finally:
            depth -= 1
            if depth == 0:
                held.append(time.perf_counter() - started)

    store.transaction = timed  # type: ignore[method-assign]
    return held


def run(folder: Path, cases: int, rounds: int) -> list[tuple[str, float, float, int]]:
    """(what, whole time, longest transaction, transactions) of each move and baseline."""
    office = build(folder, cases, 500, seed=7)
    store, directory = office.service.store, office.service.directory
    (unit,) = store.db.execute(
        "SELECT org_unit FROM records WHERE org_unit LIKE 'Fuzhou/%' ORDER BY 1 LIMIT 1"
    ).fetchone()
    district = "/".join(unit.split("/")[:2])
    everything = store.db.execute(
        "SELECT record_type, record_id FROM records WHERE length(state) > 0"
    ).fetchall()

    def at_once() -> None:
        with store.transaction():
            update_access(store, dict.fromkeys(everything, store.last_seq() + 1), None)

    held = timing_transactions(store)
    steps: list[tuple[str, Callable[[], object]]] = [
        (f"move to {district}", lambda: directory.move(office.supervisor_id, [district])),
        ("move back to Fuzhou", lambda: directory.move(office.supervisor_id, ["Fuzhou"])),
        ("one transaction (baseline)", at_once),
    ]
    timed = []
    for _ in range(rounds):
        for what, step in steps:
            held.clear()
            started = time.perf_counter()
            step()
            timed.append((what, time.perf_counter() - started, max(held), len(held)))
    store.close()
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lianxin-move-") as folder:
        timed = run(Path(folder), args.cases, args.rounds)
    print(f"a supervisor's move over {args.cases:,} cases and what they link")
    for what, whole, longest, count in timed:
        line = f"whole {whole:6.2f} s, longest of {count:3} transactions {longest:5.2f} s"
        print(f"  {what:28} {line}")


if __name__ == "__main__":
    main()
