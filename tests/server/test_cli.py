"""`lianxin demo`: a fresh store with the DESIGN scenarios, and idempotent when run again."""

import getpass
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from server import audit, cli
from server.cli import main
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.directory import Directory
from server.storage.sqlite import open_store
from sync.errors import EnrollmentRefused
from sync.merge import materialize
from tests.conftest import PASSPHRASE


@pytest.fixture(autouse=True)
def passphrase(monkeypatch):
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)


def opened(data):
    """The store of the office in folder `data`, unlocked as the server would."""
    settings = Settings(data_dir=data)
    return open_store(settings, OfficeKeys.load(settings.keys_path, PASSPHRASE))


def record(store, record_type, record_id):
    return materialize(store.record(record_type, record_id))


def test_demo_loads_the_scenarios_and_prints_what_it_did(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "data"), "demo", "--no-serve", "--days", "0"]) == 0
    out = capsys.readouterr().out
    assert "Created store" in out and "0003_change_order" in out
    assert "0 quarantined" in out and "Conflicts: 1 open, 0 settled" in out

    store = opened(tmp_path / "data")
    # Scenario 1: the warning became a case that was closed, and the warning was answered.
    warning = record(store, "warning", "w-drains")
    case = record(store, "case", "k-drains")
    assert (warning.status, warning.case) == ("converted", "k-drains")
    assert warning.response.startswith("Fixed")
    assert case.status == "closed" and len(case.visits) == 3
    # Scenario 2: one group case with 66 households and the owner, one agreement.
    grease = record(store, "case", "k-grease")
    agreement = record(store, "agreement", "a-grease-1")
    assert len(grease.parties) == 67 and grease.households == 66
    assert len(agreement.required_signers) == 67 and agreement.status == "collecting"
    # Scenario 3: different fields merged silently, the same field kept as a conflict.
    noise = record(store, "case", "k-noise")
    assert (noise.priority, noise.tags) == ("high", ["noise"])
    (conflict,) = store.open_conflicts()
    assert (conflict.record_id, conflict.field) == ("k-noise", "summary")
    assert {c.device_id for c in conflict.candidates} == {"dev-mediator-sun", "dev-mediator-li"}
    store.close()


def test_running_the_demo_again_reuses_the_store_and_writes_nothing_twice(tmp_path, capsys):
    data = tmp_path / "data"
    main(["--data", str(data), "demo", "--no-serve", "--days", "0"])
    store = opened(data)
    counts = store.counts()
    capsys.readouterr()

    main(["--data", str(data), "demo", "--no-serve", "--days", "0"])
    out = capsys.readouterr().out
    assert "Reusing store" in out
    assert "applied" not in out and "duplicate" in out
    assert store.counts() == counts

    main(["--data", str(data), "demo", "--reset", "--no-serve", "--days", "0"])
    assert "Created store" in capsys.readouterr().out
    store.close()


def test_the_demo_keeps_its_own_folder_and_never_touches_an_office(tmp_path, monkeypatch):
    # The demo adds users whose passwords it prints, and --reset deletes its folder: run
    # where an office lives (./lianxin-data, the other commands' default), it took it over.
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--admin", "Wang"]) == 0

    def office_files():
        return {p: p.read_bytes() for p in Path("lianxin-data").rglob("*") if p.is_file()}

    before = office_files()
    assert main(["demo", "--no-serve", "--days", "0"]) == 0
    assert Path("lianxin-demo/LIANXIN-DEMO").exists()
    for reset in ([], ["--reset"]):
        with pytest.raises(SystemExit, match="did not make"):
            main(["--data", "lianxin-data", "demo", *reset, "--no-serve", "--days", "0"])
    assert office_files() == before
    # A fleet too small to simulate is refused before anything is made.
    assert main(["--data", "small", "demo", "--no-serve", "--devices", "6"]) == 2
    assert not Path("small").exists()


def test_init_creates_an_office_with_an_admin_and_a_one_time_code(tmp_path, capsys):
    data = str(tmp_path / "office")
    assert main(["--data", data, "init", "--admin", "Wang", "--org-unit", "Hangzhou"]) == 0
    out = capsys.readouterr().out
    assert "enrolment code" in out
    keys = tmp_path / "office" / "office-keys.json"
    assert keys.stat().st_mode & 0o777 == 0o600
    # A second init must not overwrite the office keys.
    before = keys.read_bytes()
    assert main(["--data", data, "init", "--admin", "Eve"]) == 1
    assert keys.read_bytes() == before


