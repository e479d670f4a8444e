"""Merge policy markers: each record field names its policy in its type annotation.

    title: Annotated[str, LWW] = ""

The markers are plain data; `sync/merge.py` gives them meaning (DESIGN.md,
"Records are changed by field, not replaced whole").
"""

from __future__ import annotations

import msgspec


class Lww(msgspec.Struct, frozen=True):
    """Last writer wins; concurrent different values become a conflict."""


class AddRemoveSet(msgspec.Struct, frozen=True):
    """Observed-remove set of strings; concurrent add and remove: the add wins."""


class Log(msgspec.Struct, frozen=True):
    """Append-only entries, unioned by the entry attribute named `key`.

    With `repeats`, appending a key again with other content is allowed (one
    signer signing on two phones): the earliest append shows. Without it, that
    is refused (`log_entry_conflict`) from a device that had seen the key's
    entry; one appended concurrently shows beside it.
    """

    key: str = "entry_id"
    repeats: bool = False


class StatusMachine(msgspec.Struct, frozen=True):
    """A status field: legal transitions, and the rank that settles concurrent ones.

    `initial` are the statuses a record may start in; `transitions` maps a
    status to those it may move to; `rank` orders statuses so that concurrent
    transitions resolve the same way everywhere (terminal states rank highest).
    """

    initial: frozenset[str]
    transitions: dict[str, frozenset[str]]
    rank: dict[str, int]


class Sealed(msgspec.Struct, frozen=True):
    """Last writer wins until the log field named `by` has an entry, then immutable."""

    by: str = "signatures"


LWW = Lww()
SET = AddRemoveSet()
LOG = Log()
SEALED = Sealed()

Policy = Lww | AddRemoveSet | Log | StatusMachine | Sealed
