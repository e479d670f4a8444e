"""Storage benchmark: changes applied by the engine against plain inserts of the same rows.

    uv run python -m bench.apply_changes            # 100,000 changes, batches of 500
    uv run python -m bench.apply_changes --changes 10000
    uv run python -m bench.apply_changes --record   # also append a row to docs/BENCHMARKS.md

A deterministic workload (seeded) is built first and not timed: devices in
offices create cases and then edit fields, move statuses, tag, append notes,
delete and restore, some from stale views so that edits are concurrent and
conflicts open and settle; a few changes are invalid and get quarantined; one
device's clock runs days ahead and gets clamped. Every change is encoded to
msgpack once and decoded back, so the engine gets what a server receives.

Timed, in one process whose cyclic collector is tuned as `lianxin serve` tunes
it (`server.memory.collect_less`; `--default-gc` keeps Python's thresholds):

- engine: `sync.engine.apply_batch` over every batch into a fresh file-backed
  `SqliteStore` (dedupe, merge, conflicts, sequencing, quarantine, writes);
- plain:  the rows the engine stored in its change log (every column, as
  stored) inserted again with `executemany`, one transaction per batch, into
  a fresh file with the same schema, indexes and pragmas.

Afterwards (not timed) the engine's store is checked: every change stored
exactly once (change log plus quarantine), sequences contiguous, every
answer as expected and every record's merge state equal to the state the
generator computed. A digest of the stored rows is printed so that two code
versions can be shown to store exactly the same thing.

`--free-merge` measures a ceiling: what the engine would reach if merging
cost nothing. An untimed run records every answer of `merge.apply_change`
and `merge.conflicts_touching`; the timed run gets them back in call order
instead of merging, and stores exactly the same rows (same checks, same
digest). Whatever the ratio is then, a faster merge alone cannot beat it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import msgspec
import sqlite_utils

from bench.recording import machine
from schemas.changes import Add, Append, Change, Delete, Op, Remove, Restore
from schemas.records import CASE_STATUS
from schemas.state import RecordState
from server.keys import OfficeKeys
from server.memory import collect_less
from server.storage.migrations import migrate
from server.storage.sqlite import SqliteStore, bind
from server.storage.vault import Vault
from sync import engine as engine_module
from sync import merge
from sync.atrest import KdfParams, open_sealed
from sync.clock import COUNTER_MASK, DEFAULT_MAX_DRIFT_MS, Clock, pack
from sync.engine import apply_batch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
RECORDED_RUNS = "## Recorded runs"  # bench/http_sync.py puts its section before this heading
RECORDS_INTRO = (
    "`uv run python -m bench.apply_changes --record` adds a row here"
    " (ratio: engine changes/s over plain inserts/s, by wall clock and by CPU time)."
)
RECORD_HEADER = (
    "| date (UTC) | changes | batch | engine changes/s | plain inserts/s | ratio | cpu ratio"
    " | machine |\n"
    "|---|---:|---:|---:|---:|---:|---:|---|\n"
)

START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
STEP_MS = 10_000
DEVICES = 200
OFFICE_SIZE = 5
MAX_LAG = 3  # a stale view misses at most this many of the record's latest changes
BROKEN_CLOCK_SKEW_MS = 3 * 24 * 60 * 60 * 1000  # past the server's 24 h drift bound

# Weights of the kinds of change tried; a try that makes no sense (moving a closed
# case, editing one the device sees deleted) is skipped, so creations end up ~16%
# of the changes: 100,000 changes touch ~16,000 cases.
KINDS = {
    "create": 15,
    "edit": 30,
    "status": 14,
    "tag": 14,
    "note": 22,
    "delete": 0.4,
    "invalid": 0.6,
}
STALE_SHARE = 0.12  # edits made from a view that misses the latest changes
NEXT_STATUS_WEIGHT = {
    "assigned": 6,
    "in_mediation": 5,
    "resolved": 4,
    "closed": 4,
    "referred": 1,
    "withdrawn": 1,
}
CATEGORIES = ["neighbour", "property", "labour", "family", "land", "tenancy", "consumer"]
WORDS = (  # noqa: SIM905 - a list literal would be one word a line
    "漏水 噪音 邻里 停车 物业 拆迁 工资 装修 宠物 排水 围墙 占道 租金 合同 赡养 宅基地"
    " 楼上 楼下 业主 租户 施工 维修 协商 调解 现场 走访 双方 同意 补偿 赔偿 期限 复查"
).split()
TAGS = ["urgent-followup", "elderly", "repeat", "media", "legal-aid", "interpreter", "night"]
PRIORITIES = ["low", "normal", "high", "urgent"]
DISTRICTS = ["Gulou", "Taijiang", "Cangshan", "Jin'an", "Mawei"]


class _SimTime:
    """The simulated wall clock all device clocks read (plus their own skew)."""

    def __init__(self) -> None:
        self.now_ms = START_MS


class _DeviceWall:
    def __init__(self, sim: _SimTime, skew_ms: int) -> None:
        self.sim = sim
        self.skew_ms = skew_ms

    def __call__(self) -> int:
        return self.sim.now_ms + self.skew_ms


@dataclass
class _Device:
    device_id: str
    office: int
    clock: Clock


@dataclass
class _Record:
    """One case as the server holds it, with its last few states for stale views."""

    record_id: str
    office: int
    states: list[RecordState]  # newest last
    authors: list[str]  # authors[i] made the change that produced states[i]
    notes: int = 0


@dataclass
class Workload:
    changes: list[Change]
    raws: list[bytes]
    server_wall_ms: int
    expected_states: dict[tuple[str, str], bytes]
    expected_accepted: int
    expected_rejected: int
    expected_conflict_answers: int
    expected_open_conflicts: int
    kinds: Counter[str] = field(default_factory=Counter)
    stale: int = 0
    build_seconds: float = 0.0

    @property
    def records(self) -> int:
        return len(self.expected_states)


class _Generator:
    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.rng = random.Random(seed)
        self.sim = _SimTime()
        self.devices: list[_Device] = []
        for n in range(DEVICES):
            skew = self.rng.randint(-2_000, 2_000)
            if n == DEVICES - 1:
                skew = BROKEN_CLOCK_SKEW_MS
            wall = _DeviceWall(self.sim, skew)
            self.devices.append(_Device(f"dev-{n:03d}", n // OFFICE_SIZE, Clock(wall)))
        self.offices = DEVICES // OFFICE_SIZE
        self.records: list[_Record] = []
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(Change)
        self.changes: list[Change] = []
        self.raws: list[bytes] = []
        self.kinds: Counter[str] = Counter()
        self.stale = 0
        self.rejected = 0
        self.in_conflict = 0  # changes the server must answer `conflict`
        # The server's clock is frozen just after the simulated period.
        self.server_wall_ms = START_MS + (count + 1) * STEP_MS
        self.server_limit = pack(self.server_wall_ms + DEFAULT_MAX_DRIFT_MS, COUNTER_MASK)

    def build(self) -> Workload:
        names = list(KINDS)
        weights = list(KINDS.values())
        while len(self.changes) < self.count:
            # About one change every ten seconds, across all devices.
            self.sim.now_ms = max(
                self.sim.now_ms,
                START_MS + len(self.changes) * STEP_MS + self.rng.randrange(STEP_MS),
            )
            kind = "create" if len(self.records) < 20 else self.rng.choices(names, weights)[0]
            if getattr(self, f"_{kind}")():
                self.kinds[kind] += 1
        expected = {("case", r.record_id): self.encoder.encode(r.states[-1]) for r in self.records}
        still_open = sum(len(merge.conflicts(r.states[-1])) for r in self.records)
        return Workload(
            changes=self.changes,
            raws=self.raws,
            server_wall_ms=self.server_wall_ms,
            expected_states=expected,
            expected_accepted=len(self.changes) - self.rejected,
            expected_rejected=self.rejected,
            expected_conflict_answers=self.in_conflict,
            expected_open_conflicts=still_open,
            kinds=self.kinds,
            stale=self.stale,
        )

    # -- picking who edits what, from which view ---------------------------------

    def _pick_record(self) -> _Record:
        # Recent cases are the busy ones; early on, any case.
        back = int(self.rng.expovariate(1 / 600))
        if back >= len(self.records):
            back = self.rng.randrange(len(self.records))
        return self.records[len(self.records) - 1 - back]

    def _pick_device(self, office: int) -> _Device:
        if self.rng.random() < 0.05:  # a supervisor or a colleague from elsewhere
            return self.rng.choice(self.devices)
        return self.devices[office * OFFICE_SIZE + self.rng.randrange(OFFICE_SIZE)]

    def _view(self, record: _Record, device: _Device) -> RecordState | None:
        """The state the device edits from: usually current, sometimes a few changes behind.

        None when the device sees the case deleted: it leaves it alone, so only
        edits that had not seen the delete keep a case in a `deleted` conflict.
        """
        view = record.states[-1]
        if self.rng.random() < STALE_SHARE and len(record.states) > 1:
            lag = self.rng.randint(1, len(record.states) - 1)
            # A device has always seen its own changes.
            if device.device_id not in record.authors[-lag:]:
                view = record.states[-1 - lag]
        if merge.is_deleted(view):
            return None
        if view is not record.states[-1]:
            self.stale += 1
        return view

    def _emit(
        self,
        record: _Record | None,
        record_id: str,
        device: _Device,
        view: RecordState | None,
        set: dict[str, Any] | None = None,
        ops: Sequence[Op] = (),
        *,
        valid: bool = True,
    ) -> None:
        seen = {d: s for d, s in view.vv.items() if d != device.device_id} if view else {}
        # Taking in what it has seen keeps the device's clock ahead of it (HLC).
        hlc = device.clock.receive(max(seen.values(), default=0)).stamp
        change = Change(
            change_id=f"{self.rng.getrandbits(128):032x}",
            record_type="case",
            record_id=record_id,
            device_id=device.device_id,
            hlc=hlc,
            seen=seen,
            set=set or {},
            ops=list(ops),
        )
        raw = self.encoder.encode(change)
        change = self.decoder.decode(raw)  # exactly what the server will get
        current = record.states[-1] if record else None
        outcome = merge.apply_change(current, change, min(change.hlc, self.server_limit))
        if valid:
            if outcome.rejected is not None:
                raise AssertionError(f"workload bug: {outcome.rejected}")
            assert outcome.state is not None
            if record is None:
                record = _Record(record_id, device.office, [], [])
                self.records.append(record)
            record.states.append(outcome.state)
            record.authors.append(device.device_id)
            # Answered `conflict` as the engine answers it (sync/engine.py).
            state = outcome.state
            self.in_conflict += any(
                any(each.change_id == change.change_id for each in conflict.candidates)
                or (conflict.field == merge.DELETED_FIELD and merge.contests_delete(change, state))
                for conflict in merge.conflicts_touching(change, state)
            )
            del record.states[: -MAX_LAG - 1], record.authors[: -MAX_LAG - 1]
        else:
            if outcome.rejected is None:
                raise AssertionError("workload bug: an invalid change applied")
            self.rejected += 1
        self.changes.append(change)
        self.raws.append(raw)

    def _text(self, low: int, high: int) -> str:
        return "".join(self.rng.choices(WORDS, k=self.rng.randint(low, high)))

    # -- the kinds of change ------------------------------------------------------

    def _create(self) -> bool:
        office = self.rng.randrange(self.offices)
        device = self._pick_device(office)
        record_id = f"case-{len(self.records):06d}"
        fields = {
            "category": self.rng.choice(CATEGORIES),
            "title": self._text(3, 8),
            "summary": self._text(20, 80),
            "location": {
                "city": "Fuzhou",
                "district": self.rng.choice(DISTRICTS),
                "street": f"street-{self.rng.randrange(40)}",
                "community": f"community-{self.rng.randrange(300)}",
            },
            "priority": self.rng.choice(PRIORITIES),
            "households": self.rng.randint(1, 12),
            "status": "new",
        }
        ops: list[Op] = [Add(field="mediators", value=device.device_id)]
        ops += [
            Add(field="parties", value=f"party-{self.rng.getrandbits(40):010x}")
            for _ in range(self.rng.randint(1, 3))
        ]
        self._emit(None, record_id, device, None, fields, ops)
        return True

    def _edit(self) -> bool:
        record = self._pick_record()
        device = self._pick_device(record.office)
        view = self._view(record, device)
        if view is None:
            return False
        choices: dict[str, Any] = {
            "title": lambda: self._text(3, 8),
            "summary": lambda: self._text(20, 80),
            "priority": lambda: self.rng.choice(PRIORITIES),
            "households": lambda: self.rng.randint(1, 40),
            "due": lambda: f"2025-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}",
            "category": lambda: self.rng.choice(CATEGORIES),
        }
        names = self.rng.sample(list(choices), k=self.rng.choice([1, 1, 1, 2, 3]))
        self._emit(record, record.record_id, device, view, {n: choices[n]() for n in names})
        return True

    def _status(self) -> bool:
        record = self._pick_record()
        device = self._pick_device(record.office)
        view = self._view(record, device)
        if view is None:
            return False
        current = merge.materialize(view).status  # type: ignore[attr-defined]
        targets = sorted(CASE_STATUS.transitions[current])
        if not targets:
            return False
        weights = [NEXT_STATUS_WEIGHT[t] for t in targets]
        target = self.rng.choices(targets, weights)[0]
        self._emit(record, record.record_id, device, view, {"status": target})
        return True

    def _tag(self) -> bool:
        record = self._pick_record()
        device = self._pick_device(record.office)
        view = self._view(record, device)
        if view is None:
            return False
        present = sorted(view.sets.get("tags", {}))
        if present and self.rng.random() < 0.2:
            op: Op = Remove(field="tags", value=self.rng.choice(present))
        else:
            op = Add(field="tags", value=self.rng.choice(TAGS))
        self._emit(record, record.record_id, device, view, ops=[op])
        return True

    def _note(self) -> bool:
        record = self._pick_record()
        device = self._pick_device(record.office)
        view = self._view(record, device)
        if view is None:
            return False
        record.notes += 1
        at = datetime.fromtimestamp(self.sim.now_ms / 1000, UTC).isoformat()
        entry = {
            "entry_id": f"{record.record_id}.n{record.notes}",
            "at": at,
            "by": device.device_id,
            "text": self._text(10, 60),
        }
        if self.rng.random() < 0.3:
            entry_type = "visits"
            entry = {
                "entry_id": entry["entry_id"],
                "at": at,
                "by": device.device_id,
                "summary": entry["text"],
                "attendees": [device.device_id],
            }
        else:
            entry_type = "notes"
        self._emit(
            record, record.record_id, device, view, ops=[Append(field=entry_type, entry=entry)]
        )
        return True

    def _delete(self) -> bool:
        record = self._pick_record()
        device = self._pick_device(record.office)
        view = record.states[-1]
        op: Op = Restore() if merge.is_deleted(view) else Delete()
        self._emit(record, record.record_id, device, view, ops=[op])
        return True

    def _invalid(self) -> bool:
        record = self._pick_record()
        device = self._pick_device(record.office)
        view = record.states[-1]
        current = merge.materialize(view).status  # type: ignore[attr-defined]
        allowed = CASE_STATUS.transitions[current] | {current}
        illegal = sorted(set(CASE_STATUS.rank) - allowed)
        set_: dict[str, Any] | None
        ops: list[Op] = []
        match self.rng.randrange(4):
            case 0:
                set_ = {"status": self.rng.choice(illegal)}
            case 1:
                set_ = {"priority": "extreme"}
            case 2:
                set_ = {"colour": "red"}
            case _:
                set_, ops = None, [Append(field="tags", entry="x")]  # tags is a set, not a log
        self._emit(record, record.record_id, device, view, set_, ops, valid=False)
        return True


def build_workload(count: int, seed: int) -> Workload:
    """A deterministic stream of `count` changes (see the module docstring)."""
    start = time.perf_counter()
    workload = _Generator(count, seed).build()
    workload.build_seconds = time.perf_counter() - start
    return workload


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@dataclass
class Answers:
    """A tally of the engine's answers (kept small: a server drops answers once sent)."""

    statuses: Counter[str] = field(default_factory=Counter)
    clamped: int = 0
    total: int = 0


