"""`lianxin backup` while a phone keeps pushing, then `lianxin restore` into a fresh folder.

The restore must pass integrity_check, open every record, verify the audit
chain, and hold every change the server acknowledged before the backup began.
"""

import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing

import httpx
import pytest

from sync.client import DeviceClient
from tests.conftest import TEST_KDF
from tests.e2e.conftest import OFFICE_ENV, lianxin

DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}


class Pusher(threading.Thread):
    """A mediator's phone that edits and pushes until told to stop; it owns its device file."""

    def __init__(self, server, path, code):
        super().__init__(daemon=True)
        self.server, self.path, self.code = server, path, code
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: set[str] = set()
        self.pushes = 0
        self.error: BaseException | None = None

    def run(self):
        try:
            with (
                httpx.Client(base_url=self.server.url, timeout=10) as http,
                DeviceClient(self.path, http, passphrase="246810", kdf=TEST_KDF) as device,
            ):
                device.enroll(self.code)
                round_ = 0
                while not self.stop.is_set():
                    for n in range(20):
                        device.edit(
                            "case", f"k-{n}", {"title": f"visit {round_}", "location": DAGUAN}
                        )
                    answers = device.push()
                    with self.lock:
                        self.acknowledged.update(
                            a.change_id for a in answers if a.status == "applied"
                        )
                        self.pushes += 1
                    round_ += 1
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error

    def counts(self):
        with self.lock:
            return set(self.acknowledged), self.pushes


def wait_for(pusher, pushes):
    deadline = time.monotonic() + 30
    while pusher.counts()[1] < pushes:
        assert pusher.error is None, pusher.error
        assert time.monotonic() < deadline, "the phone pushed nothing"
        time.sleep(0.05)


def run(data, *args):
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=OFFICE_ENV,
    )


@pytest.fixture
def backed_up(server, tmp_path):
    """A backup taken while a phone pushes; the changes acknowledged before it began."""
    user_id = server.user("Zhao", "mediator", "Hangzhou/Gongshu")
    pusher = Pusher(server, tmp_path / "zhao.db", server.code(user_id))
    pusher.start()
    try:
        wait_for(pusher, 5)
        before, pushes_before = pusher.counts()
        done = run(server.data, "backup", str(tmp_path / "backup"))
        _, pushes_after = pusher.counts()
        wait_for(pusher, pushes_after + 1)  # still serving after the backup
    finally:
        pusher.stop.set()
        pusher.join(timeout=30)
    assert pusher.error is None, pusher.error
    assert done.returncode == 0, done.stdout + done.stderr
    assert pushes_after > pushes_before, "no push overlapped the backup; it proved nothing"
    return tmp_path / "backup", before, done.stdout


def test_a_backup_taken_while_pushing_restores_whole(server, backed_up, tmp_path):
    backup, acknowledged, said = backed_up
    assert "The office key file is NOT in the backup" in said
    assert not (backup / "office-keys.json").exists()

    restored = tmp_path / "restored"
    out = lianxin(
        restored, "restore", str(backup), "--key-file", str(server.data / "office-keys.json")
    )
    assert "OK files match the manifest; integrity_check ok" in out
    assert "OK every sealed value opens: 20 records" in out
    assert "OK audit log:" in out

    with closing(sqlite3.connect(restored / "lianxin.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {row[0] for row in db.execute("SELECT change_id FROM changes")}
    assert len(acknowledged) >= 100  # five pushes of twenty before the backup began
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged changes missing"
    # The whole check the office runs on itself: chain, checkpoints, batch signatures.
    assert lianxin(restored, "audit", "verify").startswith("OK")
    # The office that was backed up logged it.
    with closing(sqlite3.connect(server.data / "lianxin.db")) as db:
        actions = [row[0] for row in db.execute("SELECT action FROM audit ORDER BY seq")]
    assert "backup" in actions


def test_a_tampered_backup_is_refused(tmp_path):
    office = tmp_path / "office"
    lianxin(office, "init", "--admin", "Admin", "--org-unit", "Hangzhou")
    lianxin(office, "backup", str(tmp_path / "backup"), "--with-key-file")
    store = tmp_path / "backup" / "lianxin.db"
    data = bytearray(store.read_bytes())
    data[len(data) // 3] ^= 0x40
    store.write_bytes(bytes(data))

    restored = tmp_path / "restored"
    refused = run(restored, "restore", str(tmp_path / "backup"))
    assert refused.returncode == 1
    assert "FAIL lianxin.db: SHA-256" in refused.stdout
    assert "differs from the manifest" in refused.stdout
    assert not restored.exists()


def test_a_change_pushed_after_the_backup_is_sent_again_to_the_restored_office(server, tmp_path):
    # The phone pushes before it ever pulls: it holds no cursor for the restored office to
    # refuse, so only the change it names as pushed tells it the office lost one.
    zhao, qian = (server.user(name, "mediator", "Hangzhou/Gongshu") for name in ("Zhao", "Qian"))
    with (
        httpx.Client(base_url=server.url, timeout=10) as http,
        DeviceClient(tmp_path / "zhao.db", http, passphrase="246810", kdf=TEST_KDF) as phone,
        DeviceClient(tmp_path / "qian.db", http, passphrase="135790", kdf=TEST_KDF) as other,
    ):
        phone.enroll(server.code(zhao))
        other.enroll(server.code(qian))
        lianxin(server.data, "backup", str(tmp_path / "backup"))
        lost = phone.edit(
            "case",
            "k-1",
            {
                "title": "Blocked drain",
                "summary": "The landlord pays for the repair",
                "location": DAGUAN,
            },
        )
        phone.push()  # accepted; the restore below loses it
        server.stop()
        keys = server.data / "office-keys.json"
        lianxin(tmp_path / "restored", "restore", str(tmp_path / "backup"), "--key-file", str(keys))
        server.data = tmp_path / "restored"
        server.start()
        other.edit("case", "k-2", {"title": "Noise at night", "location": DAGUAN})
        other.sync()  # logged where the lost change was

        phone.sync()

        assert {e.change_id: e.state for e in phone.outbox()}[lost.change_id] == "applied"
        assert phone.record("case", "k-1").summary == "The landlord pays for the repair"
    with closing(sqlite3.connect(server.data / "lianxin.db")) as db:
        stored = {row[0] for row in db.execute("SELECT change_id FROM changes")}
    assert lost.change_id in stored
