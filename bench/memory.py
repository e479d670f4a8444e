"""Memory of `lianxin serve` over an office holding 1,000,000 records.

    uv run python -m bench.memory                     # 1,000,000 cases: a long build
    uv run python -m bench.memory --records 20000     # a quick look
    uv run python -m bench.memory --store /tmp/mem1m  # keep the office there, reuse it next time
    uv run python -m bench.memory --record            # append to docs/BENCHMARKS.md

Built first, untimed: an office set up through the command line and filled
over HTTP by four mediators' phones, one change a case in sealed, signed
batches of 500 (`bench.initial_sync.fill`, the real push path: merge,
access, indexes, audit, at-rest encryption), so every record is a case
with its change, its access rows and its index rows. That server process
is then stopped.

Measured: a fresh `lianxin serve` process (production defaults) on that
store, its memory read from `/proc/<pid>/status` (VmRSS now, VmHWM the
peak; RssAnon is the process's own heap, RssFile the mapped libraries)
after start-up, after a supervisor's laptop pulls every record in pages of
5,000 (the largest page the server gives), and after a mediator pushes
10,000 new cases in batches of 500 (as many as the writer's state cache
holds in both tiers, so that it ends full), the supervisor pulls them
(pages of 1,000) and makes 100 no-change pulls. Baseline in the same run:
the same steps against a `lianxin serve` on an empty office.

SQLite's page cache is at its default (`cache_size` -2000: at most about
2 MB a connection; one writer connection and one reader a worker thread)
and `mmap_size` 0, so the store's size reaches the process only through
those caches and what a request holds while it runs. `lianxin serve`
keeps freed heap for reuse (server/memory.py: glibc's trim and mmap
thresholds at 64 MiB), so RSS stays near its peak after a large request.

Target (DESIGN.md): at most 150 MB with 1,000,000 stored records.
"""

from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx
import msgspec

from bench.http_sync import (
    BATCH,
    PULL,
    PUSH,
    enroll,
    lianxin,
    pull_everything,
    read_only,
    serving,
    set_up_office,
)
from bench.initial_sync import fill, mediator_books
from bench.peer import DISTRICT, documents
from bench.recording import Row, dated_block, machine, plain, record
from schemas.wire import PullPage, PullRequest, PushResponse
from server.settings import CACHED_STATES, PACKED_STATES
from sync.clock import Clock

TARGET_MB = 150.0
RECORDS = 1_000_000
BIG_PAGE = 5000  # server/settings.py max_pull_limit
PUSHED = CACHED_STATES + PACKED_STATES  # the cache of record states ends full
NO_CHANGE_ROUNDS = 100
MB = 1_000_000  # the aim's unit: decimal megabytes, not MiB

_encode = msgspec.msgpack.Encoder().encode


class Memory(NamedTuple):
    """A process's memory from /proc/<pid>/status, in bytes."""

    rss: int
    peak: int
    anon: int
    file: int
    threads: int


def memory(pid: int) -> Memory:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    return Memory(
        fields["VmRSS"], fields["VmHWM"], fields["RssAnon"], fields["RssFile"], fields["Threads"]
    )