class Timing(NamedTuple):
    """Wall-clock seconds, and this process's CPU seconds (steadier on a shared machine)."""

    seconds: float
    cpu_seconds: float

    @classmethod
    def since(cls, start: Timing) -> Timing:
        return cls(time.perf_counter() - start.seconds, time.process_time() - start.cpu_seconds)

    @classmethod
    def start(cls) -> Timing:
        return cls(time.perf_counter(), time.process_time())


def run_engine(
    workload: Workload, batch_size: int, path: Path
) -> tuple[Timing, SqliteStore, Answers]:
    """Apply the workload through the engine; return its timing, the store and its answers."""
    keys = OfficeKeys.generate("bench passphrase", KdfParams.new(n=2**10))
    store = SqliteStore(path, Vault(path.with_name(path.name + ".keys"), keys))
    clock = Clock(lambda: workload.server_wall_ms)
    changes, raws = workload.changes, workload.raws
    batches = list(zip(_batches(changes, batch_size), _batches(raws, batch_size), strict=True))
    tally = Answers()
    start = Timing.start()
    for batch, batch_raws in batches:
        answers = apply_batch(store, batch, clock, batch_raws)
        tally.total += len(answers)
        tally.statuses.update(a.status for a in answers)
        tally.clamped += sum(a.clamped for a in answers)
    store.flush()  # the checkpoints still owed are part of the work
    return Timing.since(start), store, tally


