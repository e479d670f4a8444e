"""`lianxin audit verify`: the audit chain, its checkpoints and every stored signature.

    chain        each entry over the previous one's hash (`server.audit.verify`)
    checkpoints  signed by the office key, and over the chain as it stands
    batches      each device signature re-verified over the exact stored
                 manifest, and held to the `push` entry that logged it;
                 each stored change's bytes found in its batch's manifest
    agreements   each signature re-verified with its device's stored key;
                 each receipt with the office key, and held to the
                 `agreement_execute` entry that logged it

Each problem names the entry, checkpoint, batch, change or agreement and
says why. Erased records are skipped: their bytes are meant not to open.
The office's public key comes from the key file, never from the store
being checked.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.records import Agreement
from server import audit
from server.keys import OfficeKeys
from server.storage.sqlite import SqliteStore, bind
from sync import agreements, signing
from sync.atrest import open_sealed
from sync.errors import BadSignature, LianxinError, Unreadable
from sync.merge import materialize
from sync.store import RecordKey

_CHUNK = 500


@dataclass
class Report:
    """What was checked, and every break found (none when the store verifies)."""

    problems: list[str] = field(default_factory=list)
    entries: int = 0
    checkpoints: int = 0
    batches: int = 0
    changes: int = 0
    agreements: int = 0
    signatures: int = 0
    receipts: int = 0

    def summary(self) -> str:
        return (
            f"audit log: {self.entries} entries, chain intact, {self.checkpoints} signed"
            f" checkpoints; {self.batches} batch signatures over {self.changes} stored changes;"
            f" {self.agreements} agreements with {self.signatures} signatures and"
            f" {self.receipts} office receipts"
        )


def verify_store(store: SqliteStore, keys: OfficeKeys) -> Report:
    """Check everything `lianxin audit verify` promises; never raises on a break."""
    db = store.db
    report = Report(
        entries=db.execute("SELECT count(*) FROM audit").fetchone()[0],
        checkpoints=db.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0],
    )
    report.problems += audit.verify(db)
    report.problems += audit.verify_checkpoints(db, keys.office_id, keys.signing_public)
    _check_batches(store, report)
    _check_agreements(store, keys, report)
    return report


def _logged(store: SqliteStore, action: str, report: Report) -> dict[tuple[str, str], Logged]:
    """What the entries of one action logged, by (actor, subject); an act logged twice is
    reported."""
    found: dict[tuple[str, str], Logged] = {}
    for entry in audit.entries(store.db, action):
        key = (entry.actor, entry.subject)
        if key in found:
            first = found[key].seq
            report.problems.append(
                f"entry {entry.seq} ({action}): logs {entry.subject} again (first in entry {first})"
            )
            continue
        found[key] = Logged(entry.seq, entry.detail)
    return found


class Logged(NamedTuple):
    seq: int
    detail: dict[str, Any]


def _check_batches(store: SqliteStore, report: Report) -> None:
    db = store.db
    device_keys = dict(db.execute("SELECT device_id, signing_key FROM devices").fetchall())
    logged = _logged(store, "push", report)
    stored = {
        (device_id, batch_id): count
        for device_id, batch_id, count in db.execute(
            "SELECT device_id, batch_id, count(*) FROM (SELECT device_id, batch_id FROM changes"
            " UNION ALL SELECT device_id, batch_id FROM quarantine)"
            " WHERE batch_id IS NOT NULL GROUP BY 1, 2"
        )
    }
    # Streamed: a city's batches hold gigabytes of manifests.
    rows = db.execute("SELECT device_id, batch_id, manifest, signature FROM batches ORDER BY rowid")
    for device_id, batch_id, manifest, signature in rows:
        report.batches += 1
        where = f"batch {batch_id} of {device_id}"
        if _change_hashes(device_id, batch_id, manifest) is None:
            report.problems.append(f"{where}: the manifest does not name this device and batch")
        if device_id not in device_keys:
            report.problems.append(f"{where}: the device is not enrolled here")
        else:
            try:
                signing.verify(device_keys[device_id], signature, manifest, "batch")
            except BadSignature:
                report.problems.append(
                    f"{where}: the device's signature does not verify over the stored manifest"
                )
        entry = logged.pop((f"device:{device_id}", f"batch/{batch_id}"), None)
        if entry is None:
            report.problems.append(f"{where}: no audit entry logs it")
            continue
        for name, value in (("manifest", manifest), ("signature", signature)):
            if entry.detail.get(f"{name}_sha256") != hashlib.sha256(value).hexdigest():
                report.problems.append(
                    f"{where}: the stored {name} differs from the one audited in entry {entry.seq}"
                )
        # Logged or quarantined, never deleted (entries from before the count have none).
        expected, found = entry.detail.get("stored"), stored.get((device_id, batch_id), 0)
        if expected is not None and found != expected:
            report.problems.append(
                f"{where}: {found} of its changes are stored, {expected} when it was applied"
                f" (entry {entry.seq})"
            )
    for (actor, subject), entry in sorted(logged.items(), key=lambda item: item[1].seq):
        device_id, batch_id = actor.removeprefix("device:"), subject.removeprefix("batch/")
        report.problems.append(
            f"entry {entry.seq} (push): batch {batch_id} of {device_id} is not stored"
        )
    _check_change_bytes(store, report)


def _change_hashes(device_id: str, batch_id: str, manifest: bytes) -> set[bytes] | None:
    """The change hashes a manifest signs; None unless it is one for this device and batch."""
    digests = signing.signed_digests(manifest, device_id, batch_id)
    return None if digests is None else set(digests)


# Changes filed under a device's batch (the office's and the console's have none).
_FILED = {
    "changes": "SELECT 'change ' || change_id || ' (seq ' || seq || ')', change_id, device_id,"
    " batch_id, record_type, record_id, raw FROM changes"
    " WHERE batch_id IS NOT NULL AND raw != x'' ORDER BY seq",
    "quarantine": "SELECT 'quarantined change ' || change_id, change_id, device_id,"
    " batch_id, record_type, record_id, raw FROM quarantine"
    " WHERE batch_id IS NOT NULL AND raw != x'' ORDER BY id",
}


def _check_change_bytes(store: SqliteStore, report: Report) -> None:
    """Every stored change filed under a batch must be one its device signed in that batch."""

    @functools.lru_cache(maxsize=64)  # a batch's changes sit together in the log
    def signed_in(device_id: str, batch_id: str) -> set[bytes] | None:
        row = store.db.execute(
            "SELECT manifest FROM batches WHERE device_id = ? AND batch_id = ?",
            [device_id, batch_id],
        ).fetchone()
        return None if row is None else _change_hashes(device_id, batch_id, row[0]) or set()

    for table, query in _FILED.items():
        rows = store.db.execute(query)
        while chunk := rows.fetchmany(_CHUNK):
            data_keys = data_keys_of(store, {(row[4], row[5]) for row in chunk}, report.problems)
            for name, change_id, device_id, batch_id, record_type, record_id, sealed in chunk:
                report.changes += 1
                where = f"{name} of {device_id}"
                hashes = signed_in(device_id, batch_id)
                if hashes is None:
                    report.problems.append(f"{where}: its batch {batch_id} is not stored")
                    continue
                key = (record_type, record_id)
                if key not in data_keys:  # named already: its key is missing or damaged
                    continue
                data_key = data_keys[key]
                if data_key is None:  # erased: nothing left to check
                    continue
                try:
                    raw = open_sealed(data_key, sealed, bind(table, key, change_id))
                except LianxinError:
                    report.problems.append(f"{where}: its stored bytes do not open")
                    continue
                if signing.digest(raw) not in hashes:
                    report.problems.append(
                        f"{where}: its bytes are not in the manifest of batch {batch_id}"
                    )


def data_keys_of(
    store: SqliteStore, keys: set[RecordKey], problems: list[str]
) -> dict[RecordKey, AESGCM | None]:
    """The data keys of `keys` (None: erased); each missing or not opening is named in
    `problems` and left out."""
    try:
        found = store.vault.data_keys(keys)
    except Unreadable:  # one damaged, or under a master key the key file lacks: which?
        found, unreadable = {}, set()
        for key in keys:
            try:
                found |= store.vault.data_keys([key])
            except Unreadable as error:
                problems.append(f"{key[0]}/{key[1]}: its data key does not open: {error.detail}")
                unreadable.add(key)
        keys = keys - unreadable
    for key in sorted(keys - found.keys()):
        problems.append(f"{key[0]}/{key[1]}: no data key in the key store")
    return found


def _check_agreements(store: SqliteStore, keys: OfficeKeys, report: Report) -> None:
    db = store.db
    devices = dict(db.execute("SELECT device_id, signing_key FROM devices").fetchall())
    executions = {
        subject.removeprefix("agreement/"): entry
        for (_, subject), entry in _logged(store, "agreement_execute", report).items()
    }
    ids = [
        row[0]
        for row in db.execute(
            "SELECT record_id FROM records WHERE record_type = 'agreement' ORDER BY record_id"
        )
    ]
    for agreement_id in ids:
        where = f"agreement {agreement_id}"
        key = ("agreement", agreement_id)
        try:
            state = store.states([key]).get(key)
        except LianxinError:
            report.problems.append(f"{where}: its stored state does not open")
            continue
        if state is None:  # erased
            continue
        agreement = materialize(state)
        assert isinstance(agreement, Agreement)
        report.agreements += 1
        for signature in agreement.signatures:
            report.signatures += 1
            device_id = signature.device_id or ""
            signer = f"{where}: the signature of {signature.signer} (device {device_id})"
            if device_id not in devices:
                report.problems.append(f"{signer}: the device is not enrolled here")
                continue
            message = agreements.signature_message(agreement_id, signature)
            try:
                signing.verify(devices[device_id], signature.signature, message, "agreement")
            except BadSignature:
                report.problems.append(f"{signer}: does not verify with the device's key")
        if agreement.status in ("executed", "superseded") or agreement.receipt is not None:
            report.receipts += 1
            for problem in agreements.receipt_problems(
                agreement_id, agreement, keys.office_id, keys.signing_public
            ):
                report.problems.append(f"{where}: receipt: {problem}")
        entry = executions.get(agreement_id)
        if entry is not None and agreement.receipt is not None:
            logged = (entry.detail.get("content_hash"), entry.detail.get("signatures_hash"))
            if logged != (agreement.receipt.content_hash, agreement.receipt.signatures_hash):
                report.problems.append(
                    f"{where}: its receipt differs from the execution audited in entry {entry.seq}"
                )
