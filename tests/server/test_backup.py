"""Backup and restore: consistent snapshots, the key file kept apart, a restore that checks."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing, contextmanager

import msgspec
import pytest
from litestar.testing import TestClient

from schemas import Add, Remove
from server import audit, audit_verify, backup
from server.app import create_app
from server.cli import main
from server.erasure import erase_case
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage import people
from server.storage.directory import Directory
from server.storage.sqlite import open_store
from sync.clock import Clock
from sync.errors import Unreadable
from tests.conftest import PASSPHRASE, WALL_MS, Wall, office_keys
from tests.server.conftest import Office
from tests.server.test_app import GONGSHU, decode
from tests.server.test_erasure import open_case


def given(secret=PASSPHRASE):
    return lambda: secret


def folder(tmp_path, name):
    return Settings(data_dir=tmp_path / name)


@pytest.fixture
def office(tmp_path):
    """A real office laid out as `lianxin init` lays it out, served in-process."""
    settings = Settings(data_dir=tmp_path / "office", require_sealed=False, secure_cookies=False)
    settings.data_dir.mkdir()
    keys = office_keys()
    keys.save(settings.keys_path, new=True)
    store = open_store(settings, keys)
    wall = Wall()
    app = create_app(settings, store=store, keys=keys, clock=Clock(wall), wall_ms=wall)
    with TestClient(app) as http:
        running = Office(store, Directory(store), keys, http, wall)
        running.settings = settings
        yield running
    store.close()


def push_case(phone, case_id, party_id, batch_id):
    push_applied(phone, open_case(phone, case_id, party_id), batch_id)


def push_applied(phone, changes, batch_id):
    answer = decode(phone.push(changes, batch_id))
    assert {r["status"] for r in answer["results"]} == {"applied"}


def take(office, dest, with_key_file=True):
    return backup.backup(
        office.settings, dest, with_key_file=with_key_file, actor="operator:wang", now_ms=WALL_MS
    )


def bring_back(src, settings, key_file=None, secret=PASSPHRASE):
    return backup.restore(
        src, settings, key_file=key_file, passphrase=given(secret), actor="operator:wang", now_ms=1
    )


def reopen(settings):
    return open_store(settings, OfficeKeys.load(settings.keys_path, PASSPHRASE))


def bring_back_with_live_keys(office, src, settings, key_file):
    """Old data restored with the office's own key store, which survived (the documented way)."""
    return backup.restore(
        src,
        settings,
        key_file=key_file,
        passphrase=given(),
        actor="operator:li",
        now_ms=WALL_MS + 1,
        data_keys=office.settings.key_store_path,
    )


def rehash(src):
    """What anyone who can write a backup can do: make the manifest agree with its files."""
    manifest = backup.read_manifest(src)
    files = [backup._digest(src / f.name) for f in manifest.files]
    (src / "manifest.json").write_bytes(
        msgspec.json.encode(msgspec.structs.replace(manifest, files=files))
    )


def tamper(src, sql):
    with closing(sqlite3.connect(src / "lianxin.db")) as db:
        db.execute(sql)
        db.commit()
    rehash(src)


def left_of(store, record_type, record_id):
    """What an operator finds of an erased record: nothing but its empty shell."""
    key = [record_type, record_id]
    queries = {
        "sealed state": "SELECT length(state) FROM records"
        " WHERE record_type = ? AND record_id = ? AND length(state) > 0",
        "people_index": "SELECT kind FROM people_index WHERE record_type = ? AND record_id = ?",
        "links": "SELECT case_id FROM links WHERE record_type = ? AND record_id = ?",
        "readers": "SELECT user_id FROM access WHERE record_type = ? AND record_id = ?",
    }
    found = {name: store.db.execute(sql, key).fetchall() for name, sql in queries.items()}
    if record_type == "case":
        for name, sql in (
            ("case_index", "SELECT case_id FROM case_index WHERE case_id = ?"),
            ("its links", "SELECT record_id FROM links WHERE case_id = ?"),
        ):
            found[name] = store.db.execute(sql, [record_id]).fetchall()
    return {name: rows for name, rows in found.items() if rows}


def evicted(store, record_type, record_id):
    return store.db.execute(
        "SELECT reason FROM evictions WHERE record_type = ? AND record_id = ?",
        [record_type, record_id],
    ).fetchall()