@contextlib.contextmanager
def merging_replayed(workload: Workload, batch_size: int, scratch: Path) -> Iterator[None]:
    """Inside: the engine merges nothing; it gets back, in call order, the answers that
    merging gave it in an untimed run of the same workload (the `--free-merge` ceiling)."""
    answers: list[Any] = []

    def recorded(function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            answers.append(result := function(*args))
            return result

        return call

    def stand_in(apply_change: Callable[..., Any], touching: Callable[..., Any]) -> Any:
        return SimpleNamespace(
            Outcome=merge.Outcome,
            Rejected=merge.Rejected,
            apply_change=apply_change,
            conflicts_touching=touching,
        )

    try:
        engine_module.merge = stand_in(
            recorded(merge.apply_change), recorded(merge.conflicts_touching)
        )
        _, store, _ = run_engine(workload, batch_size, scratch)
        store.close()
        replay = iter(answers)
        engine_module.merge = stand_in(lambda *_: next(replay), lambda *_: next(replay))
        yield
    finally:
        engine_module.merge = merge


def stored_change_rows(store: SqliteStore) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns and every row of the engine's change log, as stored."""
    cursor = store.db.execute("SELECT * FROM changes ORDER BY seq")
    return [column[0] for column in cursor.description], cursor.fetchall()


def run_plain(
    columns: list[str], rows: list[tuple[Any, ...]], batch_size: int, path: Path
) -> Timing:
    """Insert the rows into the change log table, one transaction per batch; time it.

    The file gets the store's pragmas and all of its migrations, so the table
    has the same columns and indexes as the engine's.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(sqlite_utils.Database(conn))
    insert = f"INSERT INTO changes ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    batches = _batches(rows, batch_size)
    start = Timing.start()
    for batch in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, batch)
        conn.execute("COMMIT")
    timing = Timing.since(start)
    stored = conn.execute("SELECT count(*) FROM changes").fetchone()[0]
    conn.close()
    if stored != len(rows):
        raise AssertionError(f"plain run stored {stored} of {len(rows)} rows")
    return timing


@dataclass
class Verified:
    statuses: Counter[str]
    clamped: int
    open_conflicts: int
    conflict_rows: int
    digest: str


def reopened(store: SqliteStore) -> SqliteStore:
    """`store` closed (its owed checkpoints written) and its file opened again with no
    state cached, so that what is checked is what was written."""
    path, keys = store.path, store.vault.keys
    store.close()
    vault = Vault(path.with_name(path.name + ".keys"), keys)
    return SqliteStore(path, vault, cached_states=0, packed_states=0)


def verify(store: SqliteStore, workload: Workload, answers: Answers) -> Verified:
    """Check that the engine stored every change exactly once and as expected; raise if not."""
    db = store.db
    total = len(workload.changes)

    def one(sql: str) -> Any:
        return db.execute(sql).fetchone()[0]

    logged = one("SELECT count(*) FROM changes")
    quarantined = one("SELECT count(*) FROM quarantine")
    problems = []
    if logged + quarantined != total:
        problems.append(f"{logged} logged + {quarantined} quarantined != {total} changes")
    if (logged, quarantined) != (workload.expected_accepted, workload.expected_rejected):
        problems.append(
            f"expected {workload.expected_accepted} logged and {workload.expected_rejected}"
            f" quarantined, found {logged} and {quarantined}"
        )
    distinct = one(
        "SELECT count(*) FROM"
        " (SELECT change_id FROM changes UNION SELECT change_id FROM quarantine)"
    )
    if distinct != total or len({c.change_id for c in workload.changes}) != total:
        problems.append(f"{distinct} distinct stored change ids for {total} changes")
    if one("SELECT coalesce(max(seq), 0) FROM changes") != logged:
        problems.append("change sequence is not contiguous")
    statuses = answers.statuses
    expected_statuses = {
        "applied": workload.expected_accepted - workload.expected_conflict_answers,
        "conflict": workload.expected_conflict_answers,
        "rejected": workload.expected_rejected,
    }
    if answers.total != total or statuses != Counter(expected_statuses):
        problems.append(f"answers {dict(statuses)}, expected {expected_statuses}")
    open_conflicts = one("SELECT count(*) FROM conflicts WHERE settled_seq IS NULL")
    if open_conflicts != workload.expected_open_conflicts:
        problems.append(
            f"{open_conflicts} open conflicts stored, {workload.expected_open_conflicts} expected"
        )
    encode = msgspec.msgpack.encode
    stored_states = {(s.record_type, s.record_id): encode(s) for s in store.all_states()}
    if stored_states != workload.expected_states:
        differing = sum(
            stored_states.get(key) != blob for key, blob in workload.expected_states.items()
        )
        problems.append(f"{differing} of {workload.records} record states differ from expected")
    # Closed, the store owes no checkpoint: each is the record's newest state, as of its
    # last logged change.
    rows = db.execute(
        "SELECT r.record_type, r.record_id, r.seq, r.state, (SELECT max(c.seq) FROM changes c"
        " WHERE c.record_type = r.record_type AND c.record_id = r.record_id) FROM records r"
    ).fetchall()
    data_keys = store.vault.data_keys((t, i) for t, i, *_ in rows)
    stale = [
        (t, i)
        for t, i, seq, sealed, last in rows
        if seq != last
        or open_sealed(data_keys[(t, i)], sealed, bind("records", (t, i)))
        != workload.expected_states.get((t, i))
    ]
    if stale:
        problems.append(
            f"{len(stale)} stored checkpoints are not the newest state, e.g. {stale[0]}"
        )
    if problems:
        raise AssertionError("benchmark run is broken: " + "; ".join(problems))
    return Verified(
        statuses=statuses,
        clamped=answers.clamped,
        open_conflicts=one("SELECT count(*) FROM conflicts WHERE settled_seq IS NULL"),
        conflict_rows=one("SELECT count(*) FROM conflicts"),
        digest=store_digest(store),
    )


def store_digest(store: SqliteStore) -> str:
    """A hash of everything the engine stored, opened, to compare two versions of the code.

    Sealed columns are hashed as what they open to: their bytes differ from run to
    run (fresh keys and nonces).
    """
    digest = hashlib.sha256()
    encode = msgspec.msgpack.encode
    db = store.db
    rows = db.execute(
        "SELECT seq, change_id, record_type, record_id, device_id, hlc, status, result, raw"
        " FROM changes ORDER BY seq"
    ).fetchall()
    opened = store.open_changes([(t, i, c, raw) for _, c, t, i, *_, raw in rows])
    for row, raw in zip(rows, opened, strict=True):
        digest.update(encode((*row[:-1], raw)))
    for quarantined in store.quarantined():
        digest.update(encode(quarantined))
    # Not `records.seq`: it says which checkpoint is stored, which depends on cache sizes.
    for key_row in db.execute(
        "SELECT record_type, record_id, deleted FROM records ORDER BY record_type, record_id"
    ):
        digest.update(encode(key_row))
    for state in store.all_states():
        digest.update(encode(state))
    for conflict_row in db.execute(
        "SELECT record_type, record_id, field, kind, opened_seq, updated_seq, settled_seq"
        " FROM conflicts ORDER BY id"
    ):
        digest.update(encode(conflict_row))
    for conflict in store.open_conflicts():
        digest.update(encode(conflict))
    return digest.hexdigest()[:16]


def record_row(
    changes: int,
    batch_size: int,
    engine_rate: float,
    plain_rate: float,
    cpu_ratio: float,
    note: str = "",
) -> str:
    """One row of the recorded-runs table (RECORD_HEADER), dated today (UTC)."""
    today = datetime.now(UTC).date().isoformat()
    who = machine() + (f"; {note}" if note else "")
    return (
        f"| {today} | {changes:,} | {batch_size} | {engine_rate:,.0f} | {plain_rate:,.0f}"
        f" | {engine_rate / plain_rate:.1%} | {cpu_ratio:.1%} | {who} |\n"
    )


def append_record(row: str, path: Path = BENCHMARKS_MD) -> None:
    """Add a row to this benchmark's "Recorded runs" table, creating it at the file's end.

    bench/http_sync.py puts its section before that table, so the table stays
    last; the row still goes straight after the table's last row.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    at = text.find(RECORD_HEADER)
    if at < 0:
        text = text.rstrip("\n") + f"\n\n{RECORDED_RUNS}\n\n{RECORDS_INTRO}\n\n{RECORD_HEADER}"
        at = text.index(RECORD_HEADER)
    end = at + len(RECORD_HEADER)
    while text.startswith("|", end):
        newline = text.find("\n", end)
        if newline < 0:
            text += "\n"
            newline = len(text) - 1
        end = newline + 1
    path.write_text(text[:end] + row + text[end:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.apply_changes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--changes", type=int, default=100_000, help="how many changes (100,000)")
    parser.add_argument("--batch-size", type=int, default=500, help="changes per batch (500)")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (7)")
    parser.add_argument(
        "--record", action="store_true", help=f"append the figures to {BENCHMARKS_MD.name}"
    )
    parser.add_argument("--note", default="", help="a remark to record with the figures")
    parser.add_argument(
        "--free-merge",
        action="store_true",
        help="the ceiling: the engine with merging and conflict detection free (replayed)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep Python's collector thresholds (default: tuned as `lianxin serve` tunes them)",
    )
    args = parser.parse_args(argv)
    if args.changes < 1 or args.batch_size < 1:
        parser.error("--changes and --batch-size must be positive")
    if args.free_merge and args.record:
        parser.error("--free-merge measures a ceiling, not the engine: it is not recorded")

    workload = build_workload(args.changes, args.seed)
    kinds = ", ".join(f"{n} {kind}" for kind, n in workload.kinds.most_common())
    print(
        f"workload: {len(workload.changes):,} changes to {workload.records:,} cases from"
        f" {DEVICES} devices (seed {args.seed}), built in {workload.build_seconds:.1f} s untimed"
    )
    print(f"  {kinds}; {workload.stale:,} made from stale views")

    with tempfile.TemporaryDirectory(prefix="lianxin-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # Keep the collector from walking the prepared workload during the timed runs, and
        # collect as `lianxin serve` does (server/memory.py) unless told otherwise.
        gc.collect()
        gc.freeze() if args.default_gc else collect_less()
        merging = (
            merging_replayed(workload, args.batch_size, tmp / "scratch.db")
            if args.free_merge
            else contextlib.nullcontext()
        )
        with merging:
            engine, store, answers = run_engine(workload, args.batch_size, tmp / "engine.db")
        columns, rows = stored_change_rows(store)
        gc.collect()
        gc.freeze()
        plain = run_plain(columns, rows, args.batch_size, tmp / "plain.db")
        gc.unfreeze()
        # Checked on the file, not on the states the writer still holds in memory.
        written = reopened(store)
        verified = verify(written, workload, answers)
        written.close()

    total = len(workload.changes)
    engine_rate, plain_rate = total / engine.seconds, len(rows) / plain.seconds
    ratio = engine_rate / plain_rate
    cpu_ratio = (total / engine.cpu_seconds) / (len(rows) / plain.cpu_seconds)
    print()
    heading = f"batches of {args.batch_size}"
    print(f"{heading:<22}{'rows':>9}{'seconds':>9}{'rows/s':>10}{'cpu s':>9}")
    for name, count, timing in (
        ("engine, merging free" if args.free_merge else "engine (apply_batch)", total, engine),
        ("plain inserts", len(rows), plain),
    ):
        print(
            f"{name:<22}{count:>9,}{timing.seconds:>9.2f}{count / timing.seconds:>10,.0f}"
            f"{timing.cpu_seconds:>9.2f}"
        )
    print(f"{'ratio engine / plain':<22}{ratio:>28.1%}{cpu_ratio:>9.1%}")
    print()
    s = verified.statuses
    print(
        f"verified: {s['applied']:,} applied, {s['conflict']:,} in conflict, {s['rejected']:,}"
        f" quarantined, {verified.clamped:,} clamped; {verified.conflict_rows:,} conflicts"
        f" opened, {verified.open_conflicts:,} still open; every change stored once;"
        f" {workload.records:,} record states as expected; digest {verified.digest}"
    )
    print(f"machine: {machine()}")
    if args.record:
        append_record(
            record_row(total, args.batch_size, engine_rate, plain_rate, cpu_ratio, args.note)
        )
        print(f"recorded in {BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
