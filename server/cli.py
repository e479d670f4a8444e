"""`lianxin` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from server import (
    agreements,
    audit,
    audit_verify,
    backup,
    erasure,
    logs,
    memory,
    pseudonyms,
)
from server.console import signin, times
from server.fleet.options import add_arguments as fleet_arguments
from server.keys import OfficeKeys
from server.settings import Settings, load_settings
from server.storage import people
from server.storage.directory import ROLES, Directory, Role, User
from server.storage.sqlite import SqliteStore, open_store
from sync.agreements import Bundle, export_bundle, verify_file
from sync.clock import system_wall_ms
from sync.errors import LianxinError

STORE_FILE = "lianxin.db"
CODE_TTL_MS = 24 * 3600_000
MAX_CODE_HOURS = 720  # 30 days
PASSPHRASE_ENV = "LIANXIN_PASSPHRASE"
# A request that read the key file just before a rotation may still wrap a data
# key under the old master key; retiring it waits this long after a rotation.
RETIRE_AFTER_MS = 60_000


def passphrase(confirm: bool = False) -> str:
    """The office passphrase: from LIANXIN_PASSPHRASE, else typed at a terminal."""
    given = os.environ.get(PASSPHRASE_ENV)
    if given:
        return given
    if not sys.stdin.isatty():
        raise SystemExit(f"lianxin: set {PASSPHRASE_ENV} or run in a terminal to type it")
    typed = getpass.getpass("Office passphrase: ")
    if confirm and getpass.getpass("Again: ") != typed:
        raise SystemExit("lianxin: the passphrases differ")
    if len(typed) < 12:
        raise SystemExit("lianxin: use a passphrase of at least 12 characters")
    return typed


def unlock(settings: Settings) -> OfficeKeys:
    """The office keys, unlocked with the passphrase; exits with a clear message if wrong."""
    if (settings.data_dir / backup.UNFINISHED).exists():
        raise SystemExit(
            f"lianxin: a restore into {settings.data_dir} did not finish (it was stopped):"
            " nothing there is checked. Remove the folder and restore again."
        )
    if not settings.keys_path.exists():
        raise SystemExit(f"lianxin: no office in {settings.data_dir}; run `lianxin init` first")
    try:
        return OfficeKeys.load(settings.keys_path, passphrase())
    except LianxinError as error:
        raise SystemExit(f"lianxin: {error.detail}") from None


def init(settings: Settings, admin: str, org_units: list[str]) -> int:
    """Create a new office: store, office keys and its first admin (with an enrolment code)."""
    if settings.keys_path.exists():
        print(f"lianxin: {settings.keys_path} exists; this office is already initialised")
        return 1
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    OfficeKeys.generate(passphrase(confirm=True)).save(settings.keys_path, new=True)
    try:
        with _directory(settings) as directory, directory.store.transaction():
            now_ms = system_wall_ms()
            user = _added_user(directory, admin, "admin", org_units)
            code = directory.issue_code(user.user_id, now_ms, CODE_TTL_MS)
            expires = {"expires_at_ms": now_ms + CODE_TTL_MS}
            _audited(directory, "issue_code", f"user/{user.user_id}", expires)
    except BaseException as error:
        settings.keys_path.unlink()  # an office with no admin: `init` may be run again
        if isinstance(error, ValueError):  # an org unit that is no path, say
            print(f"lianxin: {error}")
            return 1
        raise
    print(
        f"Created office in {settings.data_dir} (store {settings.store_path.name}, keys"
        f" {settings.keys_path.name})"
    )
    print(f"Admin {admin}: user id {user.user_id}, enrolment code {code} (valid 24 h, once)")
    print(
        "Before the admin can sign in to the console: lianxin user password"
        f" {user.user_id}, then lianxin user totp {user.user_id} (admins need both)"
    )
    return 0


def operator() -> str:
    """Who runs this command, as the audit log names them."""
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):  # a container's user id with no name (no passwd entry)
        return f"operator:uid-{os.getuid()}"


def _audited(directory: Directory, action: str, subject: str, detail: Any = None) -> None:
    """Log an operator's act in the audit chain, as the console logs an admin's (join the
    act's transaction to log it with the act)."""
    with directory.store.transaction():
        audit.append(directory.db, system_wall_ms(), operator(), action, subject, detail)


def add_user(settings: Settings, name: str, role: Role, org_units: list[str]) -> int:
    with _directory(settings) as directory:
        user = _added_user(directory, name, role, org_units)
    print(user.user_id)
    return 0


def _added_user(directory: Directory, name: str, role: Role, org_units: list[str]) -> User:
    """A new user, audited in the same transaction."""
    with directory.store.transaction():
        user = directory.add_user(name, role, org_units, system_wall_ms())
        detail = {"role": role, "org_units": org_units}  # never the name: the log is clear
        _audited(directory, "add_user", f"user/{user.user_id}", detail)
    return user


def set_password(settings: Settings, user_id: str) -> int:
    """Give a supervisor or admin a console password (LIANXIN_NEW_PASSWORD, else typed)."""
    password = os.environ.get("LIANXIN_NEW_PASSWORD") or getpass.getpass("New password: ")
    with _directory(settings) as directory:
        if directory.user(user_id) is None:
            print(f"lianxin: no user {user_id}")
            return 1
        try:
            with directory.store.transaction():
                signin.set_password(directory, user_id, password)
                _audited(directory, "set_password", f"user/{user_id}")
        except ValueError as error:
            print(f"lianxin: {error}")
            return 1
    print(f"Password set for {user_id}")
    return 0


def enable_totp(settings: Settings, user_id: str) -> int:
    """Turn on the second factor for a user; prints the URI to scan into an authenticator."""
    with _directory(settings) as directory:
        user = directory.user(user_id)
        if user is None:
            print(f"lianxin: no user {user_id}")
            return 1
        with directory.store.transaction():
            uri = signin.enable_totp(directory, user)
            _audited(directory, "enable_totp", f"user/{user_id}")
    print(uri)
    return 0


def issue_code(settings: Settings, user_id: str, ttl_hours: float) -> int:
    now_ms, ttl_ms = system_wall_ms(), int(ttl_hours * 3600_000)
    with _directory(settings) as directory:
        try:
            with directory.store.transaction():
                code = directory.issue_code(user_id, now_ms, ttl_ms)
                expires = {"expires_at_ms": now_ms + ttl_ms}
                _audited(directory, "issue_code", f"user/{user_id}", expires)
        except ValueError as error:
            print(f"lianxin: {error}")
            return 1
    print(code)
    return 0


def _reason(text: str) -> str:
    """A reason for the audit log: never blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("say why, for the audit log")
    return text.strip()


def _code_hours(text: str) -> float:
    """An enrolment code's lifetime: a code is meant to be used soon, never for ever."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not 0 < hours <= MAX_CODE_HOURS:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"between 0 and {MAX_CODE_HOURS} hours, not {text}")
    return hours


def list_users(settings: Settings) -> int:
    """Every user, in the order they were added: id, role, org units, and who left."""
    with _directory(settings) as directory:
        for user in directory.users():
            left = times.minute(user.disabled_at_ms, settings.zone)
            line = f"{user.user_id}  {user.role:<10}  {user.name}  [{','.join(user.org_units)}]"
            print(f"{line}  left {left}" if left else line)
    return 0


def disable_user(settings: Settings, user_id: str, reason: str) -> int:
    """Someone left the office: sign them out, refuse them, revoke every device of theirs."""
    with _directory(settings) as directory, directory.store.transaction():
        revoked = directory.disable(user_id, system_wall_ms())
        if revoked is not None:
            detail = {"reason": reason, "revoked_devices": revoked}
            _audited(directory, "disable_user", f"user/{user_id}", detail)
    if revoked is None:
        print(f"lianxin: no user {user_id}, or they are disabled already")
        return 1
    print(f"Disabled {user_id}; revoked {len(revoked)} device(s): {' '.join(revoked) or '-'}")
    return 0


def move_user(settings: Settings, user_id: str, org_units: list[str]) -> int:
    """Give a user other org units (a mediator moving street, a supervisor district)."""
    with _directory(settings) as directory:

        def audited(before: list[str]) -> None:
            detail = {"org_units_before": before, "org_units": org_units}
            _audited(directory, "move_user", f"user/{user_id}", detail)

        try:
            before = directory.move(user_id, org_units, audited)
        except ValueError as error:
            print(f"lianxin: {error}")
            return 1
    if before is None:
        print(f"lianxin: no user {user_id}")
        return 1
    print(f"{user_id}: {', '.join(before)} -> {', '.join(org_units)}")
    return 0


def change_role(settings: Settings, user_id: str, role: Role, reason: str) -> int:
    """Give a user another role: their devices are revoked, and they enrol again for it."""
    with _directory(settings) as directory:

        def audited(before: Role, revoked: list[str]) -> None:
            detail = {
                "reason": reason,
                "role_before": before,
                "role": role,
                "revoked_devices": revoked,
            }
            _audited(directory, "change_role", f"user/{user_id}", detail)

        try:
            changed = directory.change_role(user_id, role, system_wall_ms(), audited)
        except ValueError as error:
            print(f"lianxin: {error}")
            return 1
    if changed is None:
        print(f"lianxin: no user {user_id}, or they left the office")
        return 1
    before, revoked = changed
    print(f"{user_id}: {before} -> {role}; revoked device(s): {' '.join(revoked) or '-'}")
    print("They enrol again for the new role: issue a code (lianxin code).")
    return 0


def enable_user(settings: Settings, user_id: str, reason: str) -> int:
    with _directory(settings) as directory, directory.store.transaction():
        enabled = directory.enable(user_id)
        if enabled:
            _audited(directory, "enable_user", f"user/{user_id}", {"reason": reason})
    if not enabled:
        print(f"lianxin: no disabled user {user_id}")
        return 1
    print(f"Enabled {user_id}: their old devices stay revoked; issue a code for a new one")
    return 0


def revoke_device(settings: Settings, device_id: str) -> int:
    with _directory(settings) as directory, directory.store.transaction():
        revoked = directory.revoke(device_id, system_wall_ms())
        if revoked:
            _audited(directory, "revoke", f"device/{device_id}")
    print(f"Revoked {device_id}" if revoked else f"lianxin: no active device {device_id}")
    return 0 if revoked else 1


def export_agreement(settings: Settings, agreement_id: str, out: Path) -> int:
    """Write a self-contained bundle that `agreement verify` checks with no server.

    Refuses an `--out` inside the office's data or key folders (a bundle
    written over `lianxin.db` or a key file would destroy the office) and an
    existing file (issue 8: path traversal in exports).
    """
    target = out.resolve()
    for folder in (settings.data_dir, settings.key_store_path.parent):
        if target.is_relative_to(folder.resolve()):
            print(f"lianxin: will not write {out} inside the office's folder {folder}")
            return 1
    if out.exists() or out.is_symlink():
        print(f"lianxin: {out} exists; choose a new file")
        return 1
    with _directory(settings) as directory:
        bundle = agreements.bundle(directory, directory.store.vault.keys, agreement_id)
        if bundle is None:
            print(f"lianxin: no agreement {agreement_id}")
            return 1
        data = export_bundle(bundle)
        with out.open("xb") as file:  # never through a link or over a file made meanwhile
            file.write(data)
        detail = {
            "status": bundle.agreement.status,
            "signatures": len(bundle.agreement.signatures),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _audited(directory, "export", f"agreement/{agreement_id}", detail)
    signatures, status = len(bundle.agreement.signatures), bundle.agreement.status
    print(f"Wrote {out} ({signatures} signatures, status {status})")
    # Whoever checks the file needs the key from the office, not from the file.
    print(f"Verify it with --office-key {bundle.office_key.hex()}")
    return 0


def verify_agreement(path: Path, office_key: str) -> int:
    """Check an exported bundle offline against the office's published signing key; say
    exactly what is wrong, if anything."""
    try:
        data = path.read_bytes()
        key = bytes.fromhex(office_key)
    except OSError as error:
        print(f"lianxin: cannot read {path}: {error}")
        return 1
    except ValueError:
        print("lianxin: --office-key takes the office's signing key as 64 hex digits")
        return 1
    problems = verify_file(data, key)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    bundle = msgspec.json.decode(data, type=Bundle)
    print(
        f"OK {bundle.agreement_id}: {len(bundle.agreement.signatures)} signatures verified,"
        f" executed and countersigned by {bundle.office_id} (office key {office_key[:16]}…)"
    )
    return 0


def erase_case(settings: Settings, case_id: str, reason: str) -> int:
    """Erase a case for good (its parties that no other case names go with it)."""
    with _directory(settings) as directory:
        try:
            erased = erasure.erase_case(
                directory.store, case_id, reason, operator(), system_wall_ms()
            )
        except KeyError:
            print(f"lianxin: no case {case_id}")
            return 1
    names = ", ".join(f"{t}/{i}" for t, i in erased.records)
    print(f"Erased {names}; {erased.evicted_users} users' devices evict them on their next pull")
    for record_type, record_id in erased.kept:
        print(f"  kept {record_type}/{record_id}: linked, but another case names it or not a party")
    return 0


def case_repeats(settings: Settings, case_id: str) -> int:
    """Other cases sharing a person with this one, by the blind index."""
    with _directory(settings) as directory:
        found = people.repeats(directory.store, case_id)
    for repeat in found:
        how = "match" if repeat.strong else "possible (name only)"
        print(f"{repeat.case_id}\t{repeat.party_id}\t{how}: {', '.join(repeat.matched_by)}")
    if not found:
        print(f"No other case shares a person with {case_id}")
    return 0


def rotate_keys(settings: Settings, master: bool, kem: bool) -> int:
    """New current keys; data keys re-wrapped while the server keeps serving."""
    with _directory(settings) as directory:
        keys = directory.store.vault.keys
        with keys.changing():  # a running server picks this up on its next request
            keys.rotate(master=master, kem=kem, now_ms=system_wall_ms())
        print(f"Current keys: {keys.master_id}, {keys.kem_key_id}")
        done = 0
        while moved := directory.store.vault.rewrap():
            done += moved
        print(f"Re-wrapped {done} data keys under {keys.master_id}")
        print(f"Copy {settings.keys_path} to its safe place again: backups from now on")
        print("open only with this key file (and those from before, with the one before).")
        detail = {"master_key": keys.master_id, "kem_key": keys.kem_key_id, "rewrapped": done}
        _audited(directory, "rotate_keys", "office", detail)
    return 0


def retire_key(settings: Settings, key_id: str) -> int:
    """Forget an earlier key once nothing needs it."""
    with _directory(settings) as directory:
        vault = directory.store.vault
        keys = vault.keys
        newest = max(k.created_ms for k in [*keys.keyset.master_keys, *keys.keyset.kem_keys])
        if system_wall_ms() - newest < RETIRE_AFTER_MS:
            print("lianxin: the last rotation is under a minute old; requests begun before it")
            print("may still use the old key. Retire it a little later.")
            return 1
        while vault.rewrap():
            pass
        if vault.count_under().get(key_id):
            print(f"lianxin: data keys are still wrapped under {key_id}")
            return 1
        try:
            with keys.changing():
                keys.retire(key_id)
        except ValueError as error:
            print(f"lianxin: {error}")
            return 1
        _audited(directory, "retire_key", f"key/{key_id}")
    print(f"Retired {key_id}")
    # A backup's data-keys.db still wraps its data keys under the retired key.
    print("Backups taken before the last rotation open only with a key file from before it:")
    print("keep such a copy with them, or take a new backup now.")
    return 0


def key_status(settings: Settings) -> int:
    with _directory(settings) as directory:
        keys = directory.store.vault.keys
        under = directory.store.vault.count_under()
    for named in keys.keyset.master_keys:
        current = " (current)" if named.key_id == keys.master_id else ""
        print(f"{named.key_id}{current}: wraps {under.get(named.key_id, 0)} data keys")
    for named in keys.keyset.kem_keys:
        current = " (current)" if named.key_id == keys.kem_key_id else " (still accepted)"
        print(f"{named.key_id}{current}")
    return 0


def verify_audit(settings: Settings) -> int:
    """Check the audit chain, its checkpoints, every stored signature and that every sealed
    value opens; 1 on any break."""
    with _directory(settings) as directory:
        report = audit_verify.verify_store(directory.store, directory.store.vault.keys)
        # The names, texts and states too, not only the changes the batches signed.
        opened, erased, unopened = backup.open_sealed_values(directory.store)
        report.problems = list(dict.fromkeys(report.problems + unopened))  # a bad key once
        report.problems.extend(
            f"the erasure of {'/'.join(key)} stopped half way (its key is destroyed, the store"
            " still holds it, devices were not told): `lianxin serve` finishes it as it starts"
            for key, _ in backup.unfinished_erasures(directory.store.path, settings.key_store_path)
        )
    for problem in report.problems:
        print(f"FAIL {problem}")
    if report.problems:
        print(f"lianxin: {len(report.problems)} problems found")
        return 1
    print(f"OK {report.summary()}")
    print(f"OK {sum(opened.values())} sealed values open; {erased} erased values stay shut")
    return 0


def checkpoint_audit(settings: Settings) -> int:
    """Have the office sign the audit chain's head now; print it to keep elsewhere too."""
    with _directory(settings) as directory, directory.store.transaction():
        keys = directory.store.vault.keys
        mark = audit.checkpoint(directory.db, keys, system_wall_ms())
    if mark is None:
        print("lianxin: the audit log's head is signed already (or the log is empty)")
        return 0
    signature = base64.b64encode(mark.signature).decode()
    print(f"Checkpoint at entry {mark.seq}: hash {mark.hash.hex()}, at {mark.at_ms} ms")
    print(f"signature {signature}")
    return 0


def reveal_informant(settings: Settings, name: str, supervisor_id: str, reason: str) -> int:
    """Tell a supervisor who is behind a pseudonym; audited, refused or not."""
    with _directory(settings) as directory:
        supervisor = directory.user(supervisor_id)
        if supervisor is None:
            print(f"lianxin: no user {supervisor_id}")
            return 1
        try:
            keys = directory.store.vault.keys
            found = pseudonyms.reidentify(
                directory, keys.pseudonym_key, name, supervisor, reason, system_wall_ms()
            )
        except LianxinError as error:
            print(f"lianxin: {error.detail} (the attempt is in the audit log)")
            return 1
    if found is None:
        print(f"No informant has the pseudonym {name}")
        return 1
    print(f"{name} is {found.name} ({found.user_id}, {', '.join(found.org_units)}); audited")
    return 0


def backup_office(settings: Settings, dest: Path, with_key_file: bool) -> int:
    """Snapshot the office into `dest`, also while it serves; the key file only if asked."""
    logs.configure_logging()  # the JSON log line that says a backup was taken
    try:
        manifest = backup.backup(
            settings,
            dest,
            with_key_file=with_key_file,
            actor=operator(),
            now_ms=system_wall_ms(),
        )
    except (OSError, LianxinError) as error:
        print(f"lianxin: backup failed: {getattr(error, 'detail', None) or error}")
        return 1
    files = ", ".join(f"{f.name} ({f.bytes} bytes)" for f in manifest.files)
    print(f"Backed up {manifest.office_id} into {dest}: {files}, {backup.MANIFEST}")
    if with_key_file:
        print("The backup holds the office key file: anyone with it and the passphrase")
        print("reads every case. Keep it as safe as the passphrase.")
    else:
        print(f"The office key file is NOT in the backup. Keep a copy of {settings.keys_path}")
        print("apart from it (not on the same disk or tape): nothing in the backup opens")
        print("without it, and `lianxin restore --key-file` asks for it.")
    return 0


def restore_office(
    settings: Settings, src: Path, key_file: Path | None, data_keys: Path | None
) -> int:
    """Restore a backup into an empty data folder and prove it opens; 1 on any problem."""
    logs.configure_logging()
    restored = backup.restore(
        src,
        settings,
        key_file=key_file,
        passphrase=passphrase,
        actor=operator(),
        now_ms=system_wall_ms(),
        data_keys=data_keys,
    )
    for problem in restored.problems:
        print(f"FAIL {problem}")
    if restored.problems or restored.manifest is None:
        print(f"lianxin: restore refused; nothing of it is left in {settings.data_dir}")
        return 1
    manifest, opened = restored.manifest, restored.opened
    print(f"Restored {manifest.office_id} (backup of {manifest.created_at})", end="")
    print(f" into {settings.data_dir}")
    print(f"OK files match the manifest; integrity_check ok on {backup.STORE_FILE} and key store")
    if data_keys is None:
        # Its key store still holds the key of any case erased after it was taken.
        print(f"WARNING cases erased after {manifest.created_at} can be read again: restore")
        print("with --data-keys and a newer data-keys.db (the latest backup's) to keep them erased")
    # Phones that learnt a KEM key rotated in after this key file refuse an older one.
    print("If the office rotated its keys after this key file was copied, run")
    print("`lianxin keys rotate` before serving, or phones refuse the office's key.")
    if not restored.checked_records:
        print("NOT CHECKED: no office key file, so no record was opened. Put it at")
        print(f"{settings.keys_path}, then run `lianxin audit verify` before serving.")
        return 0
    print(
        f"OK every sealed value opens: {opened['records']} records, {opened['changes']} changes,"
        f" {opened['quarantine']} quarantined, {opened['conflicts']} conflicts,"
        f" {opened['users']} user names; {restored.erased} erased values stay shut"
    )
    print(f"OK audit log: {restored.audit_entries} entries, chain and signed checkpoints intact")
    for record in restored.records_cleared:
        print(f"Erased since the backup: {record}; what the backup held of it is cleared")
    return 0


def serve(settings: Settings) -> int:
    import uvicorn

    from server.app import create_app

    keys = unlock(settings)
    # Between the two: the key derivation's 32 MiB of scratch goes back to the system
    # (it would stay resident under the raised thresholds), and the app starts a thread.
    memory.keep_freed_memory()
    app = create_app(settings, keys=keys)
    # An erasure killed after destroying keys, before telling devices and the audit log.
    cleared = backup.finish_erasures(app.state.service.store, "lianxin serve", system_wall_ms())
    if cleared:
        print(f"Finished erasures that had stopped half way: {', '.join(cleared)}")
    memory.collect_less()
    logs.configure_logging()
    print(f"Lianxin serving {settings.data_dir} on http://{settings.host}:{settings.port}")
    if settings.admin_second_factor:
        locked_out = signin.admins_without_second_factor(app.state.service.directory)
        if locked_out:
            print(
                "Admins who cannot sign in to the console until they have a second factor"
                f" (lianxin user totp USER): {', '.join(locked_out)}"
            )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


def _sign_if_due(store: SqliteStore) -> None:
    """An office whose phones are quiet still gets its chain signed (pushes do it too);
    a store found busy leaves it to the next round."""
    try:
        audit.sign_if_due(store, store.vault.keys, system_wall_ms())
    except sqlite3.OperationalError as error:
        print(f"lianxin: the audit chain is signed later ({error})", file=sys.stderr)


@contextmanager
def _directory(settings: Settings) -> Iterator[Directory]:
    """The office's directory; what the command logged gets the chain signed when due."""
    store = open_store(settings, unlock(settings))
    try:
        yield Directory(store)
        _sign_if_due(store)
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lianxin", description=__doc__)
    parser.add_argument("--config", type=Path, help="a TOML settings file")
    parser.add_argument(
        "--data",
        type=Path,
        help="the data folder (default ./lianxin-data; for demo ./lianxin-demo)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo_parser = commands.add_parser(
        "demo",
        help="a demo office with the DESIGN scenarios, served with its console (in ./lianxin-demo)",
    )
    demo_parser.add_argument(
        "--reset", action="store_true", help="delete the demo office first (only a demo's)"
    )
    demo_parser.add_argument("--no-serve", action="store_true", help="load the data and stop")
    demo_parser.add_argument("--port", type=int)
    demo_parser.add_argument("--days", type=int, help="of simulated field work (7)")
    demo_parser.add_argument("--devices", type=int, help="phones in the field (30)")

    init_parser = commands.add_parser("init", help="create a new office and its first admin")
    init_parser.add_argument("--admin", required=True, help="the first admin's name")
    init_parser.add_argument("--org-unit", action="append", default=[], dest="org_units")

    user_parser = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    add_parser = user_parser.add_parser("add", help="add a user; prints the user id")
    add_parser.add_argument("name")
    add_parser.add_argument("--role", required=True, choices=ROLES)
    add_parser.add_argument(
        "--org-unit",
        action="append",
        required=True,
        dest="org_units",
        help="city/district/street/community (repeatable)",
    )

    password_parser = user_parser.add_parser("password", help="set a console password")
    password_parser.add_argument("user_id")
    totp_parser = user_parser.add_parser("totp", help="require an authenticator code at sign-in")
    totp_parser.add_argument("user_id")

    user_parser.add_parser("list", help="every user, with who left the office")
    disable_parser = user_parser.add_parser(
        "disable", help="someone left: sign out, refuse sign-in, revoke every device"
    )
    disable_parser.add_argument("user_id")
    disable_parser.add_argument("--reason", required=True, type=_reason, help="for the audit log")
    move_parser = user_parser.add_parser("move", help="give a user other org units")
    move_parser.add_argument("user_id")
    move_parser.add_argument(
        "--org-unit",
        action="append",
        required=True,
        dest="org_units",
        help="city/district/street/community (repeatable): replaces the user's units",
    )
    role_parser = user_parser.add_parser(
        "role", help="give a user another role (revokes their devices: they enrol again)"
    )
    role_parser.add_argument("user_id")
    role_parser.add_argument("--role", required=True, choices=ROLES)
    role_parser.add_argument("--reason", required=True, type=_reason, help="for the audit log")
    enable_parser = user_parser.add_parser("enable", help="undo disable (devices stay revoked)")
    enable_parser.add_argument("user_id")
    enable_parser.add_argument("--reason", required=True, type=_reason, help="for the audit log")

    code_parser = commands.add_parser("code", help="issue a one-time enrolment code for a user")
    code_parser.add_argument("user_id")
    code_parser.add_argument(
        "--ttl-hours", type=_code_hours, default=24.0, help="how long it is valid (24; at most 720)"
    )

    device_parser = commands.add_parser("device", help="manage devices").add_subparsers(
        dest="action", required=True
    )
    revoke_parser = device_parser.add_parser("revoke", help="revoke a device at once")
    revoke_parser.add_argument("device_id")
    # The rest act like a phone: the reference client on a device file.
    phone_options = argparse.ArgumentParser(add_help=False)
    phone_options.add_argument("--file", type=Path, required=True, help="the device's file")
    phone_options.add_argument("--server", default="http://127.0.0.1:8470", help="office URL")
    enroll_parser = device_parser.add_parser(
        "enroll", parents=[phone_options], help="enrol this device file with a one-time code"
    )
    enroll_parser.add_argument("code")
    enroll_parser.add_argument("--label", default="")
    edit_parser = device_parser.add_parser(
        "edit", parents=[phone_options], help="queue a change: field=value, --add tags=x, ..."
    )
    edit_parser.add_argument("record_type")
    edit_parser.add_argument("record_id")
    edit_parser.add_argument("fields", nargs="*", help="field=value (value as JSON or text)")
    for option in ("add", "remove", "append"):
        edit_parser.add_argument(f"--{option}", action="append", default=[], metavar="FIELD=VALUE")
    device_parser.add_parser("sync", parents=[phone_options], help="pull, push, pull until done")
    show_parser = device_parser.add_parser(
        "show", parents=[phone_options], help="show a record as this device sees it"
    )
    show_parser.add_argument("record_type")
    show_parser.add_argument("record_id")
    device_parser.add_parser("outbox", parents=[phone_options], help="list changes and answers")

    agreement_parser = commands.add_parser("agreement", help="export and verify").add_subparsers(
        dest="action", required=True
    )
    export_parser = agreement_parser.add_parser("export", help="write a signed bundle")
    export_parser.add_argument("agreement_id")
    export_parser.add_argument("--out", type=Path, required=True)
    verify_parser = agreement_parser.add_parser("verify", help="check a bundle, offline")
    verify_parser.add_argument("file", type=Path)
    verify_parser.add_argument(
        "--office-key",
        required=True,
        help="the office's public signing key (64 hex digits), as the office publishes it",
    )

    case_parser = commands.add_parser("case", help="erase, find repeats").add_subparsers(
        dest="action", required=True
    )
    erase_parser = case_parser.add_parser("erase", help="erase a case for good (lawful erasure)")
    erase_parser.add_argument("case_id")
    erase_parser.add_argument(
        "--reason", required=True, type=_reason, help="the legal ground, for the audit"
    )
    repeats_parser = case_parser.add_parser("repeats", help="other cases of the same people")
    repeats_parser.add_argument("case_id")

    keys_parser = commands.add_parser("keys", help="rotate and retire keys").add_subparsers(
        dest="action", required=True
    )
    rotate_parser = keys_parser.add_parser("rotate", help="new master and KEM keys, no downtime")
    rotate_parser.add_argument("--master-only", action="store_true")
    rotate_parser.add_argument("--kem-only", action="store_true")
    retire_parser = keys_parser.add_parser(
        "retire", help="forget an earlier key (a minute or more after the last rotation)"
    )
    retire_parser.add_argument("key_id")
    keys_parser.add_parser("status", help="which keys exist and what they wrap")

    informant_parser = commands.add_parser("informant", help="re-identify").add_subparsers(
        dest="action", required=True
    )
    reveal_parser = informant_parser.add_parser(
        "reveal", help="who is behind a pseudonym (supervisors only; audited)"
    )
    reveal_parser.add_argument("pseudonym")
    reveal_parser.add_argument("--supervisor", required=True, help="the asking supervisor's id")
    reveal_parser.add_argument("--reason", required=True, type=_reason)

    backup_parser = commands.add_parser("backup", help="snapshot the office, also while it serves")
    backup_parser.add_argument("dest", type=Path, help="a new or empty folder")
    backup_parser.add_argument(
        "--with-key-file",
        action="store_true",
        help="also copy the locked office key file (else keep it apart yourself)",
    )
    restore_parser = commands.add_parser(
        "restore", help="restore a backup into an empty --data folder and verify it"
    )
    restore_parser.add_argument("src", type=Path, help="a folder written by `lianxin backup`")
    restore_parser.add_argument(
        "--key-file", type=Path, help="the office key file, if the backup does not hold it"
    )
    restore_parser.add_argument(
        "--data-keys",
        type=Path,
        help="a newer data-keys.db (the live one, or the latest backup's): cases erased"
        " since this backup stay erased",
    )

    audit_parser = commands.add_parser("audit", help="check the audit log").add_subparsers(
        dest="action", required=True
    )
    audit_parser.add_parser(
        "verify", help="check the chain, checkpoints, batch and agreement signatures"
    )
    audit_parser.add_parser("checkpoint", help="sign the chain's head with the office key")

    simulate_parser = commands.add_parser(
        "simulate", help="a fleet of phones over a faulty network; checks nothing is lost"
    )
    fleet_arguments(simulate_parser)

    serve_parser = commands.add_parser("serve", help="run the sync server")
    serve_parser.add_argument("--host")
    serve_parser.add_argument("--port", type=int)

    args = parser.parse_args(argv)
    settings = load_settings(
        args.config,
        data_dir=args.data,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )
    match args.command, getattr(args, "action", None):
        case "demo", _:
            from server import demo  # heavy (the app, uvicorn, the fleet): only when asked

            sized = {"days": args.days, "devices": args.devices}
            week = msgspec.structs.replace(
                demo.WEEK, **{knob: n for knob, n in sized.items() if n is not None}
            )
            # No days is the scenarios alone, with no week to make.
            for problem in week.problems() if week.days else []:
                print(f"lianxin demo: {problem}", file=sys.stderr)
                return 2
            # Never the office folder the other commands default to, nor its key store.
            own = msgspec.structs.replace(
                settings, data_dir=args.data or demo.FOLDER, keys_dir=None
            )
            secret = os.environ.get(PASSPHRASE_ENV) or demo.PASSPHRASE
            return demo.run(own, secret, reset=args.reset, serve=not args.no_serve, week=week)
        case "init", _:
            return init(settings, args.admin, args.org_units)
        case "user", "add":
            return add_user(settings, args.name, args.role, args.org_units)
        case "user", "password":
            return set_password(settings, args.user_id)
        case "user", "totp":
            return enable_totp(settings, args.user_id)
        case "user", "list":
            return list_users(settings)
        case "user", "disable":
            return disable_user(settings, args.user_id, args.reason)
        case "user", "move":
            return move_user(settings, args.user_id, args.org_units)
        case "user", "role":
            return change_role(settings, args.user_id, args.role, args.reason)
        case "user", "enable":
            return enable_user(settings, args.user_id, args.reason)
        case "code", _:
            return issue_code(settings, args.user_id, args.ttl_hours)
        case "device", "revoke":
            return revoke_device(settings, args.device_id)
        case "device", str(action):  # its subcommand is required: always a str
            from server import phone  # the reference client and httpx: only for phone commands

            return phone.run(action, args.file, args.server, args)
        case "agreement", "export":
            return export_agreement(settings, args.agreement_id, args.out)
        case "agreement", "verify":
            return verify_agreement(args.file, args.office_key)
        case "case", "erase":
            return erase_case(settings, args.case_id, args.reason)
        case "case", "repeats":
            return case_repeats(settings, args.case_id)
        case "keys", "rotate":
            return rotate_keys(settings, master=not args.kem_only, kem=not args.master_only)
        case "keys", "retire":
            return retire_key(settings, args.key_id)
        case "keys", "status":
            return key_status(settings)
        case "informant", "reveal":
            return reveal_informant(settings, args.pseudonym, args.supervisor, args.reason)
        case "backup", _:
            return backup_office(settings, args.dest, args.with_key_file)
        case "restore", _:
            return restore_office(settings, args.src, args.key_file, args.data_keys)
        case "audit", "verify":
            return verify_audit(settings)
        case "audit", "checkpoint":
            return checkpoint_audit(settings)
        case "simulate", _:
            from server.fleet.simulate import main as simulate_fleet  # heavy: only when asked

            return simulate_fleet(args)
        case "serve", _:
            return serve(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
