"""Keyed blind indexes of people: find a person's earlier cases without storing who they are.

For each party record the store keeps `HMAC-SHA256(index key, kind ‖ value)`
of its normalised phone number, ID number and name, in `people_index`. The
index key lives in the office key file with the other keys, so the table
alone (or a copied database) cannot be searched by guessing values; only the
office can ask "has this person come before?".

A shared phone or ID number is a match; a shared name alone is only a
possible one (names repeat), reported as such.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from schemas.records import Party
from schemas.state import RecordState
from server.storage.repeats import STRONG
from server.storage.sqlite import SqliteStore
from sync.merge import materialize
from sync.store import RecordKey


def normal_phone(text: str) -> str | None:
    """The national number, digits only: without China's country code (`+86`, `0086`) or
    a landline's trunk 0, so `0571 8765 4321` and `+86 571 8765 4321` are one number;
    None if too short to mean anything. An extension (`转 8`, `ext. 8`) is left out:
    the household is found by the number it shares."""
    number = re.split(r"转|分机|ext\.?|x|#", text, maxsplit=1, flags=re.IGNORECASE)[0]
    digits = re.sub(r"\D", "", number)
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and 11 <= len(digits) <= 14:
        # 86 and a national number of 9 to 11 digits, perhaps with its trunk 0 kept. A
        # number dialled at home that long starts with 1 (a mobile) or 0, never with 86.
        digits = digits[2:]
    if digits.startswith("0") and 10 <= len(digits) <= 12:
        digits = digits[1:]  # 0, an area code of 2 or 3 digits, a number of 7 or 8
    return digits if len(digits) >= 7 else None


def normal_id(text: str) -> str | None:
    value = re.sub(r"[\s-]", "", unicodedata.normalize("NFKC", text)).upper()
    return value or None


def normal_name(text: str) -> str | None:
    value = re.sub(r"\s", "", unicodedata.normalize("NFKC", text)).casefold()
    return value or None


def digests(index_key: bytes, party: Party) -> set[tuple[str, str]]:
    """The `(kind, digest)` entries of one party."""
    values = {
        "phone": normal_phone(party.phone or ""),
        "id_number": normal_id(party.id_number or ""),
        "name": normal_name(party.name),
    }
    return {
        (kind, hmac.new(index_key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest())
        for kind, value in values.items()
        if value
    }


def index_parties(
    store: SqliteStore, index_key: bytes, states: Mapping[RecordKey, RecordState]
) -> None:
    """Bring the index entries of the party records among `states` up to date."""
    parties = {key: state for key, state in states.items() if key[0] == "party"}
    if not parties:
        return
    db = store.db.conn
    db.executemany(
        "DELETE FROM people_index WHERE record_type = ? AND record_id = ?", list(parties)
    )
    rows = []
    for key, state in parties.items():
        party = materialize(state)
        assert isinstance(party, Party)
        rows += [(kind, digest, *key) for kind, digest in digests(index_key, party)]
    db.executemany(
        "INSERT INTO people_index (kind, digest, record_type, record_id) VALUES (?, ?, ?, ?)", rows
    )


class Repeat(NamedTuple):
    """An earlier (or other) case sharing a person with the case asked about."""

    case_id: str
    party_id: str
    matched_by: tuple[str, ...]  # "phone", "id_number", "name"

    @property
    def strong(self) -> bool:
        return any(kind in STRONG for kind in self.matched_by)


def repeats(store: SqliteStore, case_id: str) -> list[Repeat]:
    """Other cases whose parties match a party of `case_id` in the index."""
    with store.snapshot() as db:
        rows = db.execute(
            "SELECT other_link.case_id, other.record_id, other.kind FROM links mine"
            " JOIN people_index me ON me.record_type = 'party' AND me.record_id = mine.record_id"
            " JOIN people_index other ON other.kind = me.kind AND other.digest = me.digest"
            " AND other.record_id != me.record_id"
            " JOIN links other_link ON other_link.record_type = 'party'"
            " AND other_link.record_id = other.record_id AND other_link.case_id != mine.case_id"
            " WHERE mine.case_id = ? AND mine.record_type = 'party'"
            " ORDER BY other_link.case_id, other.record_id, other.kind",
            [case_id],
        ).fetchall()
    return list(_grouped(rows))


def _grouped(rows: list[tuple[str, str, str]]) -> Iterator[Repeat]:
    kinds: dict[tuple[str, str], list[str]] = {}
    for case, party, kind in rows:
        kinds.setdefault((case, party), []).append(kind)
    for (case, party), found in kinds.items():
        yield Repeat(case, party, tuple(sorted(set(found))))


def forget(store: SqliteStore, keys: list[RecordKey]) -> None:
    """Drop the index entries of erased records."""
    store.db.conn.executemany(
        "DELETE FROM people_index WHERE record_type = ? AND record_id = ?", keys
    )
