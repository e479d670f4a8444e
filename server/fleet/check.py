"""The simulation's verdict: every change accounted for, every replica what the server allows.

Three questions, answered from the server's store and the devices' files:

- *Accounting*: each change a device made is in the server's change log
  (applied, or kept as a conflict candidate) or in its quarantine with a
  reason. One that is in neither is lost; one that is in both, or twice, was
  taken twice. The device's own record of the answer must agree.
- *Replicas*: after everyone synced to quiescence, each device shows, record
  for record and conflict for conflict, exactly what a fresh device of the
  same user shows after pulling from scratch: the server's view for that user.
- *The office itself*: each stored record state, and the open conflicts the
  console shows, are what the change log gives merged from nothing. (The
  replicas alone cannot tell: they merge the same log the same way.)
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import msgspec

from server.fleet.office import Logged
from server.storage.sqlite import SqliteStore
from sync import merge
from sync.client import DeviceClient
from sync.replica_store import OutboxEntry, RecordKey

ANSWERED = frozenset({"applied", "conflict", "duplicate", "rejected"})


class Accounting(msgspec.Struct, kw_only=True):
    made: int = 0
    applied: int = 0
    conflict: int = 0
    rejected: Counter[str] = msgspec.field(default_factory=Counter)
    lost: list[str] = msgspec.field(default_factory=list)
    duplicated: list[str] = msgspec.field(default_factory=list)
    # Still `pending` or `sent` in a device's outbox after the last sync.
    unanswered: list[str] = msgspec.field(default_factory=list)
    # The device recorded another answer than the server's log holds.
    disagreeing: list[str] = msgspec.field(default_factory=list)
    # In the server's log under a fleet device's ids, but made by none of them.
    foreign: int = 0


def account(
    devices: list[tuple[list[str], list[OutboxEntry]]], logged: dict[str, list[Logged]]
) -> Accounting:
    """What became of each change the devices made, as the server's log and their outboxes tell.

    `devices` holds, per device, the ids of the changes it made and its outbox.
    """
    tally = Accounting()
    made_ids: set[str] = set()
    for made, outbox in devices:
        answers = {entry.change_id: entry for entry in outbox}
        made_ids.update(made)
        for change_id in made:
            _account_one(tally, change_id, logged.get(change_id, []), answers.get(change_id))
    # An office served with --server may hold other changes: only the fleet's ids
    # (`<device>.<run>-<n>`) are its business.
    fleet = {change_id.rsplit("-", 1)[0] for change_id in made_ids}
    tally.foreign = sum(
        1 for change_id in logged.keys() - made_ids if change_id.rsplit("-", 1)[0] in fleet
    )
    return tally


def _account_one(
    tally: Accounting, change_id: str, found: list[Logged], entry: OutboxEntry | None
) -> None:
    tally.made += 1
    if not found:
        tally.lost.append(change_id)
        return
    if len(found) > 1:
        tally.duplicated.append(change_id)
        return
    (held,) = found
    if held.status == "rejected":
        tally.rejected[held.reason or "no reason"] += 1
    elif held.status == "conflict":
        tally.conflict += 1
    else:
        tally.applied += 1
    if entry is None or entry.state not in ANSWERED:
        tally.unanswered.append(change_id)
    elif not _agrees(entry, held):
        tally.disagreeing.append(change_id)


def _agrees(entry: OutboxEntry, held: Logged) -> bool:
    if held.status == "rejected":
        return entry.state in ("rejected", "duplicate") and entry.reason == held.reason
    # A duplicate answer repeats the first answer, seq included.
    return entry.state in ("applied", "conflict", "duplicate") and entry.seq == held.seq


def held_keys(path: Path) -> set[RecordKey]:
    """The records a device file holds, read from its clear ids (sync.replica_store):
    the server layer, and own changes still replayed on top of it."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT record_type, record_id FROM records UNION"
            " SELECT record_type, record_id FROM outbox WHERE overlay"
        ).fetchall()
    return {(record_type, record_id) for record_type, record_id in rows}


def differences(
    device: DeviceClient, device_file: Path, reference: DeviceClient, reference_file: Path
) -> list[str]:
    """Where `device` shows something else than `reference`, record by record."""
    found = []
    for key in sorted(held_keys(device_file) | held_keys(reference_file)):
        mine, theirs = device.record(*key), reference.record(*key)
        if mine is None and theirs is None:
            continue
        if mine is None or theirs is None:
            found.append(
                f"{key[0]}/{key[1]}: {'only on the device' if theirs is None else 'missing'}"
            )
        elif mine != theirs:
            found.append(f"{key[0]}/{key[1]}: differs")
        elif _conflicts(device, key) != _conflicts(reference, key):
            found.append(f"{key[0]}/{key[1]}: other conflicts")
    return found


def _conflicts(client: DeviceClient, key: RecordKey) -> list[bytes]:
    return sorted(msgspec.msgpack.encode(c) for c in client.conflicts(*key))


def office_problems(store: SqliteStore) -> list[str]:
    """Where the office's stored states or open conflicts differ from its log merged anew."""
    with store.snapshot() as conn:
        keys = [(t, i) for t, i in conn.execute("SELECT record_type, record_id FROM records")]
    replayed = store.replayed(keys)
    stored = store.states(keys)
    problems = [
        f"{t}/{i}: stored state differs from its log"
        for t, i in keys
        if stored.get((t, i)) != replayed.get((t, i))
    ]
    encode = msgspec.msgpack.encode
    expected = sorted(encode(c) for state in replayed.values() for c in merge.conflicts(state))
    held = sorted(encode(c) for c in store.open_conflicts())
    if held != expected:
        problems.append(f"open conflicts: {len(held)} stored, {len(expected)} in the log's states")
    return problems