def server_pid(url: str) -> int:
    """The pid of our child process serving `url` (`bench.http_sync.serving` starts it)."""
    port = url.rsplit(":", 1)[1]
    for task in Path("/proc/self/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"serve" in argv and port.encode() in argv:
                return int(child)
    raise RuntimeError(f"no child process serves {url}")


@contextmanager
def served(data: Path) -> Iterator[tuple[str, int]]:
    """`lianxin serve` on `data`: its URL and pid."""
    with serving(data) as url:
        yield url, server_pid(url)


@dataclass
class Phase:
    name: str
    store: Memory
    empty: Memory


@dataclass
class Results:
    records: int = 0
    changes: int = 0
    store_bytes: int = 0
    built_seconds: float | None = None
    builder_peak: int | None = None
    phases: list[Phase] = field(default_factory=list)


def users(data: Path) -> tuple[str, str]:
    """The city supervisor's and the pushing mediator's user ids, from the store."""
    conn = read_only(data / "lianxin.db")
    try:
        (supervisor,) = conn.execute(
            "SELECT user_id FROM users WHERE role = 'supervisor' ORDER BY created_at_ms LIMIT 1"
        ).fetchone()
        (mediator,) = conn.execute(
            "SELECT user_id FROM users WHERE role = 'mediator' AND org_units LIKE ?",
            [f"%{DISTRICT}%"],
        ).fetchone()
    finally:
        conn.close()
    return supervisor, mediator


def build(data: Path, records: int, seed: int, say: Callable[[str], None]) -> tuple[float, int]:
    """Set the office up and push `records` cases through a server: seconds, the server's peak."""
    say(f"setting up an office in {data} through the command line")
    codes = set_up_office(data)
    with served(data) as (url, pid), httpx.Client(base_url=url, timeout=120) as http:
        say(f"pushing {records:,} cases to {url} (untimed)")
        seconds = fill(mediator_books(http, codes, seed), records, say)
        return seconds, memory(pid).peak


def workload(
    url: str, supervisor: str, mediator: str, data: Path, seed: int, logged: int
) -> Iterator[str]:
    """The measured steps against one server holding `logged` changes; yields after each,
    naming it."""
    with httpx.Client(base_url=url, timeout=300) as http:
        reader = enroll(http, lianxin(data, "code", supervisor), "supervisor laptop")
        pusher = enroll(http, lianxin(data, "code", mediator), "mediator phone")
        yield "after start-up and two enrolments"
        _, items, cursor = pull_everything(reader, BIG_PAGE)
        if items != logged:  # the pull that once set the peak must have carried everything
            raise RuntimeError(f"the whole pull brought {items:,} items of {logged:,}")
        yield f"after a whole pull in pages of {BIG_PAGE:,}"
        # New ids each run, so a kept store takes them as new cases with new parties.
        # (With the seed's party ids, each run's cases linked the parties of every
        # run before: the server then read all of those cases to work out who may
        # see each party, and the peak grew by 8 MB a run.)
        run_id = f"{random.Random().getrandbits(32):08x}"
        made = [
            doc._replace(
                record_id=f"case-mem-{run_id}-{n:05d}",
                parties=[f"{party}-{run_id}" for party in doc.parties],
            )
            for n, doc in enumerate(documents(PUSHED, pusher.user_id, random.Random(seed)))
        ]
        clock = Clock()
        for first in range(0, PUSHED, BATCH):
            changes = [d.change(pusher.device_id, clock) for d in made[first : first + BATCH]]
            answer = pusher.post(PUSH, pusher.batch(changes), PushResponse)
            if {r.status for r in answer.results} != {"applied"}:
                raise RuntimeError(f"a case was not applied: {answer.results[:3]}")
        pulled = 0
        while True:
            page = reader.pull(cursor, 1000)
            pulled += len(page.items)
            cursor = page.cursor
            if not page.has_more:
                break
        if pulled != PUSHED:
            raise RuntimeError(f"the incremental pull brought {pulled} items of {PUSHED}")
        body = _encode(PullRequest(cursor=cursor, limit=1000))
        for _ in range(NO_CHANGE_ROUNDS):
            if reader.post(PULL, body, PullPage).items:
                raise RuntimeError("a no-change pull brought changes")
        yield f"after {PUSHED:,} pushed, pulled back and {NO_CHANGE_ROUNDS} no-change pulls"


def measure(
    data: Path, empty: Path, logged: int, seed: int, say: Callable[[str], None]
) -> list[Phase]:
    """The workload against the full store's server (holding `logged` changes) and the
    empty office's, step by step."""
    phases = []
    with served(data) as (url, pid), served(empty) as (empty_url, empty_pid):
        say(f"serving the store on {url} (pid {pid}), the empty office on {empty_url}")
        steps = workload(url, *users(data), data, seed, logged)
        empty_steps = workload(empty_url, *users(empty), empty, seed, 0)
        for name, _ in zip(steps, empty_steps, strict=True):
            phase = Phase(name, memory(pid), memory(empty_pid))
            phases.append(phase)
            say(f"{name}: {phase.store.rss / MB:.0f} MB ({phase.empty.rss / MB:.0f} MB empty)")
    return phases


def _check(path: Path, records: int) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (stored,) = conn.execute("SELECT count(*) FROM records").fetchone()
        (changes,) = conn.execute("SELECT count(*) FROM changes").fetchone()
    finally:
        conn.close()
    if stored < records:
        raise RuntimeError(f"the store holds {stored:,} records, fewer than {records:,}")
    return stored, changes


def run(records: int, store: Path | None, seed: int, say: Callable[[str], None]) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="lianxin-memory-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = (store or tmp) / "office"
        if (data / "lianxin.db").exists():
            say(f"reusing the office in {data}")
        else:
            results.built_seconds, results.builder_peak = build(data, records, seed, say)
        results.records, results.changes = _check(data / "lianxin.db", records)
        results.store_bytes = sum(p.stat().st_size for p in data.glob("*.db*"))
        say(f"{results.records:,} records, {results.changes:,} changes stored")
        empty = tmp / "empty-office"
        set_up_office(empty)
        results.phases = measure(data, empty, results.changes, seed, say)
    return results


def rows(r: Results) -> list[Row]:
    def mb(value: int) -> str:
        return f"{value / MB:,.1f}"

    table = []
    for phase in r.phases:
        table.append(
            Row(
                f"VmRSS {phase.name} (MB)",
                mb(phase.store.rss),
                "",
                "",
                f"empty office {mb(phase.empty.rss)}",
                f"{phase.store.rss / phase.empty.rss:.2f}×",
            )
        )
    last = r.phases[-1]
    table += [
        Row(
            f"VmHWM, the peak, with {r.records:,} records (MB)",
            mb(last.store.peak),
            f"≤ {TARGET_MB:g}",
            # The aim is for a million records: a smaller run earns no verdict.
            ("met" if last.store.peak <= TARGET_MB * MB else "missed")
            if r.records >= RECORDS
            else "",
            f"empty office {mb(last.empty.peak)}",
            f"{last.store.peak / last.empty.peak:.2f}×",
        ),
        Row(
            "  RssAnon / RssFile at the end (MB)",
            f"{mb(last.store.anon)} / {mb(last.store.file)}",
            "",
            "",
            f"empty office {mb(last.empty.anon)} / {mb(last.empty.file)}",
            "",
        ),
        Row(
            "  threads at the end",
            f"{last.store.threads}",
            "",
            "",
            f"empty office {last.empty.threads}",
            "",
        ),
    ]
    if r.builder_peak is not None and r.built_seconds is not None:
        table.append(
            Row(
                f"VmHWM of the server that took the {r.records:,} cases (MB)",
                mb(r.builder_peak),
                "",
                "",
                f"built in {r.built_seconds:,.0f} s",
                "",
            )
        )
    return table


HEADING = "## Server memory with 1,000,000 stored records (bench/memory.py)"
INTRO = """
    make bench-memory   # = uv run python -m bench.memory (builds 1,000,000 cases first)

An office filled over HTTP through the real push path (one change a case,
untimed), then a fresh `lianxin serve` on it with production defaults,
its memory read from `/proc/<pid>/status` after start-up, after a
supervisor pulls everything in pages of 5,000, and after 10,000 new cases
(enough to fill the state cache) are pushed, pulled back and followed by
100 no-change pulls; baseline: the same steps against a server on an empty
office, in the same run. SQLite runs with its default page cache (about
2 MB a connection) and no mmap. See the docstring of `bench/memory.py`.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--records", type=int, default=RECORDS, help="cases stored (1,000,000)")
    parser.add_argument(
        "--store", type=Path, help="build the office in this folder and keep it; reuse it next time"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--record", action="store_true", help="append to docs/BENCHMARKS.md")
    parser.add_argument("--note", default="", help="a remark to record with the table")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"  {line}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    started = time.perf_counter()
    results = run(args.records, args.store, args.seed, say)
    table = rows(results)
    summary = (
        f"{results.records:,} records and {results.changes:,} changes stored,"
        f" {results.store_bytes / MB:,.0f} MB of SQLite files;"
        f" whole run {time.perf_counter() - started:,.0f} s."
    )
    print()
    print(plain(table))
    print()
    print(summary)
    print(f"machine: {machine()}")
    if args.record:
        command = "uv run python -m bench.memory"
        command += f" --records {args.records}" if args.records != RECORDS else ""
        command += " --record"
        record(HEADING, INTRO, dated_block(command, table, args.note, summary))
        print("recorded in docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
