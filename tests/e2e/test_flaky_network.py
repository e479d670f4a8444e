"""Issue 8 point 3: thousands of requests over a network that drops, duplicates, reorders,
truncates and delays them, between a few phones and a real server; nothing is lost and
every phone ends up with the same records as the server."""

import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import httpx
import pytest

from schemas import Add, Append
from server.fleet import Faults, FaultyTransport
from server.fleet.check import account, differences
from server.fleet.office import Office
from sync.client import DeviceClient
from sync.errors import LianxinError
from tests.conftest import PASSPHRASE, TEST_KDF

GONGSHU = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}
CASES = [f"k-{n}" for n in range(8)]
PIN = "246810"
FAULTS = Faults(
    drop_request=0.1, drop_response=0.1, truncate=0.05, hold=0.05, duplicate=0.1, latency_ms=2
)
WANTED_REQUESTS = 2000


class Phone:
    def __init__(self, office, folder, name, role, seed):
        self.name = name
        self.path = folder / f"{name}.db"
        user_id = office.add_user(name, role, ["Hangzhou/Gongshu"])
        self.transport = FaultyTransport(httpx.HTTPTransport(), Faults(), random.Random(seed))
        self.http = httpx.Client(base_url=office.url, transport=self.transport, timeout=30)
        # Small batches and pages: many requests per sync, so many chances to fail mid-way.
        self.client = DeviceClient(
            self.path, self.http, passphrase=PIN, kdf=TEST_KDF, batch_size=4, pull_limit=8
        )
        self.client.enroll(office.code(user_id))
        self.transport.faults = FAULTS
        self.made = []
        self.failures = Counter()

    @property
    def user_id(self):
        return self.client.identity.user_id

    def edit(self, record_type, record_id, fields=None, ops=()):
        self.made.append(self.client.edit(record_type, record_id, fields, ops).change_id)

    def sync(self):
        try:
            self.client.sync()
            return True
        except (httpx.TransportError, LianxinError) as error:
            self.failures[type(error).__name__] += 1
            return False


@pytest.fixture
def phones_folder(tmp_path):
    """In memory where there is one: a device file syncs each edit and page to disk."""
    if not Path("/dev/shm").is_dir():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="lianxin-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def office(server):
    office = Office(server.data, PASSPHRASE, url=server.url)
    yield office
    office.close()


def test_phones_over_a_faulty_network_converge_and_lose_nothing(office, phones_folder):
    supervisor, zhao, sun, informant = phones = [
        Phone(office, phones_folder, name, role, seed)
        for seed, (name, role) in enumerate(
            [
                ("chen", "supervisor"),
                ("zhao", "mediator"),
                ("sun", "mediator"),
                ("liu", "informant"),
            ]
        )
    ]
    mediators = [Add(field="mediators", value=p.user_id) for p in (zhao, sun)]
    for case_id in CASES:
        supervisor.edit("case", case_id, {"title": "Shared", "location": GONGSHU}, mediators)
    rng = random.Random(3)
    rounds = 0
    while sum(p.transport.counts["requests"] for p in phones) < WANTED_REQUESTS:
        rounds += 1
        for phone in phones:
            for _ in range(rng.randint(1, 4)):
                case_id = rng.choice(CASES)
                if phone is informant:
                    phone.edit(
                        "warning", f"w-{rounds}-{_}", {"description": "x", "location": GONGSHU}
                    )
                elif phone is supervisor:
                    phone.edit("case", case_id, {"priority": rng.choice(["low", "high"])})
                elif rng.random() < 0.5:
                    visit = {
                        "entry_id": f"v-{phone.name}-{len(phone.made)}",
                        "at": "2026-11-18T09:00:00Z",
                        "by": phone.user_id,
                        "summary": ".",
                    }
                    phone.edit("case", case_id, ops=[Append(field="visits", entry=visit)])
                else:
                    phone.edit("case", case_id, {"summary": f"{phone.name} {rounds}"})
            phone.sync()

    # The network stays as bad; each phone retries until it gets through, requests held
    # back on the way arrive late, and then everyone pulls what the others pushed.
    for _ in range(2):
        for phone in phones:
            assert any(phone.sync() for _ in range(100)), phone.failures
        for phone in phones:
            phone.transport.release_held()

    counts = sum((p.transport.counts for p in phones), Counter())
    assert counts["requests"] >= WANTED_REQUESTS
    for fault in ("drop_request", "drop_response", "truncate", "hold", "released", "duplicate"):
        assert counts[fault] > 20, (fault, counts)
    tally = account([(p.made, p.client.outbox()) for p in phones], office.logged())
    assert tally.made == sum(len(p.made) for p in phones) > 300
    assert (tally.lost, tally.duplicated, tally.unanswered, tally.disagreeing) == ([], [], [], [])
    assert tally.foreign == 0
    assert tally.applied + tally.conflict == tally.made  # nothing here can be refused
    for case_id in CASES:
        shown = [p.client.record("case", case_id) for p in (supervisor, zhao, sun)]
        assert shown[0] == shown[1] == shown[2]
        assert shown[0].visits  # the mediators' visits all merged in
    for phone in phones:
        reference_file = phones_folder / f"reference-{phone.name}.db"
        with (
            httpx.Client(base_url=office.url) as http,
            DeviceClient(reference_file, http, passphrase=PIN, kdf=TEST_KDF) as reference,
        ):
            reference.enroll(office.code(phone.user_id))
            reference.pull()
            assert differences(phone.client, phone.path, reference, reference_file) == []
    for phone in phones:
        phone.client.close()
        phone.http.close()
