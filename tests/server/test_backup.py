"""Backup and restore: consistent snapshots, the key file kept apart, a restore that checks."""

import hashlib
import sqlite3
from contextlib import closing

import msgspec
import pytest
from litestar.testing import TestClient

from server import audit, backup
from server.app import create_app
from server.erasure import erase_case
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.directory import Directory
from server.storage.sqlite import open_store
from sync.clock import Clock
from sync.errors import Unreadable
from tests.conftest import PASSPHRASE, WALL_MS, Wall, office_keys
from tests.server.conftest import Office
from tests.server.test_app import decode
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
    answer = decode(phone.push(open_case(phone, case_id, party_id), batch_id))
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
    assert "records case/k-1: no data key in the key store" in restored.problems
    assert "records party/p-1: no data key in the key store" in restored.problems
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
    restored = backup.restore(
        tmp_path / "old",
        target,
        key_file=None,
        passphrase=given(),
        actor="operator:li",
        now_ms=WALL_MS + 1,
        data_keys=office.settings.key_store_path,
    )
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
    store = reopen(target)
    keys = OfficeKeys.load(target.keys_path, PASSPHRASE)
    settings = msgspec.structs.replace(target, require_sealed=False, secure_cookies=False)
    app = create_app(settings, store=store, keys=keys, clock=Clock(Wall()), wall_ms=office.wall)
    with TestClient(app) as http:
        sun.http = http
        push_case(sun, "k-3", "p-3", "b-after")  # logged where k-2 and p-2 were
        refused = sun.pull(stale)
        assert refused.status_code == 400
        assert decode(refused)["error"] == "bad_cursor"
        from_scratch = [item["seq"] for item in decode(sun.pull())["items"]]
        assert from_scratch == [1, 2, 3, 4]
    store.close()
