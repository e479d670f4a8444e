"""Issue 6 point 2: `lianxin simulate` runs a small fleet against a real server and
finds nothing lost, nothing taken twice and every replica equal to the server's view."""

import io
import shutil
import subprocess
import sys
from collections import Counter

import msgspec
import pytest
from rich.console import Console

from server.fleet.check import Accounting, office_problems
from server.fleet.office import Office
from server.fleet.options import Options
from server.fleet.simulate import Report, phones_folder, print_report, run
from sync.clock import Clock, system_wall_ms
from sync.engine import apply_batch
from tests.conftest import PASSPHRASE, make_store
from tests.e2e.conftest import OFFICE_ENV
from tests.sync.test_merge import change


@pytest.fixture
def office(server):
    office = Office(server.data, PASSPHRASE, url=server.url)
    yield office
    office.close()


def test_a_small_fleet_over_a_lossy_network_loses_nothing(office, tmp_path):
    options = Options(devices=30, days=3, seed=5, loss=0.3, duplicate=0.05, concurrent=0.3)
    output = io.StringIO()
    console = Console(file=output, width=120)

    phones = phones_folder(tmp_path)
    try:
        report = run(options, office, phones, console)
    finally:
        shutil.rmtree(phones, ignore_errors=True)
    print_report(report, console)

    assert report.roles == {"supervisor": 3, "mediator": 10, "informant": 17}
    assert report.requests["requests"] > 500
    assert report.requests["drop_request"] + report.requests["drop_response"] > 100
    accounting = report.accounting
    assert accounting.made > 100
    assert (accounting.lost, accounting.duplicated) == ([], [])
    assert (accounting.unanswered, accounting.disagreeing) == ([], [])
    changed = accounting.applied + accounting.conflict + accounting.rejected.total()
    assert changed == accounting.made
    assert accounting.conflict > 0  # the concurrent edits did meet
    assert report.consistent == report.replicas == 30
    assert report.violations == []
    assert "OK: 0 lost, 0 duplicated, every replica consistent" in output.getvalue()


def test_any_violation_fails_the_run():
    report = Report(
        options=Options(),
        roles={},
        accounting=Accounting(made=2, applied=1, lost=["c-1"]),
        requests=Counter(),
        errors=Counter(),
        refused_locally=0,
        evicted=0,
        open_conflicts=0,
        replicas=2,
        consistent=1,
        differences=["dev-1: case/k-1: differs"],
        unsettled=[],
        office_problems=["open conflicts: 0 stored, 1 in the log's states"],
        seconds=1.0,
    )
    assert report.violations == [
        "1 changes lost",
        "1 replicas differ",
        "1 office records or conflicts differ from the log",
    ]
    output = io.StringIO()
    print_report(report, Console(file=output, width=120))
    assert "FAIL" in output.getvalue()


def test_the_command_refuses_a_server_without_its_folder():
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "simulate", "--server", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=OFFICE_ENV,
    )
    assert done.returncode != 0
    assert "--server needs the office's folder as --data" in done.stderr


def test_a_second_fleet_against_the_same_office_makes_changes_of_its_own(office, tmp_path):
    # `lianxin simulate --server` twice: the second run's ids must not be the first's, or
    # the office answers them `duplicate` and nothing of the second run is applied.
    options = Options(devices=12, days=1, seed=3, loss=0.0, duplicate=0.0)
    console = Console(file=io.StringIO(), width=120)
    reports = []
    for run_number in range(2):
        phones = tmp_path / f"phones-{run_number}"
        phones.mkdir()
        reports.append(run(options, office, phones, console))

    first, second = (r.accounting for r in reports)
    assert second.made == first.made > 0
    assert second.applied + second.conflict == second.made - second.rejected.total()
    assert second.foreign == 0  # the first run's changes are not the second's business
    assert reports[1].violations == []
    before = {c for c in office.logged() if c.startswith("sup0000.")}
    assert len({c.rsplit("-", 1)[0] for c in before}) == 2  # one id space per run


def test_the_check_sees_an_office_whose_conflicts_table_left_its_log(tmp_path):
    # The replicas cannot show it: they merge the same log the same way the office does.
    store = make_store(tmp_path / "office.db")
    created = change("dev-a", 10, set={"title": "Drains"})
    one = change("dev-a", 20, saw=(created,), set={"title": "Drains overflow"})
    other = change("dev-b", 21, saw=(created,), set={"title": "Blocked drain"})
    for each in (created, one, other):
        apply_batch(
            store,
            [msgspec.structs.replace(each, change_id=each.change_id.replace("@", "-"))],
            Clock(),
        )
    assert office_problems(store) == []

    store.db.execute("DELETE FROM conflicts")
    assert office_problems(store) == ["open conflicts: 0 stored, 1 in the log's states"]
    store.close()


def simulate_on_a_new_office(options, folder, now_ms):
    """One `lianxin simulate` run, as the command makes it: a fresh office of its own."""
    office = Office.create(folder / "office", PASSPHRASE)
    office.start()
    phones = folder / "phones"
    phones.mkdir()
    try:
        return run(options, office, phones, Console(file=io.StringIO()), now_ms=now_ms)
    finally:
        office.close()


def test_a_seed_replays_the_same_run(tmp_path):
    options = Options(devices=12, days=2, seed=11, concurrent=0.3)
    now = system_wall_ms()  # both runs on one calendar, should they straddle midnight
    first, second = (simulate_on_a_new_office(options, tmp_path / f"run-{n}", now) for n in (1, 2))
    other_seed = msgspec.structs.replace(options, seed=12)
    other = simulate_on_a_new_office(other_seed, tmp_path / "other-seed", now)

    assert first.violations == second.violations == other.violations == []
    assert first.accounting.made > 30 and first.requests["truncate"] > 0
    # Each phone did the same things in the same order, though the office issued other ids.
    assert list(second.actions) == list(first.actions)
    for name, actions in first.actions.items():
        assert second.actions[name] == actions, name
    # And so every figure the run reports is the same; only the wall time is not.
    assert msgspec.structs.replace(second, seconds=first.seconds) == first
    assert other.actions != first.actions
    assert other.requests != first.requests
