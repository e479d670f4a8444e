"""Issue 8 point 4: a phone back after half a year, and phones whose clocks are days off.

In process, through the real app (`tests.sync.test_client.Office`). The
server and the devices share one hand-moved calendar; a skewed device adds
its own offset to it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from schemas import Add, Append
from server.app import create_app
from server.fleet.check import differences
from server.settings import Settings
from sync.client import DeviceClient
from sync.clock import wall_of
from tests.conftest import Wall, make_store, office_keys
from tests.sync.test_client import DAY_MS, XIANGMIHU, Office

ABSENCE_DAYS = 180
PENDING = 10_000


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory where there is one: a device file syncs every edit to disk
    (synchronous = FULL), and ten thousand disk syncs would be most of this test."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="lianxin-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def office(folder: Path) -> Iterator[Office]:
    wall = Wall()
    keys = office_keys()
    store = make_store(folder / "server.db", keys)
    app = create_app(Settings(data_dir=folder), store=store, keys=keys, wall_ms=wall)
    with TestClient(app) as http:
        office = Office(folder, http, store, keys, wall)
        yield office
        for device in office.devices:
            device.close()
    store.close()


def same_as_a_fresh_device(office: Office, device: DeviceClient, name: str) -> list[str]:
    """Where `device` (on file `name`) differs from a new device of its user pulling
    everything from scratch: the server's view for that user."""
    reference = office.open(f"{name}-reference")
    code = office.directory.issue_code(device.identity.user_id, office.wall(), DAY_MS)
    reference.enroll(code)
    reference.pull()
    return differences(
        device, office.root / f"{name}.db", reference, office.root / f"{name}-reference.db"
    )


def test_a_phone_offline_for_half_a_year_pushes_ten_thousand_changes(office):
    supervisor = office.device("chen", "supervisor")
    absent = office.device("zhao", "mediator")
    colleague = office.device("sun", "mediator")
    zhao, sun = absent.identity.user_id, colleague.identity.user_id
    shared = [f"k-shared-{n}" for n in range(20)]
    for case_id in shared:
        supervisor.edit(
            "case",
            case_id,
            {"title": "Shared", "location": XIANGMIHU, "status": "assigned"},
            [Add(field="mediators", value=zhao), Add(field="mediators", value=sun)],
        )
    supervisor.sync()
    absent.sync()
    colleague.sync()

    # Half a year without signal: new cases, visits and edits pile up in the outbox,
    # while the office goes on without this phone.
    step_ms = ABSENCE_DAYS * DAY_MS // PENDING
    made = []
    for n in range(PENDING):
        office.wall.tick(step_ms)
        if n % 10 == 0:
            case_id = f"k-zhao-{n // 10}"
            fields = {"title": "Door visit", "location": XIANGMIHU, "status": "assigned"}
            made.append(absent.edit("case", case_id, fields, [Add(field="mediators", value=zhao)]))
        elif n % 10 < 8:
            case_id = f"k-zhao-{n // 10}"
            visit = {"entry_id": f"v-{n}", "at": "2026-12-01T09:00:00Z", "by": zhao, "summary": "."}
            made.append(absent.edit("case", case_id, ops=[Append(field="visits", entry=visit)]))
        else:
            made.append(absent.edit("case", shared[n % 20], {"households": n}))
        if n % 2000 == 0:
            colleague.edit("case", shared[n % 20], {"households": 1})
            colleague.sync()
    assert len(absent.outbox()) == PENDING

    report = absent.sync()

    answers = Counter(entry.state for entry in absent.outbox())
    assert set(answers) <= {"applied", "conflict"}, answers
    assert sum(answers.values()) == PENDING
    assert len(report.pushed) == PENDING
    stored = {row[0] for row in office.rows("SELECT change_id FROM changes")}
    assert {change.change_id for change in made} <= stored
    case = absent.record("case", "k-zhao-999")
    assert len(case.visits) == 7
    colleague.sync()
    supervisor.sync()
    assert supervisor.record("case", "k-zhao-999") == case
    assert colleague.record("case", shared[3]) == absent.record("case", shared[3])
    assert same_as_a_fresh_device(office, absent, "zhao") == []


def test_causality_not_the_clock_decides_between_phones_days_apart(office):
    ahead = office.device("ahead", "mediator", wall_ms=lambda: office.wall() + 3 * DAY_MS)
    behind = office.device("behind", "mediator", wall_ms=lambda: office.wall() - 3 * DAY_MS)
    supervisor = office.device("chen", "supervisor")
    both = [Add(field="mediators", value=d.identity.user_id) for d in (ahead, behind)]
    first = ahead.edit("case", "k-1", {"title": "Noise", "location": XIANGMIHU}, both)
    ahead.sync()
    behind.sync()
    office.wall.tick()

    # `behind` saw the title and changes it: a causally later edit with an earlier clock.
    later = behind.edit("case", "k-1", {"title": "Noise after 22:00"})
    assert wall_of(later.hlc) < wall_of(first.hlc)
    for device in (behind, ahead, supervisor):
        device.sync()
    for device in (ahead, behind, supervisor):
        assert device.record("case", "k-1").title == "Noise after 22:00"
        assert device.conflicts("case", "k-1") == []

    # Neither saw the other's edit: concurrent, so a conflict keeps both, whatever the clocks.
    office.wall.tick()
    mine = ahead.edit("case", "k-1", {"summary": "The bar owner agrees"})
    theirs = behind.edit("case", "k-1", {"summary": "The bar owner refuses"})
    for device in (ahead, behind, ahead, supervisor):
        device.sync()
    for device in (ahead, behind, supervisor):
        (conflict,) = device.conflicts("case", "k-1")
        assert conflict.field == "summary"
        assert {c.change_id for c in conflict.candidates} == {mine.change_id, theirs.change_id}
    assert ahead.record("case", "k-1") == behind.record("case", "k-1")
    assert same_as_a_fresh_device(office, behind, "behind") == []