def test_a_restored_office_opens_every_record_and_its_audit_chain_verifies(office, tmp_path):
    sun = office.enroll("mediator")
    push_case(sun, "k-1", "p-1", "b-1")
    push_case(sun, "k-2", "p-2", "b-2")
    manifest = take(office, tmp_path / "backup")

    target = folder(tmp_path, "restored")
    restored = bring_back(tmp_path / "backup", target)

    assert restored.problems == []
    assert restored.checked_records
    assert restored.opened["records"] == 4
    assert restored.opened["changes"] == 4
    assert restored.opened["users"] == 1
    assert restored.erased == 0
    assert [f.name for f in manifest.files] == ["lianxin.db", "data-keys.db", "office-keys.json"]
    assert (
        manifest.migrations == sorted(manifest.migrations) and "0001_initial" in manifest.migrations
    )
    copy = reopen(target)
    try:
        assert list(copy.all_states()) == list(office.store.all_states())
        assert audit.verify(copy.db) == []
        restore_entry = audit.entries(copy.db)[-1]
        assert restore_entry.action == "restore"
        manifest_file = (tmp_path / "backup" / "manifest.json").read_bytes()
        assert restore_entry.detail["manifest_sha256"] == hashlib.sha256(manifest_file).hexdigest()
    finally:
        copy.close()
    # The source's log says a backup was taken, with the hashes of what was written.
    last = audit.entries(office.store.db)[-1]
    assert (last.action, last.actor) == ("backup", "operator:wang")
    assert last.detail["sha256"] == {f.name: f.sha256 for f in manifest.files}
    assert audit.verify(office.store.db) == []


def test_the_key_file_stays_out_of_a_backup_unless_asked_for(office, tmp_path):
    sun = office.enroll("mediator")
    push_case(sun, "k-1", "p-1", "b-1")
    manifest = take(office, tmp_path / "backup", with_key_file=False)
    assert not manifest.key_file_included
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "data-keys.db",
        "lianxin.db",
        "manifest.json",
    ]

    # Without it the files come back and pass integrity_check, but nothing is opened.
    bare = folder(tmp_path, "bare")
    restored = bring_back(tmp_path / "backup", bare, secret="never asked")
    assert (restored.problems, restored.checked_records) == ([], False)
    assert bare.store_path.exists() and not bare.keys_path.exists()

    # With the key file kept apart, the restore opens everything.
    full = folder(tmp_path, "full")
    restored = bring_back(tmp_path / "backup", full, key_file=office.settings.keys_path)
    assert restored.problems == [] and restored.opened["records"] == 2


def test_a_flipped_byte_in_a_backup_is_refused_and_nothing_is_written(office, tmp_path):
    office.enroll("mediator")
    take(office, tmp_path / "backup")
    keys_copy = tmp_path / "backup" / "data-keys.db"
    damaged = bytearray(keys_copy.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    keys_copy.write_bytes(bytes(damaged))

    target = folder(tmp_path, "restored")
    restored = bring_back(tmp_path / "backup", target)
    (problem,) = restored.problems
    assert problem.startswith("data-keys.db: SHA-256") and "differs from the manifest" in problem
    assert not target.data_dir.exists()


def test_restore_refuses_a_folder_that_holds_anything(office, tmp_path):
    take(office, tmp_path / "backup")
    target = folder(tmp_path, "busy")
    target.data_dir.mkdir()
    (target.data_dir / "notes.txt").write_text("mine")
    restored = bring_back(tmp_path / "backup", target)
    assert restored.problems == [
        f"{target.data_dir} is not empty; restore only into a new or empty folder"
    ]
    assert [p.name for p in target.data_dir.iterdir()] == ["notes.txt"]


KILLED_AT_THE_CHECKS = """
import os, signal, sys
from server import backup, cli
backup._open_everything = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
cli.main(["--data", sys.argv[1], "restore", sys.argv[2]])
"""


def test_a_restore_killed_before_its_checks_leaves_an_office_nothing_opens(
    office, tmp_path, monkeypatch
):
    # Killed (a power cut) after copying: the files looked whole, `serve` served them
    # unchecked and, with no restore logged, phones' cursors from before were followed.
    take(office, tmp_path / "backup")
    target = tmp_path / "killed"
    environment = {**os.environ, "LIANXIN_PASSPHRASE": PASSPHRASE}
    command = [sys.executable, "-c", KILLED_AT_THE_CHECKS, str(target), str(tmp_path / "backup")]
    assert subprocess.run(command, env=environment).returncode == -signal.SIGKILL
    assert (target / "lianxin.db").exists()
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)
    for command in (["audit", "verify"], ["serve"]):
        with pytest.raises(SystemExit, match="did not finish"):
            main(["--data", str(target), *command])
    # Nor is it backed up (its key store may still hold keys of cases erased since).
    assert main(["--data", str(target), "backup", str(tmp_path / "again")]) == 1
    assert not (tmp_path / "again").exists()


