"""What the engine needs from storage, stated as a Protocol.

`server/storage/sqlite.py` is the embedded implementation; a PostgreSQL one
must pass the same contract tests (`tests/server/test_storage_contract.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

from schemas.changes import Change, ChangeResult, Conflict, Reason
from schemas.state import RecordState

RecordKey = tuple[str, str]


class LoggedChange(NamedTuple):
    """An accepted change, its exact received bytes and the answer it got.

    `order` is the stamp its writes were ranked by, when the server clamped
    an absurd one (None: the change's own hlc); replicas must rank the same.
    """

    seq: int
    change: Change
    raw: bytes
    result: ChangeResult
    order: int | None = None


class QuarantinedChange(NamedTuple):
    """A change that can never apply, kept with its reason for supervisors."""

    change: Change
    raw: bytes
    result: ChangeResult


class ConflictUpdate(NamedTuple):
    """The open conflict of one record field after `seq`; None means it was settled."""

    key: RecordKey
    field: str
    conflict: Conflict | None
    seq: int


class BatchWrite(NamedTuple):
    """Everything one batch writes; a store writes it in one transaction."""

    changes: list[LoggedChange]
    records: dict[RecordKey, tuple[RecordState, int]]
    quarantine: list[QuarantinedChange]
    conflicts: list[ConflictUpdate]
    batch_id: str | None = None  # the signed batch these changes came in, if any


class QuarantineRow(NamedTuple):
    change_id: str
    reason: Reason
    detail: str
    change: Change


class Answered(NamedTuple):
    device_id: str
    result: ChangeResult


class ChangeStore(Protocol):
    def transaction(self) -> AbstractContextManager[None]:
        """Serialise writers: everything inside sees and writes one consistent store."""

    def last_seq(self) -> int:
        """The highest server sequence in the change log (0 when empty)."""

    def results(self, change_ids: Iterable[str]) -> dict[str, Answered]:
        """The first answer given to each of these change ids that the store knows, with
        the device whose change it was."""

    def states(self, keys: Iterable[RecordKey]) -> dict[RecordKey, RecordState]:
        """The merge state of each existing record among `keys`."""

    def erased(self, keys: Iterable[RecordKey]) -> set[RecordKey]:
        """Which of `keys` were lawfully erased: nothing of them may be written again."""

    def write(self, batch: BatchWrite) -> None:
        """Write a batch; called inside `transaction()`."""

    def changes_since(self, seq: int, limit: int) -> Iterator[LoggedChange]:
        """Accepted changes after `seq`, in server order."""

    def open_conflicts(self) -> list[Conflict]:
        """Every unsettled conflict."""

    def quarantined(self) -> list[QuarantineRow]:
        """Every quarantined change with its reason."""
