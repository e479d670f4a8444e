"""A record's merge state: every live write with its dot, as stored and replicated.

The materialised record (a `Case`, say) is derived from this by `sync.merge`;
this keeps what merging needs: concurrent siblings, set add-tags, log entries,
status history and the record's version vector.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Write(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One value written by one change.

    `hlc` with `device_id` is the dot; `order` is the stamp used to rank
    concurrent writes (the hlc, unless the server clamped it). `seen` is kept
    only where merging needs the writer's causal context later (status
    history, deletes). `position` is a log entry's place among its change's
    operations. `contested` marks a delete that some edit was made beside
    (neither had seen the other).

    Untracked by the cyclic collector (`gc=False`): a write holds only plain
    values, never a cycle, and a server keeps tens of thousands in its cache.
    """

    value: Any
    device_id: str
    hlc: int
    change_id: str
    order: int
    seen: dict[str, int] = {}
    position: int = 0
    contested: bool = False


class RecordState(msgspec.Struct, kw_only=True):
    """Everything merging needs to know about one record."""

    record_type: str
    record_id: str
    vv: dict[str, int] = {}
    # Like `vv`, counting only changes that edit (not those that only delete or restore).
    # None in a state written before it was kept: every change then counts as an edit.
    edits: dict[str, int] | None = None
    registers: dict[str, list[Write]] = {}
    sets: dict[str, dict[str, list[Write]]] = {}
    logs: dict[str, dict[str, Write]] = {}
    # Further appends of a key already in `logs` (allowed where the log's policy says so).
    log_repeats: dict[str, dict[str, list[Write]]] = {}
    history: dict[str, list[Write]] = {}
    deleted: list[Write] = []
