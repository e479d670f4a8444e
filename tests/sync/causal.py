"""Causal histories and causal deliveries, for the merge-law property tests.

A *history* is what a few devices did to a few records while offline
(scenario 3, "Two mediators, one case, no signal"): each device is a
`sync.device.Replica` with its own injected wall clock, some hours off and
some jumping back, that edits records and now and then pulls what another
device holds. Its changes are what the server must merge.

A *delivery* is one way those changes can reach the server: any order in
which no change comes before a change its device had seen, any change sent
more than once, cut into batches, some batches retried whole.

Causality is computed here from the wire fields alone (DESIGN.md, "Records
are changed by field"): a change on a record had seen every change on that
record from its own device with a lower or equal stamp, and every change
from device D with a stamp up to its `seen[D]`.
"""

from __future__ import annotations

import functools
import itertools
import random
import shutil
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import msgspec
from hypothesis import strategies as st

from schemas import Add, Append, Change, ChangeResult, Conflict, Delete, Op, Reason, Remove, Restore
from schemas.records import AGREEMENT_STATUS, CASE_STATUS, WARNING_STATUS
from server.storage.sqlite import SqliteStore
from sync import merge
from sync.clock import Clock
from sync.device import Replica
from sync.engine import apply_batch
from tests.conftest import make_store