def test_the_operators_acts_get_the_chain_signed_with_no_phone_pushing(tmp_path, monkeypatch):
    # Checkpoints came only with pushes: an office of quiet phones had none, and its
    # last entries could be dropped unseen.
    data = str(tmp_path / "office")
    assert main(["--data", data, "init", "--admin", "Wang"]) == 0
    store = opened(tmp_path / "office")
    # The first command's acts are signed at once (then every 1,000 entries or an hour,
    # as pushes do).
    assert [mark.seq for mark in audit.checkpoints(store.db)] == [2]
    assert [e.action for e in audit.entries(store.db)] == ["add_user", "issue_code"]
    (admin,) = store.db.execute("SELECT user_id FROM users").fetchone()
    store.close()
    # Any command that logs an act, a refused re-identification here, an hour later.
    later = cli.system_wall_ms() + audit.CHECKPOINT_MAX_AGE_MS
    monkeypatch.setattr(cli, "system_wall_ms", lambda: later)
    reveal = ["informant", "reveal", "inf-x", "--supervisor", admin, "--reason", "check"]
    assert main(["--data", data, *reveal]) == 1
    store = opened(tmp_path / "office")
    refused = audit.entries(store.db)[-1]
    assert refused.action == "reidentify_refused"
    assert audit.checkpoints(store.db)[-1].seq == refused.seq
    store.close()


def test_the_office_files_are_readable_by_its_account_alone(tmp_path):
    # The store holds console password hashes and the audit log in clear; an operator's
    # usual umask (022) made it and the data-key store readable by every local user.
    data = tmp_path / "office"
    old = os.umask(0o022)
    try:
        assert main(["--data", str(data), "init", "--admin", "Wang"]) == 0
    finally:
        os.umask(old)
    settings = Settings(data_dir=data)
    for folder in (data, settings.key_store_path.parent):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    files = [p for p in data.rglob("*") if p.is_file()]
    assert settings.store_path in files and settings.key_store_path in files
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_folder_the_operator_made_keeps_the_mode_they_gave_it(tmp_path):
    # A data folder shared with a backup agent's group is the operator's call; the
    # files the office writes there are still its account's alone.
    data = tmp_path / "office"
    data.mkdir(mode=0o750)
    data.chmod(0o750)
    assert main(["--data", str(data), "init", "--admin", "Wang"]) == 0
    assert data.stat().st_mode & 0o777 == 0o750
    assert Settings(data_dir=data).store_path.stat().st_mode & 0o777 == 0o600


def test_opening_the_store_again_keeps_the_locks_of_the_open_one(tmp_path):
    # The demo serves a store it opened while it has another open. Closing any descriptor
    # of a SQLite file drops every lock the process holds on it: another process (a
    # `lianxin user add` beside the server) then took itself for the last user of the
    # file and deleted the live WAL, and the server's next read was a "disk I/O error".
    data = tmp_path / "office"
    assert main(["--data", str(data), "init", "--admin", "Wang"]) == 0
    serving = opened(data)
    with serving.transaction():
        serving.db.execute("INSERT INTO org_units (path, parent) VALUES ('Ningbo', NULL)")
    again = opened(data)
    store_path = Settings(data_dir=data).store_path
    beside = [sys.executable, "-m", "server.cli", "--data", str(data), "user", "add", "Zhao"]
    subprocess.run([*beside, "--role", "mediator", "--org-unit", "Ningbo"], check=True)
    assert store_path.with_name(store_path.name + "-wal").exists()
    with serving.snapshot() as conn:
        assert conn.execute("SELECT count(*) FROM org_units WHERE path = 'Ningbo'").fetchone()
    again.close()
    serving.close()