def test_a_key_file_of_another_office_is_refused(office, tmp_path):
    take(office, tmp_path / "backup", with_key_file=False)
    stranger = tmp_path / "stranger.json"
    office_keys().save(stranger, new=True)
    restored = bring_back(tmp_path / "backup", folder(tmp_path, "restored"), key_file=stranger)
    (problem,) = restored.problems
    assert f"not {office.keys.office_id}" in problem
    assert not (tmp_path / "restored").exists()


def test_a_wrong_passphrase_leaves_no_restored_files_behind(office, tmp_path):
    take(office, tmp_path / "backup")
    target = folder(tmp_path, "restored")
    restored = bring_back(tmp_path / "backup", target, secret="wrong passphrase!")
    assert restored.problems == ["the office key file does not open: wrong passphrase?"]
    assert not target.data_dir.exists()


def test_not_a_backup_is_said_so(tmp_path):
    (tmp_path / "empty").mkdir()
    restored = bring_back(tmp_path / "empty", folder(tmp_path, "restored"))
    assert restored.problems == [
        f"{tmp_path / 'empty'} holds no manifest.json: not a Lianxin backup, or unfinished"
    ]


def test_backup_refuses_a_destination_that_holds_anything(office, tmp_path):
    dest = tmp_path / "backup"
    dest.mkdir()
    (dest / "old.db").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="is not empty"):
        take(office, dest)
    assert [p.name for p in dest.iterdir()] == ["old.db"]


def test_a_record_made_between_the_two_snapshots_has_its_key(office, tmp_path, monkeypatch):
    # The store is copied first, the key store after: a case pushed in between is in
    # neither snapshot or has its key in the later one. Never sealed data without a key.
    sun = office.enroll("mediator")
    push_case(sun, "k-1", "p-1", "b-1")
    real_snapshot, taken = backup._snapshot, []

    def snapshot_then_push(source, target):
        real_snapshot(source, target)
        taken.append(target.name)
        if len(taken) == 1:  # between the first snapshot and the second, whichever they are
            push_case(sun, "k-late", "p-late", "b-late")

    monkeypatch.setattr(backup, "_snapshot", snapshot_then_push)
    take(office, tmp_path / "backup")
    restored = bring_back(tmp_path / "backup", folder(tmp_path, "restored"))
    assert restored.problems == []
    assert restored.opened["records"] == 2  # k-late came after the data snapshot
    assert taken == ["lianxin.db", "data-keys.db"]


def test_a_data_snapshot_paired_with_an_older_key_store_names_each_keyless_record(office, tmp_path):
    sun = office.enroll("mediator")
    take(office, tmp_path / "early")
    push_case(sun, "k-1", "p-1", "b-1")
    take(office, tmp_path / "late")
    # The late data with the early key store, re-hashed so the manifest agrees.
    mixed = tmp_path / "late"
    (mixed / "data-keys.db").write_bytes((tmp_path / "early" / "data-keys.db").read_bytes())
    manifest = backup.read_manifest(mixed)
    files = [backup._digest(mixed / f.name) for f in manifest.files]
    (mixed / "manifest.json").write_bytes(
        msgspec.json.encode(msgspec.structs.replace(manifest, files=files))
    )

    target = folder(tmp_path, "restored")
    restored = bring_back(mixed, target)
    assert "case/k-1: no data key in the key store" in restored.problems
    assert "party/p-1: no data key in the key store" in restored.problems
    assert not target.data_dir.exists()


