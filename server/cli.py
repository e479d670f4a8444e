"""`lianxin` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from server import seed
from server.storage.sqlite import SqliteStore
from sync.clock import Clock
from sync.engine import apply_batch

STORE_FILE = "lianxin.db"


def demo(data: Path, reset: bool) -> int:
    """Initialise an embedded store in `data` and load the seed scenarios into it."""
    if reset and data.exists():
        shutil.rmtree(data)
        print(f"Removed {data}")
    data.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(data / STORE_FILE)
    try:
        if store.migrations_applied:
            print(f"Created store {store.path} ({', '.join(store.migrations_applied)})")
        else:
            print(f"Reusing store {store.path} (run with --reset to start over)")
        clock = Clock()
        for scenario in seed.scenarios():
            results = apply_batch(store, scenario.changes, clock)
            tally = Counter(r.status for r in results)
            summary = ", ".join(f"{n} {status}" for status, n in sorted(tally.items()))
            print(f"  {scenario.name}: {len(results)} changes: {summary}")
        counts = store.counts()
        print(
            f"Store holds {counts['records']} records, {counts['changes']} changes in the log,"
            f" {len(store.open_conflicts())} open conflicts, {counts['quarantine']} quarantined."
        )
        for conflict in store.open_conflicts():
            values = " | ".join(f"{c.device_id}: {c.value!r}" for c in conflict.candidates)
            print(
                f"  conflict {conflict.record_type}/{conflict.record_id}.{conflict.field}: {values}"
            )
    finally:
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lianxin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="create a local store and load the seed scenarios"
    )
    demo_parser.add_argument(
        "--data",
        type=Path,
        default=Path("lianxin-data"),
        help="data folder (default: ./lianxin-data)",
    )
    demo_parser.add_argument("--reset", action="store_true", help="delete the data folder first")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.data, args.reset)
    return 2


if __name__ == "__main__":
    sys.exit(main())