def test_a_store_linked_to_a_file_not_yet_made_is_made_private(tmp_path):
    # The operator puts the files on another disk before the first start.
    data, disk = tmp_path / "office", tmp_path / "disk"
    data.mkdir()
    disk.mkdir()
    settings = Settings(data_dir=data)
    for path in (settings.store_path, settings.key_store_path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(disk / path.name)
    old = os.umask(0o022)
    try:
        assert main(["--data", str(data), "init", "--admin", "Wang"]) == 0
    finally:
        os.umask(old)
    made = {p.name: p.stat().st_mode & 0o777 for p in disk.iterdir()}
    assert made[settings.store_path.name] == made[settings.key_store_path.name] == 0o600


@pytest.mark.parametrize("hours", ["inf", "nan", "0", "-1", "1e9", "soon"])
def test_an_enrolment_code_lives_a_bounded_time(tmp_path, capsys, hours):
    data = str(tmp_path / "office")
    main(["--data", data, "init", "--admin", "Wang"])
    with pytest.raises(SystemExit) as refused:
        main(["--data", data, "code", "u-anyone", "--ttl-hours", hours])
    assert refused.value.code == 2
    assert "hours" in capsys.readouterr().err


def test_users_codes_and_revocation_from_the_command_line(tmp_path, capsys):
    data = str(tmp_path / "office")
    main(["--data", data, "init", "--admin", "Wang"])
    capsys.readouterr()
    assert (
        main(
            [
                "--data",
                data,
                "user",
                "add",
                "Zhao",
                "--role",
                "mediator",
                "--org-unit",
                "Hangzhou/Gongshu",
            ]
        )
        == 0
    )
    user_id = capsys.readouterr().out.strip()
    assert main(["--data", data, "code", user_id]) == 0
    code = capsys.readouterr().out.strip()
    assert len(code) == 12
    assert main(["--data", data, "code", "u-nobody"]) == 1
    assert main(["--data", data, "device", "revoke", "dev-nothing"]) == 1


def test_someone_who_left_is_disabled_from_the_command_line_and_can_be_enabled_again(
    tmp_path, capsys
):
    data = str(tmp_path / "office")
    main(["--data", data, "init", "--admin", "Wang", "--org-unit", "Hangzhou"])
    main(["--data", data, "user", "add", "Zhao", "--role", "mediator", "--org-unit", "Hangzhou"])
    zhao = capsys.readouterr().out.split()[-1]
    assert main(["--data", data, "code", zhao]) == 0
    store = opened(tmp_path / "office")
    device, _ = Directory(store).enroll(
        capsys.readouterr().out.strip(), b"s" * 32, b"k" * 32, "", 1
    )
    unused = Directory(store).issue_code(zhao, cli.system_wall_ms(), 3600_000)
    store.close()

    assert main(["--data", data, "user", "disable", zhao, "--reason", "moved away"]) == 0
    assert f"revoked 1 device(s): {device.device_id}" in capsys.readouterr().out
    assert main(["--data", data, "user", "list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "Zhao" in listed[zhao] and " left 20" in listed[zhao]
    assert "left" not in listed[next(u for u in listed if u != zhao)]
    assert main(["--data", data, "user", "disable", zhao, "--reason", "again"]) == 1
    assert main(["--data", data, "code", zhao]) == 1
    assert "disabled" in capsys.readouterr().out

    store = opened(tmp_path / "office")
    assert Directory(store).device(device.device_id).revoked_at_ms is not None
    with pytest.raises(EnrollmentRefused):
        Directory(store).enroll(unused, b"t" * 32, b"l" * 32, "", cli.system_wall_ms())
    disabled = audit.entries(store.db)[-1]
    assert (disabled.action, disabled.subject) == ("disable_user", f"user/{zhao}")
    assert disabled.detail == {"reason": "moved away", "revoked_devices": [device.device_id]}
    store.close()

    with pytest.raises(SystemExit) as blank:
        main(["--data", data, "user", "disable", zhao, "--reason", " "])
    assert blank.value.code == 2 and "audit log" in capsys.readouterr().err
    enable = ["--data", data, "user", "enable", zhao, "--reason", "came back"]
    assert main(enable) == 0
    assert main(enable) == 1
    assert main(["--data", data, "code", zhao]) == 0
    store = opened(tmp_path / "office")
    assert Directory(store).user(zhao).disabled_at_ms is None
    assert Directory(store).device(device.device_id).revoked_at_ms is not None  # stays so
    enabled = audit.entries(store.db)[-2]
    assert (enabled.action, enabled.detail) == ("enable_user", {"reason": "came back"})
    store.close()


def test_a_users_role_is_changed_from_the_command_line_with_a_reason(tmp_path, capsys):
    data = str(tmp_path / "office")
    main(["--data", data, "init", "--admin", "Wang", "--org-unit", "Hangzhou"])
    main(["--data", data, "user", "add", "Zhao", "--role", "mediator", "--org-unit", "Hangzhou"])
    zhao = capsys.readouterr().out.split()[-1]
    role = ["--data", data, "user", "role", zhao, "--role", "supervisor"]
    with pytest.raises(SystemExit):
        main(role)  # no reason
    assert main([*role, "--reason", "promoted"]) == 0
    assert f"{zhao}: mediator -> supervisor" in capsys.readouterr().out
    assert main([*role, "--reason", "again"]) == 1  # a supervisor already
    assert (
        main(["--data", data, "user", "role", "u-nobody", "--role", "admin", "--reason", "x"]) == 1
    )
    store = opened(tmp_path / "office")
    assert Directory(store).user(zhao).role == "supervisor"
    changed = audit.entries(store.db)[-1]
    assert (changed.action, changed.subject) == ("change_role", f"user/{zhao}")
    assert changed.detail == {
        "reason": "promoted",
        "role_before": "mediator",
        "role": "supervisor",
        "revoked_devices": [],
    }
    store.close()


def test_a_user_is_moved_to_other_org_units_from_the_command_line(tmp_path, capsys):
    data = str(tmp_path / "office")
    main(["--data", data, "init", "--admin", "Wang", "--org-unit", "Hangzhou"])
    main(["--data", data, "user", "add", "Zhao", "--role", "mediator", "--org-unit", "Hangzhou"])
    zhao = capsys.readouterr().out.split()[-1]
    move = ["--data", data, "user", "move", zhao, "--org-unit", "Hangzhou/Xihu/Beishan"]
    assert main(move) == 0
    assert "Hangzhou -> Hangzhou/Xihu/Beishan" in capsys.readouterr().out
    assert main(["--data", data, "user", "move", zhao, "--org-unit", "Hangzhou//Xihu"]) == 1
    assert main(["--data", data, "user", "move", "u-nobody", "--org-unit", "Hangzhou"]) == 1
    store = opened(tmp_path / "office")
    assert Directory(store).user(zhao).org_units == ["Hangzhou/Xihu/Beishan"]
    moved = audit.entries(store.db)[-1]
    assert (moved.action, moved.subject) == ("move_user", f"user/{zhao}")
    assert moved.detail == {"org_units_before": ["Hangzhou"], "org_units": [move[-1]]}
    store.close()


def test_a_command_that_only_reads_does_not_wait_on_the_servers_writer(tmp_path, capsys):
    data = str(tmp_path / "office")
    main(["--data", data, "init", "--admin", "Wang", "--org-unit", "Hangzhou"])
    capsys.readouterr()
    writer = sqlite3.connect(tmp_path / "office" / "lianxin.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a push, mid-transaction
    try:
        assert main(["--data", data, "user", "list"]) == 0
        assert main(["--data", data, "audit", "verify"]) == 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert "Wang" in capsys.readouterr().out


def test_an_init_that_fails_leaves_no_office_behind_and_names_a_nameless_operator(
    tmp_path, capsys, monkeypatch
):
    data = str(tmp_path / "office")
    assert main(["--data", data, "init", "--admin", "Wang", "--org-unit", "Hangzhou//Xihu"]) == 1
    assert "lianxin:" in capsys.readouterr().out
    assert not Settings(data_dir=tmp_path / "office").keys_path.exists()

    def nameless():  # a container's user id with no passwd entry
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(getpass, "getuser", nameless)
    assert main(["--data", data, "init", "--admin", "Wang", "--org-unit", "Hangzhou"]) == 0
    store = opened(tmp_path / "office")
    assert {e.actor for e in audit.entries(store.db)} == {f"operator:uid-{os.getuid()}"}
    store.close()


def test_every_operators_act_at_the_command_line_is_in_the_audit_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIANXIN_NEW_PASSWORD", "a long enough password 123")
    data = tmp_path / "office"
    main(["--data", str(data), "demo", "--no-serve", "--days", "0"])
    store = opened(data)
    (supervisor,) = store.db.execute(
        "SELECT user_id FROM users WHERE role = 'supervisor'"
    ).fetchone()
    first_master = store.vault.keys.master_id
    logged = len(audit.entries(store.db))
    store.close()
    actor = f"operator:{getpass.getuser()}"
    acts = [
        (["user", "add", "Zhou", "--role", "admin", "--org-unit", "Hangzhou"], "add_user"),
        (["code", supervisor], "issue_code"),
        (["user", "password", supervisor], "set_password"),
        (["user", "totp", supervisor], "enable_totp"),
        (["agreement", "export", "a-grease-1", "--out", str(tmp_path / "a.json")], "export"),
        (["keys", "rotate"], "rotate_keys"),
    ]
    for argv, _ in acts:
        assert main(["--data", str(data), *argv]) == 0, argv
    later = cli.system_wall_ms() + 120_000  # a retirement waits a minute after a rotation
    monkeypatch.setattr(cli, "system_wall_ms", lambda: later)
    assert main(["--data", str(data), "keys", "retire", first_master]) == 0
    assert "open only with a key file from before it" in capsys.readouterr().out

    store = opened(data)
    entries = audit.entries(store.db)[logged:]
    office = str(tmp_path / "new")
    assert main(["--data", office, "init", "--admin", "Wang", "--org-unit", "Hangzhou"]) == 0
    new = opened(tmp_path / "new")
    assert [(e.actor, e.action) for e in audit.entries(new.db)] == [
        (actor, "add_user"),
        (actor, "issue_code"),
    ]
    new.close()
    assert [(e.actor, e.action) for e in entries] == [
        *((actor, action) for _, action in acts),
        (actor, "retire_key"),
    ]
    assert entries[0].detail == {"role": "admin", "org_units": ["Hangzhou"]}  # no name
    assert (
        entries[4].detail["sha256"]
        == hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest()
    )
    assert entries[-1].subject == f"key/{first_master}"
    assert audit.verify(store.db) == []
    store.close()
