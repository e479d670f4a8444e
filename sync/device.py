"""The device side of merging: a replica that makes changes and takes in others.

This is the core of the reference device client (HTTP, keys and the outbox
come with the sync issue). It runs exactly the merge code the server runs, so
a device shows what the server will store.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from schemas.changes import Change, Op
from schemas.state import RecordState
from sync import merge
from sync.clock import Clock
from sync.merge import Rejected

RecordKey = tuple[str, str]


class Replica:
    """One device's copy of the records it holds, and the changes it made.

    `edit` makes a change with the causal context of everything this replica
    has applied to the record, applies it locally and queues it in `outbox`.
    `receive` applies a change from elsewhere (at most once per change id).
    """

    def __init__(
        self,
        device_id: str,
        clock: Clock,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.device_id = device_id
        self.clock = clock
        self.new_id = new_id
        self.states: dict[RecordKey, RecordState] = {}
        self.applied: set[str] = set()
        self.outbox: list[Change] = []

    def edit(
        self,
        record_type: str,
        record_id: str,
        set: dict[str, Any] | None = None,
        ops: Iterable[Op] = (),
    ) -> Change:
        """Make, apply and queue a change; raises `Rejected` if it can never apply."""
        state = self.states.get((record_type, record_id))
        change = Change(
            change_id=self.new_id(),
            record_type=record_type,
            record_id=record_id,
            device_id=self.device_id,
            hlc=self.clock.now(),
            seen={d: s for d, s in state.vv.items() if d != self.device_id} if state else {},
            set=set or {},
            ops=list(ops),
        )
        outcome = merge.apply_change(state, change)
        if outcome.rejected is not None:
            raise outcome.rejected
        self._keep(change, outcome.state)
        self.outbox.append(change)
        return change

    def receive(self, change: Change) -> Rejected | None:
        """Apply a change made elsewhere; return why it was rejected, if it was."""
        if change.change_id in self.applied:
            return None
        self.clock.receive(change.hlc)
        outcome = merge.apply_change(
            self.states.get((change.record_type, change.record_id)), change
        )
        if outcome.rejected is None:
            self._keep(change, outcome.state)
        return outcome.rejected

    def _keep(self, change: Change, state: RecordState | None) -> None:
        assert state is not None
        self.states[(change.record_type, change.record_id)] = state
        self.applied.add(change.change_id)

    def record(self, record_type: str, record_id: str) -> msgspec.Struct:
        """The materialised record as this device shows it."""
        return merge.materialize(self.states[(record_type, record_id)])
