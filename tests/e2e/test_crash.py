"""Kill the server between apply and answer, and the client between push and answer.

Whatever moment the kill lands on, after resuming every change is applied
exactly once and nothing the client made is lost.
"""

import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from sync.client import DeviceClient
from sync.errors import RateLimited
from tests.conftest import TEST_KDF

DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}
PIN = "246810"


def stored_change_ids(server):
    with sqlite3.connect(server.data / "lianxin.db") as db:
        return [row[0] for row in db.execute("SELECT change_id FROM changes")]


def make_changes(device, count, prefix):
    for n in range(count):
        device.edit(
            "case", f"k-{prefix}-{n % 40}", {"title": f"{prefix} edit {n}", "location": DAGUAN}
        )


@pytest.fixture
def mediator(server, tmp_path):
    http = httpx.Client(base_url=server.url, timeout=10)
    user_id = server.user("Zhao", "mediator", "Hangzhou/Gongshu")
    # A cheap scrypt cost, so the killed phone processes below spend their time syncing.
    device = DeviceClient(tmp_path / "zhao.db", http, passphrase=PIN, kdf=TEST_KDF, batch_size=100)
    device.enroll(server.code(user_id))
    yield device
    device.close()
    http.close()


def test_server_killed_mid_push_loses_nothing_and_applies_nothing_twice(server, mediator):
    rng = random.Random(7)
    made, interrupted = [], 0
    for round_ in range(6):
        make_changes(mediator, 600, f"r{round_}")
        made += [entry.change_id for entry in mediator.outbox() if entry.change_id not in made]
        # SIGKILL the server at a random moment of the push, whatever it is doing.
        killer = threading.Timer(rng.uniform(0.0, 0.15), server.kill)
        killer.start()
        try:
            mediator.push()
        except httpx.TransportError:
            interrupted += 1  # the server died under us; the push after the restart resumes
        killer.join()
        server.start()
        mediator.push()  # resume: resends the unanswered batches as they were
    assert interrupted >= 3, "the kills all missed the pushes; the test proved nothing"
    ids = stored_change_ids(server)
    assert sorted(ids) == sorted(made)  # every change once, none lost
    assert {e.state for e in mediator.outbox()} <= {"applied", "duplicate"}
    with sqlite3.connect(server.data / "lianxin.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


CLIENT = textwrap.dedent(
    """
    import sys, httpx
    from sync.client import DeviceClient
    http = httpx.Client(base_url=sys.argv[2])
    with DeviceClient(sys.argv[1], http, passphrase=sys.argv[3], batch_size=50) as device:
        print("editing", flush=True)
        while True:
            device.edit("case", "k-phone", {"summary": "edit"})
            device.push()
    """
)


def test_client_killed_between_push_and_answer_resumes_exactly_once(server, mediator, tmp_path):
    path = str(tmp_path / "zhao.db")
    mediator.close()  # the phone process below owns the file now
    rng = random.Random(11)
    for _ in range(5):
        phone = subprocess.Popen(
            [sys.executable, "-c", CLIENT, path, server.url, PIN], stdout=subprocess.PIPE
        )
        # Killed once it is at work, whatever its start-up took on a busy machine.
        assert phone.stdout.readline() == b"editing\n"
        time.sleep(rng.uniform(0.1, 0.6))
        phone.kill()  # SIGKILL: mid-edit, mid-push or waiting for the answer
        phone.wait()
        phone.stdout.close()
    with (
        httpx.Client(base_url=server.url) as http,
        DeviceClient(path, http, passphrase=PIN) as device,
    ):
        for _ in range(10):
            try:
                device.sync()
                break
            except RateLimited as held:  # the killed phone's pulls and pushes spent its share
                time.sleep(held.retry_after_s or 1)
        else:
            pytest.fail("the office held the phone back for good")
        made = [entry.change_id for entry in device.outbox()]
        assert made, "the phone made no change before it was killed"
        assert {e.state for e in device.outbox()} <= {"applied", "duplicate"}
        assert sorted(stored_change_ids(server)) == sorted(made)
