"""Backup and restore of an office: consistent snapshots, a manifest, a verified restore.

    DEST/lianxin.db          the store, by SQLite's online backup API
    DEST/data-keys.db        the data keys' store (server.storage.vault), the same way
    DEST/office-keys.json    the locked office key file, only when asked for
    DEST/manifest.json       when, which office, schema migrations, SHA-256 of each file

Backups run beside a serving office and only read from it (the audit entry
that says a backup was taken is the one write). The store is copied first
and the key store after: data keys are committed before anything sealed
under them (`Vault.data_keys`) and are afterwards only re-wrapped or
destroyed, so every record in the data snapshot has its key in the later
key snapshot, unless it was erased in between, and then it must stay closed.

Erasure destroys a data key in the live key store only. A backup taken
after an erasure cannot open the erased case; one taken before still holds
its key until that backup is destroyed (PROTOCOL.md section 15). So keep
only the newest key stores, and restore old data with a newer key store
(`data_keys`: the live one, if it survived, or the latest backup's): keys
are only ever added or destroyed, so a newer key store opens every record
of older data except those erased since, and the restore finishes their
erasure again (`server.erasure`): every record whose key is destroyed is
cleared. That reads the records linked to them (to work out their readers
again), so it needs the office key file; without one, such a restore is
refused.

The office key file is not copied by default: one folder holding the data,
the data keys and the master keys that open them is a single point of
compromise, even with the key file locked under the passphrase.

The manifest's hashes catch a damaged or altered copy before anything is
written; they are not a signature (anyone who can write the backup can
rewrite them). What an attacker cannot forge is caught by the restore's own
checks: every sealed value must open under its data key, and everything
`lianxin audit verify` checks must hold: the audit chain, its checkpoints
signed with the office key, every batch signed by its device, and every
agreement's signatures and office receipt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import msgspec
import sqlite_utils

from server import audit, audit_verify
from server.erasure import erase_records
from server.keys import LockedFile, OfficeKeys
from server.settings import Settings
from server.storage.migrations import MIGRATIONS
from server.storage.sqlite import SqliteStore, bind, open_store
from sync.atrest import open_sealed
from sync.errors import Unreadable
from sync.store import RecordKey

FORMAT = 1
MANIFEST = "manifest.json"
STORE_FILE = "lianxin.db"
KEY_STORE_FILE = "data-keys.db"
UNFINISHED = "RESTORE-UNFINISHED"  # in the data folder while a restore is not done
KEY_FILE = "office-keys.json"
# Past this many, a broken restore lists no more problems; it says how many it left out.
MAX_PROBLEMS = 20
_ROWS = 500

log = logging.getLogger("lianxin.backup")


class FileDigest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    bytes: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: int
    created_ms: int
    created_at: str
    office_id: str
    migrations: list[str]
    key_file_included: bool
    files: list[FileDigest]


class Restored(NamedTuple):
    """What a restore found: sealed values opened per table, erased ones left shut, problems."""

    manifest: Manifest | None
    opened: dict[str, int]
    erased: int
    audit_entries: int
    checked_records: bool
    problems: list[str]
    # Records erased after the backup was taken (their key is gone from the key store
    # restored with it), as type/id: what the old data still held of them was cleared
    # again. Cases, their parties, and any other record whose key is destroyed (a party
    # erased with a case it alone was linked to then, though another case still names
    # it in the old data).
    records_cleared: tuple[str, ...] = ()

    @property
    def erasures_finished(self) -> tuple[str, ...]:
        """The ids of the cases among `records_cleared`."""
        return tuple(r.removeprefix("case/") for r in self.records_cleared if r.startswith("case/"))


# Every sealed column of the store, as (record type, record id, bound row, sealed bytes).
_SEALED = {
    "records": "SELECT record_type, record_id, '', state FROM records",
    "changes": "SELECT record_type, record_id, change_id, raw FROM changes",
    "quarantine": "SELECT record_type, record_id, change_id, raw FROM quarantine",
    "conflicts": "SELECT record_type, record_id, field, conflict FROM conflicts",
    "users": "SELECT 'user', user_id, 'name', name FROM users",
}


def backup(
    settings: Settings, dest: Path, *, with_key_file: bool, actor: str, now_ms: int
) -> Manifest:
    """Snapshot the office of `settings` into the new or empty folder `dest`.

    Raises FileExistsError if `dest` holds anything, FileNotFoundError if
    there is no office, and `Unreadable` if a snapshot fails its integrity
    check. Appends a `backup` entry to the office's audit log.
    """
    if (settings.data_dir / UNFINISHED).exists():
        raise FileNotFoundError(f"no office in {settings.data_dir}: a restore there did not finish")
    for source in (settings.store_path, settings.key_store_path, settings.keys_path):
        if not source.exists():
            raise FileNotFoundError(f"no office in {settings.data_dir}: {source} is missing")
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; back up into a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    _snapshot(settings.store_path, dest / STORE_FILE)
    key_file = settings.keys_path.read_bytes()
    _snapshot(settings.key_store_path, dest / KEY_STORE_FILE)
    # A rotation between the two reads could leave data keys under a master key the
    # copied file lacks (or the file naming one the key snapshot no longer uses).
    while with_key_file and (again := settings.keys_path.read_bytes()) != key_file:
        key_file = again
        _snapshot(settings.key_store_path, dest / KEY_STORE_FILE)
    names = [STORE_FILE, KEY_STORE_FILE]
    if with_key_file:
        _write_new(dest / KEY_FILE, key_file)
        names.append(KEY_FILE)
    with closing(sqlite3.connect(dest / STORE_FILE)) as copy:
        migrations = [row[0] for row in copy.execute("SELECT name FROM migrations ORDER BY name")]
    manifest = Manifest(
        format=FORMAT,
        created_ms=now_ms,
        created_at=datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="seconds"),
        office_id=_office_id(key_file),
        migrations=migrations,
        key_file_included=with_key_file,
        files=[_digest(dest / name) for name in names],
    )
    _write_new(dest / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest)))
    _fsync(dest)  # the new names, not only the bytes
    detail = {
        "to": str(dest.resolve()),
        "key_file_included": with_key_file,
        "sha256": {f.name: f.sha256 for f in manifest.files},
    }
    _audit_source(settings.store_path, now_ms, actor, detail)
    log.info("backup written", extra={"fields": {"action": "backup", **detail}})
    return manifest


def _snapshot(source: Path, target: Path) -> None:
    """One consistent copy of a live SQLite file, as a single self-contained file."""
    target.unlink(missing_ok=True)
    live = sqlite3.connect(source)
    copy = sqlite3.connect(target)
    try:
        live.execute("PRAGMA busy_timeout = 10000")
        live.execute("PRAGMA query_only = ON")
        # All pages in one step: one read transaction, so one moment of the file. In WAL
        # mode it does not hold up the server's writer; a stepwise copy would restart
        # on every write the server commits meanwhile.
        live.backup(copy, pages=-1)
        copy.execute("PRAGMA journal_mode = DELETE")
        checked = copy.execute("PRAGMA integrity_check").fetchall()
        if checked != [("ok",)]:
            raise Unreadable(f"the snapshot of {source} fails integrity_check: {checked[:3]}")
    finally:
        live.close()
        copy.close()
    os.chmod(target, 0o600)
    _fsync(target)


def _audit_source(store_path: Path, now_ms: int, actor: str, detail: dict[str, object]) -> None:
    # A full copy of the sealed data (with the key file, of everything) is an export,
    # which the audit log must show; it is written through SQLite's own lock, beside
    # the serving office's writer, as `lianxin device revoke` does.
    conn = sqlite3.connect(store_path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        db = sqlite_utils.Database(conn)
        db.execute("BEGIN IMMEDIATE")
        audit.append(db, now_ms, actor, "backup", "office", detail)
        db.execute("COMMIT")
    finally:
        conn.close()


def read_manifest(src: Path) -> Manifest:
    """The manifest of the backup in `src`; `Unreadable` if missing or not a manifest."""
    try:
        manifest = msgspec.json.decode((src / MANIFEST).read_bytes(), type=Manifest)
    except (FileNotFoundError, NotADirectoryError):  # also a file given for the folder
        raise Unreadable(
            f"{src} holds no {MANIFEST}: not a Lianxin backup, or unfinished"
        ) from None
    except OSError as error:
        raise Unreadable(f"{src / MANIFEST} cannot be read: {error.strerror}") from None
    except msgspec.DecodeError as error:
        raise Unreadable(f"{src / MANIFEST} is not a backup manifest: {error}") from None
    if manifest.format != FORMAT:
        raise Unreadable(
            f"{src / MANIFEST} has format {manifest.format}; this lianxin reads {FORMAT}"
        )
    return manifest


def check_files(src: Path, manifest: Manifest) -> list[str]:
    """Every file of the manifest that is missing or differs from it; empty when all match."""
    problems = []
    for expected in manifest.files:
        path = src / expected.name
        if not path.is_file():
            problems.append(f"{expected.name}: missing from {src}")
            continue
        found = _digest(path)
        if found.sha256 != expected.sha256:
            problems.append(
                f"{expected.name}: SHA-256 {found.sha256[:16]}… differs from the manifest's"
                f" {expected.sha256[:16]}… (changed or damaged since the backup)"
            )
    return problems


def restore(
    src: Path,
    settings: Settings,
    *,
    key_file: Path | None,
    passphrase: Callable[[], str],
    actor: str,
    now_ms: int,
    data_keys: Path | None = None,
) -> Restored:
    """Restore the backup in `src` into the office folders of `settings`, then check it.

    `data_keys` is a newer key store to restore instead of the backup's own,
    so that cases erased since the backup stay erased.

    Refuses (writing nothing) a non-empty target, a missing or changed file,
    a key file of another office. After copying: integrity_check on both
    databases, then, with a key file (the backup's or `key_file`), every
    sealed value must open (erased records excepted), the store must pass
    `audit_verify.verify_store` (chain, checkpoints, batch and agreement
    signatures), and every record whose data key is
    destroyed is cleared (`finish_erasures`). Without a key file, a store
    holding such records is refused: clearing them needs the key. On any
    problem the restored files are removed again, so a broken restore can
    never be served; an unexpected exception removes them too, then
    propagates. `passphrase` is asked only when a key file is there to
    unlock.
    """
    manifest, locked, problems = _refusals(src, settings, key_file)
    if data_keys is not None and not data_keys.is_file():
        problems.append(f"{data_keys}: no such key store")
    if manifest is None or problems:
        return Restored(manifest, {}, 0, 0, False, problems)
    secret = passphrase() if locked is not None else ""
    targets = dict.fromkeys([settings.data_dir, settings.key_store_path.parent])
    created = [folder for folder in targets if not folder.exists()]
    copies = [
        (src / STORE_FILE, settings.store_path),
        (src / KEY_STORE_FILE, settings.key_store_path),
        *([(locked, settings.keys_path)] if locked is not None else []),
    ]
    # Until the checks pass and the restore is logged, the folder says so: a restore
    # killed half way must not leave an office that serves unchecked, its phones untold.
    unfinished = settings.data_dir / UNFINISHED
    written = [*(target for _, target in copies), unfinished]  # the mark goes last
    result = Restored(manifest, {}, 0, 0, False, [])
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        unfinished.write_text("lianxin restore: not finished; remove this folder, restore again\n")
        _fsync(unfinished)
        _fsync(settings.data_dir)
        for source, target in copies:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            _fsync(target)
        if data_keys is not None:  # perhaps live: copied as a snapshot, like a backup
            _snapshot(data_keys, settings.key_store_path)
        for target in (settings.store_path, settings.key_store_path):
            with closing(sqlite3.connect(target)) as conn:
                checked = conn.execute("PRAGMA integrity_check").fetchall()
            if checked != [("ok",)]:
                result.problems.append(f"{target.name}: integrity_check says {checked[:3]}")
        detail = {
            "backup": manifest.created_at,
            "manifest_sha256": _digest(src / MANIFEST).sha256,
            "data_keys": "backup" if data_keys is None else "newer",
            # Makes this restore's entry, which cursors bind, unlike any other's.
            "nonce": secrets.token_hex(16),
        }
        if not result.problems and locked is not None:
            result = _open_everything(settings, manifest, secret, actor, now_ms, detail)
        elif not result.problems:
            result.problems.extend(_erasures_needing_the_key(settings))
            if not result.problems:
                _log_restore(settings.store_path, actor, now_ms, detail)
    except (OSError, sqlite3.DatabaseError, Unreadable) as error:
        result.problems.append(f"restoring into {settings.data_dir} failed: {error}")
    except BaseException:
        # One no one foresaw still propagates, but leaves no half-checked restore to serve.
        _remove(written, created)
        raise
    if result.problems:
        _remove(written, created)
    else:
        unfinished.unlink()
        _fsync(settings.data_dir)
        fields = {"action": "restore", "backup": manifest.created_at, "office": manifest.office_id}
        log.info("backup restored", extra={"fields": fields})
    return result


def _log_restore(store_path: Path, actor: str, now_ms: int, detail: dict[str, str]) -> None:
    """Log the restore in the restored office's audit chain, which goes on from there; the
    office's cursors bind its last restore (`audit.last_restore`)."""
    db = sqlite_utils.Database(store_path)
    try:
        with db.conn:
            audit.append(db, now_ms, actor, "restore", "office", detail)
    finally:
        db.close()


def _erasures_needing_the_key(settings: Settings) -> list[str]:
    """Why a restore without the office key file must be refused, if it must."""
    unfinished = unfinished_erasures(settings.store_path, settings.key_store_path)
    if not unfinished:
        return []
    # Left as they are, the old data would serve records erased since (their index
    # entries, links, readers and repeat flags) and no device would be told. Clearing
    # them works out the readers of the records they link again, which opens those.
    names = ", ".join(f"{t}/{i}" for (t, i), _ in unfinished[:5])
    more = f" and {len(unfinished) - 5} more" if len(unfinished) > 5 else ""
    return [
        f"{len(unfinished)} records erased since this backup was taken are still in it"
        f" ({names}{more}); clearing them needs the office key file:"
        " restore again with --key-file"
    ]


def _refusals(
    src: Path, settings: Settings, key_file: Path | None
) -> tuple[Manifest | None, Path | None, list[str]]:
    """The manifest, the key file to restore (if any), and every reason to write nothing."""
    try:
        manifest = read_manifest(src)
    except Unreadable as error:
        return None, None, [error.detail]
    problems = check_files(src, manifest)
    for folder in dict.fromkeys([settings.data_dir, settings.key_store_path.parent]):
        if folder.exists() and any(folder.iterdir()):
            problems.append(f"{folder} is not empty; restore only into a new or empty folder")
    unknown = sorted(set(manifest.migrations) - {name for name, _ in MIGRATIONS})
    if unknown:
        problems.append(f"the backup has migrations this lianxin does not know: {unknown}")
    locked = key_file or (src / KEY_FILE if manifest.key_file_included else None)
    if locked is not None and not problems:
        try:
            if (office := _office_id(locked.read_bytes())) != manifest.office_id:
                problems.append(f"{locked} is the key file of {office}, not {manifest.office_id}")
        except OSError as error:
            problems.append(f"{locked}: {error.strerror}")
        except Unreadable as error:
            problems.append(f"{locked}: {error.detail}")
    return manifest, locked, problems


def _remove(files: list[Path], created: list[Path]) -> None:
    for path in files:
        for leftover in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    for folder in reversed(created):
        shutil.rmtree(folder, ignore_errors=True)


def _open_everything(
    settings: Settings,
    manifest: Manifest,
    secret: str,
    actor: str,
    now_ms: int,
    detail: dict[str, str],
) -> Restored:
    try:
        keys = OfficeKeys.load(settings.keys_path, secret)
    except Unreadable as error:
        return Restored(manifest, {}, 0, 0, False, [error.detail])
    store = open_store(settings, keys)
    try:
        opened, erased, problems = open_sealed_values(store)
        # Everything `lianxin audit verify` checks: the chain, its signed checkpoints (the
        # chain alone does not show entries cut off after one), every device's batch
        # signature and every agreement's signatures and receipt. Whoever could rewrite
        # the data keys could rewrite a change; no one without the device's key can sign it.
        report = audit_verify.verify_store(store, keys)
        problems = list(dict.fromkeys(problems + report.problems))  # a bad key named once
        entries = report.entries
        cleared: list[str] = []
        if not problems:
            # The restored office's log says where it came from (cursors bind it, see
            # `_log_restore`); its chain goes on from there.
            with store.transaction():
                audit.append(store.db, now_ms, actor, "restore", "office", detail)
            cleared = finish_erasures(store, actor, now_ms)
    finally:
        store.close()
    return Restored(manifest, opened, erased, entries, True, _capped(problems), tuple(cleared))


# Each record whose data key is destroyed but of which the store still holds anything
# an erasure drops: sealed bytes, links, readers, blind-index or case-index entries.
# An `access` row alone is no leftover: it lets no one read anything of an erased record
# (and a supervisor added after an erasure was once given such rows).
_UNFINISHED = """
SELECT d.record_type, d.record_id, coalesce(d.reason, '') FROM vault.data_keys d
WHERE d.wrapped IS NULL AND (
  EXISTS (SELECT 1 FROM records r WHERE r.record_type = d.record_type
          AND r.record_id = d.record_id AND length(r.state) > 0)
  OR EXISTS (SELECT 1 FROM changes c WHERE c.record_type = d.record_type
             AND c.record_id = d.record_id AND length(c.raw) > 0)
  OR EXISTS (SELECT 1 FROM links l WHERE l.record_type = d.record_type
             AND l.record_id = d.record_id)
  OR EXISTS (SELECT 1 FROM links l WHERE d.record_type = 'case' AND l.case_id = d.record_id)
  OR EXISTS (SELECT 1 FROM people_index p WHERE p.record_type = d.record_type
             AND p.record_id = d.record_id)
  OR EXISTS (SELECT 1 FROM case_index i WHERE d.record_type = 'case' AND i.case_id = d.record_id)
)
ORDER BY d.record_type, d.record_id
"""


def unfinished_erasures(store_path: Path, key_store_path: Path) -> list[tuple[RecordKey, str]]:
    """Each record the key store has erased that the store still holds, with the reason
    the key store gives; empty when every erasure is finished. Needs no key."""
    with closing(sqlite3.connect(store_path)) as conn:
        conn.execute("ATTACH DATABASE ? AS vault", [str(key_store_path)])
        rows = conn.execute(_UNFINISHED).fetchall()
    return [((record_type, record_id), reason) for record_type, record_id, reason in rows]


def finish_erasures(store: SqliteStore, actor: str, now_ms: int) -> list[str]:
    """Clear again what the store holds of records whose key the key store has destroyed.

    That is the state of old data restored with a newer key store: the
    records do not open, but their sealed bytes, index entries, links and
    readers' access are still there, and devices were never told. Each such
    case is erased again with the records it links whose key is destroyed
    too, with the key store's own reason; every other such record (a party
    erased live once no other case named it, still named in the old data)
    on its own. Only those: a party the old data shows unshared may have been
    shared, and kept, when its case was erased.

    Returns every record cleared, as type/id.
    """
    unfinished = dict(unfinished_erasures(store.path, store.vault.path))
    cleared = []
    for key, reason in list(unfinished.items()):
        if key[0] != "case":
            continue
        linked = store.db.execute(
            "SELECT record_type, record_id FROM links WHERE case_id = ? ORDER BY 1, 2", [key[1]]
        ).fetchall()
        targets = [key, *(k for k in linked if k in unfinished)]
        erase_records(store, targets, reason, actor, now_ms)
        for target in targets:
            unfinished.pop(target)
            cleared.append("/".join(target))
    for key, reason in unfinished.items():
        erase_records(store, [key], reason, actor, now_ms)
        cleared.append("/".join(key))
    return cleared


def open_sealed_values(store: SqliteStore) -> tuple[dict[str, int], int, list[str]]:
    """Open every sealed value of the store: how many opened per table, how many are
    erased (key destroyed, left shut), and each value that does not open or has no key."""
    opened: Counter[str] = Counter()
    erased = 0
    problems: list[str] = []
    for table, query in _SEALED.items():
        opened[table] += 0
        cursor = store.db.conn.execute(query)
        while rows := cursor.fetchmany(_ROWS):
            keys = audit_verify.data_keys_of(store, {(t, i) for t, i, _, _ in rows}, problems)
            for record_type, record_id, row, sealed in rows:
                key = (record_type, record_id)
                where = f"{table} {record_type}/{record_id}" + (f" {row}" if row else "")
                if key not in keys:
                    continue  # named already: its data key is missing or does not open
                elif (data_key := keys[key]) is None:
                    erased += 1
                else:
                    try:
                        open_sealed(data_key, sealed, bind(table, key, row))
                        opened[table] += 1
                    except Unreadable:
                        problems.append(f"{where}: does not open under its data key")
    return dict(opened), erased, problems


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more problems"]


def _office_id(locked: bytes) -> str:
    try:
        return msgspec.json.decode(locked, type=LockedFile).office_id
    except msgspec.DecodeError as error:
        raise Unreadable(f"not a locked office key file: {error}") from None


def _digest(path: Path) -> FileDigest:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return FileDigest(name=path.name, bytes=path.stat().st_size, sha256=digest.hexdigest())


def _write_new(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