def test_an_erased_case_stays_shut_in_a_backup_taken_after_the_erasure(office, tmp_path):
    sun = office.enroll("mediator")
    push_case(sun, "k-he", "p-he", "b-1")
    push_case(sun, "k-2", "p-2", "b-2")
    take(office, tmp_path / "before")
    erase_case(office.store, "k-he", "court order 2026-17", "operator:wang", WALL_MS)
    take(office, tmp_path / "after")

    after = folder(tmp_path, "restored-after")
    restored = bring_back(tmp_path / "after", after)
    assert restored.problems == []
    assert restored.opened["records"] == 2 and restored.erased > 0
    copy = reopen(after)
    try:
        assert copy.states([("case", "k-he"), ("party", "p-he")]) == {}
        assert copy.record("case", "k-2") is not None
    finally:
        copy.close()

    # A backup from before the erasure still holds the case's key: the office must
    # destroy such backups within its retention (PROTOCOL.md section 15).
    before = folder(tmp_path, "restored-before")
    assert bring_back(tmp_path / "before", before).opened["records"] == 4


def test_old_data_restored_with_a_newer_key_store_keeps_an_erased_case_erased(office, tmp_path):
    sun = office.enroll("mediator")
    push_case(sun, "k-he", "p-he", "b-1")
    push_case(sun, "k-2", "p-2", "b-2")
    take(office, tmp_path / "old")
    erase_case(office.store, "k-he", "court order 2026-17", "operator:wang", WALL_MS)

    # The office's own key store survived (or a later backup's): it goes with the old data.
    target = folder(tmp_path, "restored")
    restored = bring_back_with_live_keys(office, tmp_path / "old", target, key_file=None)
    assert restored.problems == []
    assert restored.erasures_finished == ("k-he",)
    assert restored.opened["records"] == 2 and restored.erased > 0
    copy = reopen(target)
    try:
        assert copy.states([("case", "k-he"), ("party", "p-he")]) == {}
        (state,) = copy.db.execute("SELECT state FROM records WHERE record_id = 'k-he'").fetchone()
        assert state == b""  # the old ciphertext is gone too, not only its key
        erased = [e for e in audit.entries(copy.db) if e.action == "erase"]
        assert [(e.actor, e.detail["reason"]) for e in erased] == [
            ("operator:li", "court order 2026-17")
        ]
        assert audit.verify(copy.db) == []
    finally:
        copy.close()


def test_a_snapshot_is_a_single_self_contained_file(office, tmp_path):
    take(office, tmp_path / "backup")
    for name in ("lianxin.db", "data-keys.db"):
        with closing(sqlite3.connect(tmp_path / "backup" / name)) as copy:
            assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert not list((tmp_path / "backup").glob("*-wal"))


def test_a_manifest_of_an_unknown_format_is_refused(office, tmp_path):
    take(office, tmp_path / "backup")
    path = tmp_path / "backup" / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"format": 1', b'"format": 9'))
    with pytest.raises(Unreadable, match="format 9"):
        backup.read_manifest(tmp_path / "backup")


@contextmanager
def served(office, settings, phone):
    """The office restored into `settings`, served in-process to `phone` meanwhile."""
    store = reopen(settings)
    keys = OfficeKeys.load(settings.keys_path, PASSPHRASE)
    settings = msgspec.structs.replace(settings, require_sealed=False, secure_cookies=False)
    app = create_app(settings, store=store, keys=keys, clock=Clock(Wall()), wall_ms=office.wall)
    try:
        with TestClient(app) as http:
            phone.http = http
            yield
    finally:
        store.close()


def test_a_cursor_issued_before_a_restore_is_refused_not_followed(office, tmp_path):
    # A restored office logs new changes at the sequences the lost ones had. A phone that
    # pulled the lost ones would, with its old cursor, skip the new ones for good.
    sun = office.enroll("mediator")
    push_case(sun, "k-1", "p-1", "b-1")
    take(office, tmp_path / "backup")
    push_case(sun, "k-2", "p-2", "b-lost")  # after the backup: lost with the disk
    stale = decode(sun.pull())["cursor"]

    target = folder(tmp_path, "restored")
    assert bring_back(tmp_path / "backup", target).problems == []
    with served(office, target, sun):
        push_case(sun, "k-3", "p-3", "b-after")  # logged where k-2 and p-2 were
        refused = sun.pull(stale)
        assert refused.status_code == 400
        assert decode(refused)["error"] == "bad_cursor"
        from_scratch = [item["seq"] for item in decode(sun.pull())["items"]]
        assert from_scratch == [1, 2, 3, 4]


