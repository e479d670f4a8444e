"""The audit log: security-relevant acts, each entry chained to the hash of the one before.

    hash = SHA-256(previous hash ‖ canonical JSON [seq, at_ms, actor, action, subject, detail])

The first entry chains to 32 zero bytes. Changing, dropping or reordering
any entry breaks every hash after it, which `verify` reports. Entries name
ids and reasons, never a person's data: the log is kept in clear so it can
be checked without any key.

A chain alone cannot show that its last entries were dropped, nor that it
was rewritten whole with fresh hashes. So the office signs a checkpoint of
the head (seq, hash, time) with its Ed25519 key every `CHECKPOINT_EVERY`
entries or `CHECKPOINT_MAX_AGE_MS` (looked at on a push, after an operator's
command and every `Settings.checkpoint_check_s` while serving) and on
`lianxin audit checkpoint`: a checkpoint past the log's end, or over another hash, gives
either away. `server.audit_verify` checks them with the rest of the store.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import sqlite_utils

from sync import signing
from sync.errors import BadSignature

if TYPE_CHECKING:
    from server.keys import OfficeKeys
    from server.storage.sqlite import SqliteStore

GENESIS = bytes(32)
CHECKPOINT_PURPOSE = b"lianxin audit checkpoint v1"
CHECKPOINT_EVERY = 1000
CHECKPOINT_MAX_AGE_MS = 3600_000
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


def last_restore(db: sqlite_utils.Database) -> str:
    """The hash of the entry of the last restore of this office from a backup (hex): it
    names the log this office keeps since then. "" if it was never restored, or last by a
    version whose restores drew no `nonce` (cursors bound none then: they still open)."""
    row = db.execute(
        "SELECT hash, detail FROM audit WHERE action = 'restore' ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return row[0].hex() if row and "nonce" in msgspec.json.decode(row[1]) else ""


def record_batch(
    db: sqlite_utils.Database,
    at_ms: int,
    device_id: str,
    batch_id: str,
    manifest: bytes,
    signature: bytes,
    extra: dict[str, Any] | None = None,
) -> Entry:
    """Log an accepted push batch by the digests of its signed manifest and signature.

    Together with the `batches` row they name, this keeps each batch
    attributable: `server.audit_verify` re-verifies the signature and
    checks it is the one logged here.
    """
    detail = {
        "batch_id": batch_id,
        "manifest_sha256": signing.digest(manifest).hex(),
        "signature_sha256": signing.digest(signature).hex(),
        "changes": len(signing.signed_digests(manifest, device_id, batch_id) or []),
        **(extra or {}),
    }
    return append(db, at_ms, f"device:{device_id}", "push", f"batch/{batch_id}", detail)


def entries(db: sqlite_utils.Database, action: str | None = None) -> list[Entry]:
    """The log in order; only the entries of `action` if given."""
    return list(_stream(db, action))


def _stream(db: sqlite_utils.Database, action: str | None = None) -> Iterator[Entry]:
    """The entries one at a time, so a city's log is checked without holding it all."""
    where, parameters = ("WHERE action = ?", [action]) if action else ("", [])
    rows = db.execute(
        f"SELECT seq, at_ms, actor, action, subject, detail, hash FROM audit {where} ORDER BY seq",
        parameters,
    )
    for seq, at_ms, actor, act, subject, detail, digest in rows:
        yield Entry(seq, at_ms, actor, act, subject, _detail(detail) or {}, digest)


def _detail(stored: str) -> dict[str, Any] | None:
    """An entry's detail; None if the stored text is not a JSON object.

    `append` never writes such a row, so it was written behind the log's
    back: `verify` reports it, and readers of the log get an empty detail
    rather than a traceback (a tampered backup must be refused, not crash
    `lianxin restore` or `lianxin audit verify`).
    """
    try:
        detail = msgspec.json.decode(stored)
    except msgspec.DecodeError:
        return None
    return detail if isinstance(detail, dict) else None


def verify(db: sqlite_utils.Database) -> list[str]:
    """Every break in the chain, precisely; empty when the log is whole."""
    problems = []
    previous, previous_seq = GENESIS, 0
    rows = db.execute(
        "SELECT seq, at_ms, actor, action, subject, detail, hash FROM audit ORDER BY seq"
    )
    for seq, at_ms, actor, action, subject, stored, digest in rows:
        missing = seq - previous_seq - 1
        if missing:
            how_many = "one is" if missing == 1 else f"{missing} are"
            problems.append(f"entry {seq}: expected entry {previous_seq + 1} ({how_many} missing)")
        previous_seq = seq
        detail = _detail(stored)
        if detail is None:
            problems.append(f"entry {seq} ({action}): its detail is not a JSON object")
        elif entry_hash(previous, seq, at_ms, actor, action, subject, detail) != digest:
            problems.append(f"entry {seq} ({action}): hash does not match its content")
        previous = digest
    return problems