HOUR_MS = 60 * 60 * 1000
MINUTE_MS = 60 * 1000
BASE_MS = 1_795_000_000_000
"""2026-11-18: the shared "true" time at which every history starts."""
SERVER_WALL_MS = BASE_MS + 10 * HOUR_MS
"""The server's wall clock during deliveries: after the histories, so no honest stamp is absurd."""
MAX_SKEW_MS = 12 * HOUR_MS
"""Device clocks are off by at most this, well inside the clock's 24 h drift bound."""
SKEWS = st.integers(-MAX_SKEW_MS // 2, MAX_SKEW_MS // 2)

RecordKey = tuple[str, str]


# -- Histories ---------------------------------------------------------------------------------


class Timeline:
    """The true time shared by every device in one history."""

    def __init__(self, now_ms: int = BASE_MS) -> None:
        self.now_ms = now_ms


class SkewedWall:
    """One device's wall clock: the true time plus this device's skew, which can jump."""

    def __init__(self, timeline: Timeline, skew_ms: int) -> None:
        self.timeline = timeline
        self.skew_ms = skew_ms

    def __call__(self) -> int:
        return self.timeline.now_ms + self.skew_ms


@dataclass
class Device:
    replica: Replica
    wall: SkewedWall
    log: list[Change] = field(default_factory=list)
    """Every change this device applied, its own and received ones, in the order it applied them."""


@dataclass(repr=False)
class History:
    devices: dict[str, Device]
    records: list[RecordKey]
    changes: list[Change] = field(default_factory=list)
    """Every change the devices pushed, in the order they were made."""
    expected_rejections: dict[str, Reason] = field(default_factory=dict)
    """Changes built to be refused (an outdated or buggy client), with the reason they must get."""
    receive_rejections: list[tuple[str, str, Reason]] = field(default_factory=list)
    """(device, change id, reason) for each change a device refused when pulling it."""

    def __repr__(self) -> str:
        # What a failing example needs: the changes pushed, one a line.
        lines = [f"History of {len(self.changes)} changes to {self.records}:"]
        lines += [f"  {change!r}" for change in self.changes]
        lines.append(f"  expected rejections: {self.expected_rejections}")
        if self.receive_rejections:
            lines.append(f"  refused when pulled: {self.receive_rejections}")
        return "\n".join(lines)


def new_device(device_id: str, timeline: Timeline, skew_ms: int) -> Device:
    wall = SkewedWall(timeline, skew_ms)
    ids = itertools.count(1)
    replica = Replica(device_id, Clock(wall), new_id=lambda: f"{device_id}.{next(ids)}")
    return Device(replica, wall)


def pull(
    receiver: Device, source: Device, count: int | None = None, history: History | None = None
):
    """`receiver` takes in the first `count` changes `source` has applied, in `source`'s order.

    Taking them in the source's order keeps them causal: a device applied
    every change's causal past before the change itself.
    """
    for change in source.log[:count]:
        if change.change_id in receiver.replica.applied:
            continue
        rejected = receiver.replica.receive(change)
        if rejected is None:
            receiver.log.append(change)
        elif history is not None:
            history.receive_rejections.append(
                (receiver.replica.device_id, change.change_id, rejected.reason)
            )


TITLES = ["Drains overflow", "Grease on the block", "Noise at night", "Blocked lane"]
SUMMARIES = ["", "10 households plan to petition", "grease fouls the drains", "meeting on Friday"]
CASE_VALUES: dict[str, list[Any]] = {
    "title": TITLES,
    "summary": SUMMARIES,
    "priority": ["low", "normal", "high", "urgent"],
    "households": [0, 1, 10, 66],
    "status": sorted(CASE_STATUS.rank),
}
WARNING_VALUES: dict[str, list[Any]] = {
    "description": SUMMARIES,
    "severity": ["low", "medium", "high", "critical"],
    "response": ["", "case opened", "drains cleared"],
    "status": sorted(WARNING_STATUS.rank),
}
AGREEMENT_VALUES: dict[str, list[Any]] = {
    "terms": ["Grease trap within 14 days", "Trap within 7 days and cleaning monthly"],
    "version": [1, 2],
    "required_signers": [["p-owner"], ["p-owner", "p-1"], ["p-owner", "p-1", "p-2"]],
    "status": sorted(AGREEMENT_STATUS.rank),
}
SET_FIELDS = {
    "tags": ["drains", "grease", "noise"],
    "mediators": ["med-li", "med-wang", "med-zhao"],
}


def note(entry_id: str, by: str, text: str) -> dict[str, Any]:
    return {"entry_id": entry_id, "at": "2026-11-18T09:30:00Z", "by": by, "text": text}


def signature(signer: str) -> dict[str, Any]:
    return {
        "signer": signer,
        "signed_at": "2026-11-18T10:00:00Z",
        "content_hash": "ab" * 32,
        "signature": signer.encode() * 2,
    }


SIGNERS = ["p-owner", "p-neighbour", "p-witness"]
MACHINES = {"case": CASE_STATUS, "warning": WARNING_STATUS, "agreement": AGREEMENT_STATUS}
VALUES = {"case": CASE_VALUES, "warning": WARNING_VALUES, "agreement": AGREEMENT_VALUES}
FIELDS = {record_type: sorted(values) for record_type, values in VALUES.items()}
LWW_FIELD = {"case": "title", "warning": "description", "agreement": "terms"}
CASE_OPS = [
    *("add", "add", "remove", "remove", "note", "note", "repeat", "collide", "delete", "restore")
]
# Note ids every device may choose: two devices that chose one id for different notes.
SHARED_NOTE_IDS = ["n-shared-1", "n-shared-2"]


# Strategies are built once: building one per draw costs more than the merge under test.
@functools.cache
def between(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def choose(draw: st.DrawFn, values: list[Any]) -> Any:
    return values[draw(between(0, len(values) - 1))]


def make_edit(
    draw: st.DrawFn,
    record_type: str,
    device_id: str,
    serial: int,
    status: str | None,
    notes: list[Any],
) -> tuple[dict, list[Op]]:
    """One edit a device might make to a record: some fields set, some operations.

    `status` is the status the device shows (None: no status yet); most status
    edits are moves the state machine allows from it, some are not. `notes`
    are the notes it shows, which it may append again unchanged.
    """
    choices = VALUES[record_type]
    names = sorted({choose(draw, FIELDS[record_type]) for _ in range(draw(between(0, 3)))})
    sets = {name: choose(draw, choices[name]) for name in names}
    machine = MACHINES[record_type]
    legal = sorted(machine.initial if status is None else machine.transitions[status])
    # Often a legal move, so that devices get far along the machine and move concurrently;
    # often to an end state, which ties in rank with the other end states.
    if legal and ("status" in sets or not draw(between(0, 2))) and draw(between(0, 3)):
        ends = [s for s in legal if not machine.transitions[s]]
        sets["status"] = choose(draw, ends if ends and draw(between(0, 1)) else legal)
    ops: list[Op] = []
    unique = f"{device_id}.{serial}"
    if record_type == "case":
        for _ in range(draw(between(0, 2))):
            kind = choose(draw, CASE_OPS)
            if kind in ("add", "remove"):
                name = choose(draw, sorted(SET_FIELDS))
                element = choose(draw, SET_FIELDS[name])
                ops.append((Add if kind == "add" else Remove)(field=name, value=element))
            elif kind == "repeat" and notes:
                # The same entry from a second device, or twice in one change: the log must
                # read in one order whichever append arrives first.
                ops.append(Append(field="notes", entry=msgspec.to_builtins(choose(draw, notes))))
            elif kind == "collide":
                # Another device's note under this id, which this one had not seen, stays
                # beside this one; one it had seen it may only append again unchanged.
                entry_id = choose(draw, SHARED_NOTE_IDS)
                had = [n for n in notes if n.entry_id == entry_id]
                if had:
                    ops.append(Append(field="notes", entry=msgspec.to_builtins(choose(draw, had))))
                elif all(getattr(op, "entry", {}).get("entry_id") != entry_id for op in ops):
                    text = choose(draw, SUMMARIES[1:])
                    ops.append(Append(field="notes", entry=note(entry_id, device_id, text)))
            elif kind in ("note", "repeat"):
                text = choose(draw, SUMMARIES[1:])
                ops.append(
                    Append(field="notes", entry=note(f"n-{unique}-{len(ops)}", device_id, text))
                )
            else:
                ops.append(Delete() if kind == "delete" else Restore())
    elif record_type == "agreement" and draw(between(0, 1)):
        # One or two signers from a small pool, so two devices often capture the same signer
        # (scenario 2): the agreement must read in one order whichever phone arrives first.
        for _ in range(draw(between(1, 2))):
            ops.append(Append(field="signatures", entry=signature(choose(draw, SIGNERS))))
    if not sets and not ops:
        name = LWW_FIELD[record_type]
        sets = {name: choose(draw, choices[name])}
    return sets, ops


def shown(device: Device, key: RecordKey) -> msgspec.Struct | None:
    return device.replica.record(*key) if key in device.replica.states else None


def has_status(device: Device, key: RecordKey) -> bool:
    return "status" in device.replica.states[key].history


def refused_change(
    draw: st.DrawFn, device: Device, key: RecordKey
) -> tuple[str, dict, list[Op], Reason] | None:
    """A change the server must refuse, as an outdated or buggy client might still push it.

    Each has exactly one defect, chosen so that the refusal follows from the
    change and what its device had seen, whatever else happened meanwhile.
    Returns (record_type, set, ops, reason), or None if the record offers no
    such defect right now.
    """
    record_type, _ = key
    record = shown(device, key)
    kinds = ["unknown_type", "unknown_field", "invalid_value", "wrong_operation", "empty"]
    if record_type == "case":
        kinds.append("illegal_transition")
        if record is not None and record.notes:
            kinds.append("log_entry_conflict")
    if record_type == "agreement" and record is not None and record.signatures:
        kinds.append("sealed")
    kind = choose(draw, kinds)
    lww_field = LWW_FIELD[record_type]
    match kind:
        case "unknown_type":
            return "meeting", {"title": "x"}, [], Reason.UNKNOWN_RECORD_TYPE
        case "unknown_field":
            return record_type, {"colour": "red"}, [], Reason.UNKNOWN_FIELD
        case "invalid_value":
            bad = {
                "case": {"households": -1},
                "warning": {"severity": "apocalyptic"},
                "agreement": {"version": 0},
            }[record_type]
            return record_type, bad, [], Reason.INVALID_VALUE
        case "wrong_operation":
            return record_type, {}, [Add(field=lww_field, value="x")], Reason.WRONG_OPERATION
        case "empty":
            return record_type, {}, [], Reason.EMPTY_CHANGE
        case "illegal_transition":
            # From the case state machine: nothing moves back to "new", and only
            # "resolved" may move to "closed".
            status = record.status if record is not None else "new"
            target = "new" if status in ("resolved", "closed") else "closed"
            return record_type, {"status": target}, [], Reason.ILLEGAL_TRANSITION
        case "log_entry_conflict":
            old = choose(draw, record.notes)
            entry = note(old.entry_id, old.by, old.text + " (edited)")
            return record_type, {}, [Append(field="notes", entry=entry)], Reason.LOG_ENTRY_CONFLICT
        case _:
            return record_type, {"terms": "Changed after signing"}, [], Reason.AGREEMENT_SEALED


def push_refused(
    history: History, device: Device, record_type: str, key: RecordKey, sets, ops, reason: Reason
) -> None:
    replica = device.replica
    state = replica.states.get(key)
    change = Change(
        change_id=replica.new_id(),
        record_type=record_type,
        record_id=key[1],
        device_id=replica.device_id,
        hlc=replica.clock.now(),
        seen={d: s for d, s in state.vv.items() if d != replica.device_id} if state else {},
        set=sets,
        ops=ops,
    )
    history.changes.append(change)
    history.expected_rejections[change.change_id] = reason


@st.composite
def histories(
    draw: st.DrawFn,
    min_steps: int = 4,
    max_steps: int = 30,
    refused: bool = True,
    agreement: bool | None = None,
) -> History:
    """2 to 4 devices with skewed clocks editing 1 to 3 cases (maybe a warning, an agreement)."""
    timeline = Timeline()
    names = ["dev-a", "dev-b", "dev-c", "dev-d"][: draw(between(2, 4))]
    # About half the clocks are right: their stamps can tie, and the device id decides.
    devices = {
        name: new_device(name, timeline, draw(between(0, 1)) * draw(SKEWS)) for name in names
    }
    records: list[RecordKey] = [("case", f"k-{n}") for n in range(1, draw(between(1, 3)) + 1)]
    if draw(between(0, 1)):
        records.append(("warning", "w-1"))
    if agreement if agreement is not None else draw(between(0, 1)):
        records.append(("agreement", "a-1"))
    history = History(devices, records)
    serial = itertools.count(1)
    steps = (
        ["edit"] * 8 + ["pull"] * 4 + ["tick", "tick", "jump"] + (["refused"] if refused else [])
    )
    for _ in range(draw(between(min_steps, max_steps))):
        step = choose(draw, steps)
        device = devices[choose(draw, names)]
        if step == "edit":
            key = choose(draw, records)
            record = shown(device, key)
            status = record.status if record is not None and has_status(device, key) else None
            notes = record.notes if record is not None and key[0] == "case" else []
            sets, ops = make_edit(
                draw, key[0], device.replica.device_id, next(serial), status, notes
            )
            try:
                change = device.replica.edit(*key, set=sets, ops=ops)
            except merge.Rejected:
                continue  # the device refused it (illegal transition, sealed terms): never pushed
            device.log.append(change)
            history.changes.append(change)
        elif step == "pull":
            source = devices[choose(draw, [n for n in names if n != device.replica.device_id])]
            # Sometimes the connection drops half way: a prefix of what the other device has.
            count = None if draw(between(0, 2)) else draw(between(0, len(source.log)))
            pull(device, source, count, history)
        elif step == "tick":
            timeline.now_ms += draw(between(0, 20 * MINUTE_MS))
        elif step == "jump":
            # The phone's clock is corrected (or broken) by hours, forwards or backwards.
            jump = draw(between(-3 * HOUR_MS, HOUR_MS))
            device.wall.skew_ms = max(-MAX_SKEW_MS, min(MAX_SKEW_MS, device.wall.skew_ms + jump))
        else:
            key = choose(draw, records)
            found = refused_change(draw, device, key)
            if found is not None:
                push_refused(history, device, found[0], key, *found[1:])
    return history


# -- Deliveries --------------------------------------------------------------------------------


def had_seen(later: Change, earlier: Change) -> bool:
    """Whether `later`'s device had seen `earlier` (same record) when it made `later`."""
    if earlier.device_id == later.device_id:
        return earlier.hlc <= later.hlc
    return later.seen.get(earlier.device_id, -1) >= earlier.hlc


def dependencies(changes: list[Change]) -> dict[str, set[str]]:
    """For each change id, the ids of the changes that must reach the server before it."""
    by_record: dict[RecordKey, list[Change]] = defaultdict(list)
    for change in changes:
        by_record[(change.record_type, change.record_id)].append(change)
    return {
        change.change_id: {
            other.change_id
            for other in same_record
            if other.change_id != change.change_id and had_seen(change, other)
        }
        for same_record in by_record.values()
        for change in same_record
    }


@st.composite
def deliveries(draw: st.DrawFn, changes: list[Change]) -> list[list[Change]]:
    """Batches that deliver every change at least once, in some causal order."""
    rnd: random.Random = draw(st.randoms(use_true_random=False))
    style = draw(st.sampled_from(["random", "newest_first", "oldest_first"]))
    waiting = dependencies(changes)
    by_id = {c.change_id: c for c in changes}
    made = {c.change_id: n for n, c in enumerate(changes)}
    order: list[Change] = []
    while waiting:
        ready = sorted((i for i, deps in waiting.items() if not deps), key=made.__getitem__)
        assert ready, "the history has a causal cycle"
        if style == "random":
            chosen = rnd.choice(ready)
        else:
            chosen = ready[-1] if style == "newest_first" else ready[0]
        del waiting[chosen]
        for deps in waiting.values():
            deps.discard(chosen)
        order.append(by_id[chosen])
    # Retries: a change sent again later (lost acknowledgement), maybe in the same batch.
    duplicated = list(order)
    for change in order:
        if rnd.random() < 0.2:
            first = duplicated.index(change)
            duplicated.insert(rnd.randint(first + 1, len(duplicated)), change)
    batches: list[list[Change]] = []
    start = 0
    while start < len(duplicated):
        size = rnd.randint(1, max(1, len(duplicated) // 2))
        batches.append(duplicated[start : start + size])
        if rnd.random() < 0.15:
            batches.append(list(batches[-1]))  # the whole batch retried
        start += size
    return batches


@dataclass
class Server:
    store: SqliteStore
    results: list[ChangeResult]


@functools.cache
def _migrated_empty_store() -> tuple[TemporaryDirectory, Path]:
    directory = TemporaryDirectory(prefix="lianxin-template-")
    path = Path(directory.name) / "empty.db"
    make_store(path).close()
    return directory, path


@contextmanager
def delivered(batches: list[list[Change]]) -> Iterator[Server]:
    """A fresh SQLite store in a temp dir after `apply_batch` of every batch, in order.

    The fresh store is a copy of one migrated once per session: migrating
    costs more than the deliveries under test.
    """
    with TemporaryDirectory(prefix="lianxin-delivery-") as directory:
        path = Path(directory) / "lianxin.db"
        shutil.copyfile(_migrated_empty_store()[1], path)
        store = make_store(path)
        try:
            assert not store.migrations_applied, "the copied store is already migrated"
            # Durability across power loss is not under test here; fsync on a busy disk
            # would cost more than everything else in these laws together.
            store.db.execute("PRAGMA synchronous = OFF")
            clock = Clock(lambda: SERVER_WALL_MS)
            results = [r for batch in batches for r in apply_batch(store, batch, clock)]
            yield Server(store, results)
        finally:
            store.close()


# -- What a user compares ----------------------------------------------------------------------


def candidate_key(candidate: Any) -> tuple:
    return (
        candidate.hlc,
        candidate.device_id,
        candidate.change_id,
        msgspec.json.encode(candidate.value),
    )


def normalized(conflicts: list[Conflict]) -> list[Conflict]:
    """Conflicts in a canonical order, each with its candidates in a canonical order.

    Comparing candidates as a set keeps these laws about substance; the order
    in which a `deleted` conflict lists one change's writes has its own test
    (test_merge.py).
    """
    return sorted(
        (
            msgspec.structs.replace(c, candidates=sorted(c.candidates, key=candidate_key))
            for c in conflicts
        ),
        key=lambda c: (c.record_type, c.record_id, c.field, msgspec.json.encode(c)),
    )


def records_of(states: Iterator[Any] | list[Any]) -> dict[RecordKey, tuple[msgspec.Struct, bool]]:
    """Each record as users see it, and whether it is deleted."""
    return {
        (s.record_type, s.record_id): (merge.materialize(s), merge.is_deleted(s)) for s in states
    }


def quarantine_of(store: SqliteStore) -> dict[str, Reason]:
    return {row.change_id: Reason(row.reason) for row in store.quarantined()}


def logged(store: SqliteStore) -> list[Change]:
    return [entry.change for entry in store.changes_since(0, 1_000_000)]