@pytest.mark.parametrize("with_key_file", [True, False], ids=["key-file", "no-key-file"])
def test_a_cursor_issued_before_a_restore_is_refused_though_the_log_is_the_same(
    office, tmp_path, with_key_file
):
    # The restored log may hold the very change ids the cursor was bound to, at the same
    # places (a lost answer's batch sent again lands where it landed before), while it
    # lost others after them: only the restore itself tells.
    sun = office.enroll("mediator")
    push_case(sun, "k-1", "p-1", "b-1")
    take(office, tmp_path / "backup", with_key_file=with_key_file)
    stale = decode(sun.pull())["cursor"]

    target = folder(tmp_path, "restored")
    assert bring_back(tmp_path / "backup", target).problems == []
    if not with_key_file:  # the key file kept apart, put back by hand after the restore
        target.keys_path.write_bytes(office.settings.keys_path.read_bytes())
    with served(office, target, sun):
        refused = sun.pull(stale)
        assert (refused.status_code, decode(refused)["error"]) == (400, "bad_cursor")
        assert [item["seq"] for item in decode(sun.pull())["items"]] == [1, 2]


def test_an_upgrade_leaves_cursors_open_on_an_office_restored_before_cursors_bound_it(
    office, tmp_path
):
    # Restores logged by versions before drew no nonce: their offices' cursors bound none,
    # and an upgrade must not send every device back to the start.
    sun = office.enroll("mediator")
    push_case(sun, "k-1", "p-1", "b-1")
    with office.store.transaction():
        detail = {"backup": "2026-11-01T00:00:00Z", "manifest_sha256": "ab" * 32}
        audit.append(office.store.db, WALL_MS, "operator:wang", "restore", "office", detail)
    cursor = decode(sun.pull())["cursor"]

    with served(office, office.settings, sun):  # the upgraded office, started again
        assert sun.pull(cursor).status_code == 200


def test_old_data_and_a_newer_key_store_without_the_key_file_is_refused_not_half_erased(
    office, tmp_path
):
    # The default flow: the key file kept apart from the backup, restored without it.
    # Clearing the erased case works its linked records' readers out again, which opens
    # them: without the key the restore must refuse, not serve what was erased.
    sun = office.enroll("mediator")
    push_case(sun, "k-he", "p-he", "b-1")
    push_case(sun, "k-2", "p-2", "b-2")  # He again, on a party record of his own
    take(office, tmp_path / "old", with_key_file=False)
    erase_case(office.store, "k-he", "court order 2026-17", "operator:wang", WALL_MS)

    target = folder(tmp_path, "restored")
    restored = bring_back_with_live_keys(office, tmp_path / "old", target, key_file=None)
    assert restored.problems == [
        "2 records erased since this backup was taken are still in it (case/k-he, party/p-he);"
        " clearing them needs the office key file: restore again with --key-file"
    ]
    assert not target.data_dir.exists()

    # As the refusal says: with the key file the erasure is finished.
    restored = bring_back_with_live_keys(
        office, tmp_path / "old", target, key_file=office.settings.keys_path
    )
    assert restored.problems == []
    assert restored.erasures_finished == ("k-he",)
    assert restored.records_cleared == ("case/k-he", "party/p-he")
    copy = reopen(target)
    try:
        assert left_of(copy, "case", "k-he") == {}
        assert left_of(copy, "party", "p-he") == {}
        assert evicted(copy, "case", "k-he") == [("erased",)]
        assert people.repeats(copy, "k-2") == []
        assert copy.db.execute(
            "SELECT repeat FROM case_index WHERE case_id = 'k-2'"
        ).fetchone() == (0,)
    finally:
        copy.close()

    # A backup taken after the erasure holds nothing of it: it restores without the key,
    # also once a supervisor of the erased case's district has been added since.
    office.directory.add_user("Zhou", "supervisor", ["Hangzhou/Gongshu"], WALL_MS)
    take(office, tmp_path / "after", with_key_file=False)
    bare = folder(tmp_path, "restored-after")
    assert bring_back(tmp_path / "after", bare).problems == []