class Checkpoint(NamedTuple):
    seq: int
    hash: bytes
    at_ms: int
    signature: bytes


def checkpoint_message(office_id: str, seq: int, hash: bytes, at_ms: int) -> bytes:
    """What the office's key signs for a checkpoint of the chain head (PROTOCOL.md, "Audit log")."""
    lines = [CHECKPOINT_PURPOSE, office_id.encode(), str(seq).encode(), hash.hex().encode()]
    return b"\n".join([*lines, str(at_ms).encode()])


def checkpoints(db: sqlite_utils.Database) -> list[Checkpoint]:
    rows = db.execute("SELECT seq, hash, at_ms, signature FROM audit_checkpoints ORDER BY seq")
    return [Checkpoint(*row) for row in rows.fetchall()]


def checkpoint(db: sqlite_utils.Database, keys: OfficeKeys, at_ms: int) -> Checkpoint | None:
    """Sign the chain head now; None if the log is empty or its head is signed already.

    Call inside a transaction, so the head cannot move while it is signed.
    """
    head = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if head is None or _last_checkpoint(db)[0] >= head[0]:
        return None
    seq, digest = head
    signature = keys.signing.sign(checkpoint_message(keys.office_id, seq, digest, at_ms))
    db.execute(
        "INSERT INTO audit_checkpoints (seq, hash, at_ms, signature) VALUES (?, ?, ?, ?)",
        [seq, digest, at_ms, signature],
    )
    return Checkpoint(seq, digest, at_ms, signature)


def checkpoint_if_due(
    db: sqlite_utils.Database,
    keys: OfficeKeys,
    at_ms: int,
    every: int = CHECKPOINT_EVERY,
    max_age_ms: int = CHECKPOINT_MAX_AGE_MS,
) -> Checkpoint | None:
    """A checkpoint once `every` entries or `max_age_ms` have passed since the last one."""
    return checkpoint(db, keys, at_ms) if checkpoint_due(db, at_ms, every, max_age_ms) else None


def sign_if_due(store: SqliteStore, keys: OfficeKeys, at_ms: int) -> Checkpoint | None:
    """`checkpoint_if_due` for a whole store: whether it is due is read from a snapshot
    first, so that the writer gate is taken only to sign (a command that only read, or
    the serving office looking every minute, never waits on a push for nothing)."""
    with store.snapshot() as conn:
        if not checkpoint_due(conn, at_ms):
            return None
    with store.transaction():
        return checkpoint_if_due(store.db, keys, at_ms)


def checkpoint_due(
    db: sqlite_utils.Database | sqlite3.Connection,
    at_ms: int,
    every: int = CHECKPOINT_EVERY,
    max_age_ms: int = CHECKPOINT_MAX_AGE_MS,
) -> bool:
    """Whether `every` entries or `max_age_ms` have passed since the last checkpoint."""
    head = db.execute("SELECT max(seq) FROM audit").fetchone()[0] or 0
    last_seq, last_ms = _last_checkpoint(db)
    return head - last_seq >= every or (head > last_seq and at_ms - last_ms >= max_age_ms)


def _last_checkpoint(db: sqlite_utils.Database | sqlite3.Connection) -> tuple[int, int]:
    row = db.execute(
        "SELECT seq, at_ms FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def verify_checkpoints(db: sqlite_utils.Database, office_id: str, office_key: bytes) -> list[str]:
    """Every checkpoint that the office's key did not sign or that the chain contradicts.

    `office_key` is the office's public signing key, taken from the key file,
    never from the store being checked.
    """
    problems = []
    last = db.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()[0]
    for mark in checkpoints(db):
        stored = db.execute("SELECT hash FROM audit WHERE seq = ?", [mark.seq]).fetchone()
        where = f"checkpoint at entry {mark.seq}"
        message = checkpoint_message(office_id, mark.seq, mark.hash, mark.at_ms)
        try:
            signing.verify(office_key, mark.signature, message, "checkpoint")
        except BadSignature:
            problems.append(f"{where}: its signature does not verify with the office key")
        if mark.seq > last:
            problems.append(f"{where}: the log ends at entry {last} (later entries were dropped)")
        elif stored is None:
            problems.append(f"{where}: entry {mark.seq} is missing")
        elif stored[0] != mark.hash:
            problems.append(f"{where}: the entry's hash differs from the signed one (rewritten)")
    return problems
