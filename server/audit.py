"""The audit log: security-relevant acts, each entry chained to the hash of the one before.

    hash = SHA-256(previous hash ‖ canonical JSON [seq, at_ms, actor, action, subject, detail])

The first entry chains to 32 zero bytes. Changing, dropping or reordering
any entry breaks every hash after it, which `verify` reports. Entries name
ids and reasons, never a person's data: the log is kept in clear so it can
be checked without any key.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import msgspec
import sqlite_utils

GENESIS = bytes(32)
_canonical = msgspec.json.Encoder(order="sorted").encode


class Entry(NamedTuple):
    seq: int
    at_ms: int
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    hash: bytes


def entry_hash(
    previous: bytes,
    seq: int,
    at_ms: int,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any],
) -> bytes:
    body = _canonical([seq, at_ms, actor, action, subject, detail])
    return hashlib.sha256(previous + body).digest()


def append(
    db: sqlite_utils.Database,
    at_ms: int,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
) -> Entry:
    """Add an entry after the last one; call inside the transaction that does the act."""
    detail = detail or {}
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, previous = (last[0] + 1, last[1]) if last else (1, GENESIS)
    digest = entry_hash(previous, seq, at_ms, actor, action, subject, detail)
    db.execute(
        "INSERT INTO audit (seq, at_ms, actor, action, subject, detail, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [seq, at_ms, actor, action, subject, _canonical(detail).decode(), digest],
    )
    return Entry(seq, at_ms, actor, action, subject, detail, digest)


def entries(db: sqlite_utils.Database) -> list[Entry]:
    rows = db.execute(
        "SELECT seq, at_ms, actor, action, subject, detail, hash FROM audit ORDER BY seq"
    ).fetchall()
    return [Entry(s, t, a, x, sub, msgspec.json.decode(d), h) for s, t, a, x, sub, d, h in rows]


def verify(db: sqlite_utils.Database) -> list[str]:
    """Every break in the chain, precisely; empty when the log is whole."""
    problems = []
    previous = GENESIS
    for expected, entry in enumerate(entries(db), start=1):
        if entry.seq != expected:
            problems.append(f"entry {entry.seq}: expected entry {expected} (one is missing)")
        fields = entry[:6]
        if entry_hash(previous, *fields) != entry.hash:
            problems.append(f"entry {entry.seq} ({entry.action}): hash does not match its content")
        previous = entry.hash
    return problems