def test_a_party_erased_live_but_shared_in_the_old_data_is_cleared_too(office, tmp_path):
    # p-he was named by k-a and k-b when the backup was taken; k-b dropped it, then the
    # erasure of k-a took p-he with it. The old data still links p-he to k-b.
    sun = office.enroll("mediator")
    push_case(sun, "k-a", "p-he", "b-1")
    k_b = {"title": "Noise", "status": "new", "location": GONGSHU}
    push_applied(sun, [sun.change("case", "k-b", k_b, [Add(field="parties", value="p-he")])], "b-2")
    push_case(sun, "k-2", "p-2", "b-3")  # He again, on a party record of his own
    take(office, tmp_path / "old")
    seen = dict(office.store.record("case", "k-b").vv)
    dropped = sun.change("case", "k-b", ops=[Remove(field="parties", value="p-he")], seen=seen)
    push_applied(sun, [dropped], "b-4")
    erased = erase_case(office.store, "k-a", "court order", "operator:wang", WALL_MS)
    assert ("party", "p-he") in erased.records

    target = folder(tmp_path, "restored")
    restored = bring_back_with_live_keys(office, tmp_path / "old", target, key_file=None)
    assert restored.problems == []
    assert restored.records_cleared == ("case/k-a", "party/p-he")
    copy = reopen(target)
    try:
        assert left_of(copy, "party", "p-he") == {}
        assert evicted(copy, "party", "p-he") == [("erased",)]
        assert all(repeat.case_id != "k-b" for repeat in people.repeats(copy, "k-2"))
        assert copy.record("case", "k-b") is not None  # k-b itself is not erased
    finally:
        copy.close()


def test_a_party_erased_apart_from_any_case_in_the_old_data_is_cleared_on_its_own(office, tmp_path):
    # k-a, whose erasure took p-he, came after the backup: the old data links p-he to
    # k-b only, and holds nothing of k-a.
    sun = office.enroll("mediator")
    k_b = {"title": "Noise", "status": "new", "location": GONGSHU}
    he = sun.change("party", "p-he", {"name": "He Jianguo", "phone": "+86 138 0000 1234"})
    push_applied(
        sun, [he, sun.change("case", "k-b", k_b, [Add(field="parties", value="p-he")])], "b-1"
    )
    take(office, tmp_path / "old")
    seen = dict(office.store.record("case", "k-b").vv)
    dropped = sun.change("case", "k-b", ops=[Remove(field="parties", value="p-he")], seen=seen)
    k_a = {"title": "Leak", "status": "new", "location": GONGSHU}
    added = sun.change("case", "k-a", k_a, [Add(field="parties", value="p-he")])
    push_applied(sun, [dropped, added], "b-2")
    erase_case(office.store, "k-a", "court order", "operator:wang", WALL_MS)

    target = folder(tmp_path, "restored")
    restored = bring_back_with_live_keys(office, tmp_path / "old", target, key_file=None)
    assert restored.problems == []
    assert (restored.erasures_finished, restored.records_cleared) == ((), ("party/p-he",))
    copy = reopen(target)
    try:
        assert left_of(copy, "party", "p-he") == {}
        erasures = [(e.subject, e.detail["reason"]) for e in audit.entries(copy.db, "erase")]
        assert erasures == [("party/p-he", "court order")]
    finally:
        copy.close()


def test_finishing_an_erasure_keeps_a_party_that_was_shared_when_its_case_was_erased(
    office, tmp_path
):
    # In the old data p-x is k-a's alone; k-c named it before k-a was erased, so the
    # erasure kept it. Finishing k-a's erasure must not destroy p-x's key now.
    sun = office.enroll("mediator")
    push_case(sun, "k-a", "p-x", "b-1")
    take(office, tmp_path / "old")
    k_c = {"title": "Noise", "status": "new", "location": GONGSHU}
    push_applied(sun, [sun.change("case", "k-c", k_c, [Add(field="parties", value="p-x")])], "b-2")
    erased = erase_case(office.store, "k-a", "court order", "operator:wang", WALL_MS)
    assert erased.records == [("case", "k-a")]

    target = folder(tmp_path, "restored")
    restored = bring_back_with_live_keys(office, tmp_path / "old", target, key_file=None)
    assert restored.problems == []
    assert restored.records_cleared == ("case/k-a",)
    copy = reopen(target)
    try:
        assert list(copy.states([("party", "p-x")])) == [("party", "p-x")]
        assert copy.erased([("party", "p-x")]) == set()
    finally:
        copy.close()


