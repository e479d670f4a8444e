"""Apply a batch of changes: dedupe, merge, sequence, quarantine, all or nothing.

The server is the one serializer: inside one store transaction each accepted
change gets the next server sequence. Duplicates (by change id, within the
batch or from any earlier batch, from the same device) are answered from the
first answer and write nothing; another device's change id is refused and kept
nowhere. A change that can never apply is quarantined and acknowledged, so a
device's outbox never jams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import msgspec

from schemas.changes import Change, ChangeResult, Conflict, Reason
from schemas.state import RecordState
from sync import merge
from sync.clock import Clock
from sync.store import (
    Answered,
    BatchWrite,
    ChangeStore,
    ConflictUpdate,
    LoggedChange,
    QuarantinedChange,
    RecordKey,
)

_encode = msgspec.msgpack.Encoder().encode
Vet = Callable[[Change, RecordState | None, RecordState], tuple[Reason, str] | None]


class Applied(NamedTuple):
    """A batch's answers, the state and last seq of each record it changed, and how many
    of its changes it stored (logged or quarantined; not those answered before)."""

    results: list[ChangeResult]
    records: dict[RecordKey, tuple[RecordState, int]]
    stored: int


def apply_batch(
    store: ChangeStore,
    changes: Sequence[Change],
    clock: Clock,
    raws: Sequence[bytes] | None = None,
    authorize: Callable[[Change], str | None] | None = None,
    vet: Vet | None = None,
    batch_id: str | None = None,
) -> list[ChangeResult]:
    """Apply `changes` in order as one transaction and answer each one (see `apply`)."""
    return apply(store, changes, clock, raws, authorize, vet, batch_id).results


def apply(
    store: ChangeStore,
    changes: Sequence[Change],
    clock: Clock,
    raws: Sequence[bytes] | None = None,
    authorize: Callable[[Change], str | None] | None = None,
    vet: Vet | None = None,
    batch_id: str | None = None,
) -> Applied:
    """Apply `changes` in order as one transaction and answer each one.

    `raws` are the exact bytes each change arrived as (kept for signatures and
    audit); without them the changes are encoded here. The clock takes in
    every stamp, and a stamp absurdly far ahead is clamped for ordering and
    flagged in its result. `authorize` may refuse a change by returning why;
    it is then quarantined as `not_permitted`. `vet` sees each change with the
    record before and after it and may refuse it with a reason of its own
    (the server checks agreement signatures there). `batch_id` names the
    signed batch the changes came in, stored with each accepted one.
    """
    raws = raws if raws is not None else [_encode(c) for c in changes]
    with store.transaction():
        known = store.results(c.change_id for c in changes)
        keys = {(c.record_type, c.record_id) for c in changes}
        states: dict[RecordKey, RecordState] = store.states(keys)
        erased = store.erased(keys)
        touched: dict[RecordKey, tuple[RecordState, int]] = {}
        batch = BatchWrite([], touched, [], [], batch_id)
        seq = store.last_seq()
        answers = []
        for change, raw in zip(changes, raws, strict=True):
            key = (change.record_type, change.record_id)
            first = known.get(change.change_id)
            if first is not None:
                answers.append(_again(change, *first, erased=key in erased))
                continue
            limit = clock.limit()
            # A stamp this clock issued or took in already drags it nowhere: the office's
            # own change made just after a fast phone's is above the limit, and unclamped.
            clamped = change.hlc > limit and change.hlc > clock.last
            clock.receive(change.hlc)
            before = states.get(key)
            denied = authorize(change) if authorize else None
            if key in erased:
                outcome = merge.Outcome(None, merge.Rejected(Reason.RECORD_ERASED, "erased"))
            elif denied:
                outcome = merge.Outcome(None, merge.Rejected(Reason.NOT_PERMITTED, denied))
            else:
                outcome = merge.apply_change(before, change, limit if clamped else change.hlc)
                refused = vet(change, before, outcome.state) if vet and outcome.state else None
                if refused:
                    outcome = merge.Outcome(None, merge.Rejected(*refused))
            if outcome.rejected is not None:
                result = ChangeResult(
                    change_id=change.change_id,
                    status="rejected",
                    reason=outcome.rejected.reason,
                    detail=outcome.rejected.detail,
                    clamped=clamped,
                )
                batch.quarantine.append(QuarantinedChange(change, raw, result))
            else:
                seq += 1
                after = outcome.state
                assert after is not None
                states[key] = after
                touched[key] = (after, seq)
                was_open = merge.conflicts_touching(change, before) if before is not None else []
                now_open = merge.conflicts_touching(change, after)
                batch.conflicts.extend(_conflict_updates(was_open, now_open, key, seq))
                mine = [
                    c
                    for c in now_open
                    if any(x.change_id == change.change_id for x in c.candidates)
                    # An edit beside a delete is in its conflict, value left or not.
                    or (c.field == merge.DELETED_FIELD and merge.contests_delete(change, after))
                ]
                result = ChangeResult(
                    change_id=change.change_id,
                    status="conflict" if mine else "applied",
                    seq=seq,
                    conflicts=mine,
                    clamped=clamped,
                )
                order = limit if clamped else None
                batch.changes.append(LoggedChange(seq, change, raw, result, order))
            known[change.change_id] = Answered(change.device_id, result)
            answers.append(result)
        store.write(batch)
    return Applied(answers, touched, len(batch.changes) + len(batch.quarantine))


def _again(change: Change, device_id: str, first: ChangeResult, erased: bool) -> ChangeResult:
    """The answer to a change id answered before: a duplicate of its device's change, or
    refused and kept nowhere: from another device (the id is the other change's), or to a
    record erased since (its device must drop its copy, as for any change to it)."""
    if device_id != change.device_id:
        return _refused(change, Reason.CHANGE_ID_TAKEN, "another device's change has this id")
    if erased:
        return _refused(change, Reason.RECORD_ERASED, "erased")
    return msgspec.structs.replace(first, status="duplicate", conflicts=[])


def _refused(change: Change, reason: Reason, detail: str) -> ChangeResult:
    return ChangeResult(change_id=change.change_id, status="rejected", reason=reason, detail=detail)


def _conflict_updates(
    was_open: list[Conflict], now_open: list[Conflict], key: RecordKey, seq: int
) -> list[ConflictUpdate]:
    """Which of the record's conflicts opened, changed or were settled at `seq`."""
    if not was_open and not now_open:
        return []
    old = {c.field: c for c in was_open}
    new = {c.field: c for c in now_open}
    updates = [ConflictUpdate(key, field, None, seq) for field in old.keys() - new.keys()]
    updates += [
        ConflictUpdate(key, field, conflict, seq)
        for field, conflict in new.items()
        if old.get(field) != conflict
    ]
    return updates