def test_an_audit_entry_that_is_not_json_is_a_problem_reported_never_a_traceback(office, tmp_path):
    push_case(office.enroll("mediator"), "k-1", "p-1", "b-1")
    take(office, tmp_path / "backup")
    tamper(tmp_path / "backup", "UPDATE audit SET detail = '{' WHERE seq = 1")

    target = folder(tmp_path, "restored")
    restored = bring_back(tmp_path / "backup", target)
    (problem,) = restored.problems
    assert problem.startswith("entry 1 (") and problem.endswith("its detail is not a JSON object")
    assert not target.data_dir.exists()

    # `lianxin audit verify` on a store so altered reports it too.
    office.store.db.execute("UPDATE audit SET detail = 'x' WHERE seq = 1")
    report = audit_verify.verify_store(office.store, office.keys)
    assert problem in report.problems


def test_a_log_cut_after_a_signed_checkpoint_is_refused(office, tmp_path):
    sun = office.enroll("mediator")
    push_case(sun, "k-1", "p-1", "b-1")
    push_case(sun, "k-2", "p-2", "b-2")
    with office.store.transaction():
        mark = audit.checkpoint(office.store.db, office.keys, WALL_MS)
    take(office, tmp_path / "backup")
    # The chain of what is left still verifies: only the signed checkpoint shows the cut.
    tamper(tmp_path / "backup", f"DELETE FROM audit WHERE seq = {mark.seq}")

    target = folder(tmp_path, "restored")
    restored = bring_back(tmp_path / "backup", target)
    device = office.store.db.execute("SELECT device_id FROM batches").fetchone()[0]
    assert restored.problems == [
        f"checkpoint at entry {mark.seq}: the log ends at entry {mark.seq - 1}"
        " (later entries were dropped)",
        # The entry cut off was the push of b-2, so its batch is no longer logged.
        f"batch b-2 of {device}: no audit entry logs it",
    ]
    assert not target.data_dir.exists()


def test_a_file_given_for_the_backup_folder_is_refused_with_a_message(tmp_path):
    given_file = tmp_path / "backup.tar"
    given_file.write_bytes(b"not a folder")
    with pytest.raises(Unreadable, match="not a Lianxin backup"):
        backup.read_manifest(given_file)


def test_a_batch_whose_device_signature_does_not_verify_is_refused(office, tmp_path):
    # The manifest hashes are no signature: whoever can write the backup can rehash it.
    # What only the phone could make is checked on the way back in.
    push_case(office.enroll("mediator"), "k-1", "p-1", "b-1")
    take(office, tmp_path / "backup")
    tamper(
        tmp_path / "backup",
        "UPDATE batches SET signature = zeroblob(length(signature)) WHERE batch_id = 'b-1'",
    )

    target = folder(tmp_path, "restored")
    restored = bring_back(tmp_path / "backup", target)
    device = office.store.db.execute("SELECT device_id FROM batches").fetchone()[0]
    assert (
        f"batch b-1 of {device}: the device's signature does not verify over the stored manifest"
        in (restored.problems)
    )
    assert not target.data_dir.exists()


def test_restoring_with_the_backups_own_data_keys_warns_that_erasures_since_are_undone(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)
    office = str(tmp_path / "office")
    main(["--data", office, "init", "--admin", "Wang", "--org-unit", "Hangzhou"])
    main(["--data", office, "backup", str(tmp_path / "backup"), "--with-key-file"])
    capsys.readouterr()

    assert main(["--data", str(tmp_path / "old"), "restore", str(tmp_path / "backup")]) == 0
    assert "WARNING cases erased after" in capsys.readouterr().out
    newer = ["--data-keys", str(tmp_path / "backup" / backup.KEY_STORE_FILE)]
    assert main(["--data", str(tmp_path / "new"), "restore", str(tmp_path / "backup"), *newer]) == 0
    assert "WARNING" not in capsys.readouterr().out
