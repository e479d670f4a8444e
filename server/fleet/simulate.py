"""`lianxin simulate`: a fleet of phones in the field, over a network that loses things.

It makes a fresh office (or uses a running one with `--server` and its
`--data`), adds supervisors, mediators and informants across three
districts, enrols one device each, and runs simulated days: devices go
offline for days at a time, informants report warnings, supervisors triage
them into cases and assign and reassign mediators, mediators log visits,
notes and status, and a share of edits hits the same field of the same
case from different devices. Every device syncs through a `FaultyTransport`
(loss, duplication, held-back requests, truncation, latency) and retries.
Devices' clocks are skewed by up to `--skew-hours` either way.

Time is simulated: each device's wall clock is the calendar plus its skew,
and network delays move the calendar, so nothing sleeps. The calendar ends
about now, so the server's real clock and the devices' agree at the end
(each device learns the offset from the server, as a phone does).

At the end everyone comes online and syncs to quiescence, and `check`
decides: no change lost, none taken twice, every replica exactly the
server's view for its user. The exit code is 1 on any violation.

A seed replays a run against a fresh office: each device makes the same
edits and syncs in the same order (`Report.actions`), and every figure of
the report but the wall time is the same, though the office issues other
user and device ids each time. (The fleet's own ids carry a tag of the
run, not of the seed: two runs against one office must not share ids.)
A running office (`--server`) holds what came before, so no seed replays
a run against it. Two things are not the seed's. The dates: the calendar
ends on the day the run starts (`run(now_ms=...)` pins it). And the
server's real clock: the office refuses a request signed more than
`request_window_s` from it as stale, and the device asks the office's
time and signs again, through its faulty network. The calendar runs far
ahead of the real clock, so about a fifth of the requests are refused so;
one whose simulated time since its device last learned the office's time
is within the real seconds elapsed of the window's edge may be refused in
one run and not in another, and the two runs part there. A pull of more
than one page asks for the next page while it applies one: that request's
simulated delay and the device's reading of the calendar then race (a
first pull of over a thousand records; the runs the tests make have none).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import msgspec
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from server.fleet.check import Accounting, account, differences, office_problems
from server.fleet.faults import Faults
from server.fleet.field import (
    DISTRICTS,
    PIN,
    FieldDevice,
    Registry,
    SimClock,
    fleet_words,
    moment,
)
from server.fleet.office import Office
from server.fleet.options import Options
from server.storage.directory import Role
from sync.atrest import KdfParams
from sync.client import DeviceClient
from sync.clock import system_wall_ms

HOUR_MS = 3600_000
DAY_MS = 24 * HOUR_MS
PASSPHRASE = "lianxin simulation only"
CITY = "Hangzhou"
SETTLE_ATTEMPTS = 200  # tries per device to sync at the end, faults still on


class Report(msgspec.Struct, kw_only=True):
    options: Options
    roles: dict[str, int]
    accounting: Accounting
    requests: Counter[str]
    errors: Counter[str]
    refused_locally: int
    evicted: int
    open_conflicts: int
    replicas: int
    consistent: int
    differences: list[str]
    unsettled: list[str]
    office_problems: list[str]
    seconds: float
    # Each device's edits and syncs, in order, by device name (`field.fleet_words`).
    actions: dict[str, list[str]] = {}

    @property
    def violations(self) -> list[str]:
        a = self.accounting
        found = [
            f"{len(a.lost)} changes lost" if a.lost else "",
            f"{len(a.duplicated)} changes taken twice" if a.duplicated else "",
            f"{len(a.unanswered)} changes unanswered" if a.unanswered else "",
            f"{len(a.disagreeing)} answers disagree with the log" if a.disagreeing else "",
            f"{a.foreign} changes in the log made by no device" if a.foreign else "",
            f"{self.replicas - self.consistent} replicas differ"
            if self.consistent < self.replicas
            else "",
            f"{len(self.unsettled)} devices never synced at the end" if self.unsettled else "",
            f"{len(self.office_problems)} office records or conflicts differ from the log"
            if self.office_problems
            else "",
        ]
        return [v for v in found if v]


def roster(devices: int) -> list[tuple[Role, str]]:
    """(role, district) for each device: per district at least one supervisor and two
    mediators; then about 5% supervisors, 35% mediators, the rest informants."""
    if devices < 3 * 4:
        raise ValueError("a fleet needs at least 12 devices (3 districts of 4)")
    supervisors = max(3, round(devices * 0.05))
    mediators = max(6, round(devices * 0.35))
    informants = devices - supervisors - mediators
    counts: dict[Role, int] = {
        "supervisor": supervisors,
        "mediator": mediators,
        "informant": informants,
    }
    roles = [role for role, count in counts.items() for _ in range(count)]
    return [(role, DISTRICTS[index % 3]) for index, role in enumerate(roles)]


def run(
    options: Options, office: Office, folder: Path, console: Console, *, now_ms: int | None = None
) -> Report:
    """Run the fleet against `office` (served at `office.url`), device files in `folder`,
    and check what became of every change and every replica. The calendar ends on the
    day of `now_ms` (default: the real clock's now)."""
    began = time.perf_counter()
    devices, clock = field_days(options, office, folder, console, now_ms=now_ms)
    unsettled = settle(devices, clock)
    logged = office.logged()
    accounting = account([(d.made, d.client.outbox()) for d in devices], logged)
    consistent, found = compare_replicas(devices, office, folder, clock)
    requests: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for device in devices:
        requests.update(device.transport.counts)
        errors.update(device.errors)
    names = {d.user_id: d.name for d in devices}
    report = Report(
        options=options,
        roles=dict(Counter(d.role for d in devices)),
        accounting=accounting,
        requests=requests,
        errors=errors,
        refused_locally=sum(sum(d.refused_locally.values()) for d in devices),
        evicted=sum(d.evicted for d in devices),
        open_conflicts=office.open_conflicts(),
        replicas=len(devices),
        consistent=consistent,
        differences=found,
        unsettled=unsettled,
        office_problems=office_problems(office.store),
        seconds=time.perf_counter() - began,
        actions={d.name: fleet_words(d.actions, names, d.tag) for d in devices},
    )
    for device in devices:
        device.close()
    return report


def field_days(
    options: Options, office: Office, folder: Path, console: Console, *, now_ms: int | None = None
) -> tuple[list[FieldDevice], SimClock]:
    """Enrol the fleet and work the simulated days (a progress bar on `console`); returns
    the devices, still open, and the simulated calendar, which ends on the day of `now_ms`
    (default: the real clock's now)."""
    assert office.url is not None
    rng = random.Random(options.seed)
    # The calendar ends about now, where the server's real clock is.
    today = (system_wall_ms() if now_ms is None else now_ms) // DAY_MS
    start = (today - options.days) * DAY_MS
    clock = SimClock(start + 8 * HOUR_MS)
    # Not from the seed: a second run of one seed against one office needs ids of its own.
    tag = secrets.token_hex(3)
    faults = Faults.lossy(options.loss, options.duplicate, options.latency_ms)
    registry = Registry()
    devices: list[FieldDevice] = []
    steps = options.days * options.parts_of_day * options.devices
    with Progress(*Progress.get_default_columns(), console=console, transient=True) as progress:
        enrolling = progress.add_task("Enrolling devices", total=options.devices)
        for index, (role, district) in enumerate(roster(options.devices)):
            name = f"{role[:3]}{index:04d}"
            user_id = office.add_user(name, role, [f"{CITY}/{district}"])
            if role == "mediator":
                registry.mediators[district].append(user_id)
            device = FieldDevice.open(
                folder,
                name,
                role,
                user_id,
                district,
                url=office.url,
                clock=clock,
                skew_ms=round(rng.uniform(-1, 1) * options.skew_hours * HOUR_MS),
                seed=rng.getrandbits(32),
                tag=tag,
            )
            device.client.enroll(office.code(user_id), label=name)
            device.transport.faults = faults  # enrolled over a good line; the field is not one
            devices.append(device)
            progress.advance(enrolling)
        console.print(f"Enrolled {len(devices)} devices against {office.url}")
        working = progress.add_task("Field work", total=steps)
        began = time.perf_counter()
        for day in range(options.days):
            progress.update(working, description=f"Day {day + 1} of {options.days}")
            clock.ms = max(clock.ms, start + day * DAY_MS + 8 * HOUR_MS)
            for device in devices:
                if day >= device.offline_until_day and rng.random() < options.offline:
                    device.offline_until_day = day + rng.randint(1, 3)
            for _ in range(options.parts_of_day):
                order = devices[:]
                rng.shuffle(order)
                for device in order:
                    clock.advance(rng.uniform(1_000, 60_000))
                    for _ in range(rng.randint(1, 2)):
                        device.work(registry, moment(clock() + device.skew_ms), options.concurrent)
                    if day >= device.offline_until_day:
                        device.sync(3, clock)
                    progress.advance(working)
                clock.advance(3 * HOUR_MS)
            made = sum(len(d.made) for d in devices)
            sent = sum(d.transport.counts["requests"] for d in devices)
            offline = sum(day < d.offline_until_day for d in devices)
            console.print(
                f"day {day + 1}/{options.days}: {made} changes made, {sent} requests,"
                f" {offline} devices offline today, {time.perf_counter() - began:.0f} s"
            )
    return devices, clock


def settle(devices: list[FieldDevice], clock: SimClock) -> list[str]:
    """Everyone online: each device pushes all and pulls; requests held back on the way
    arrive late; then everyone pulls again, so each has what every other pushed.
    Returns the devices that never got through."""
    failed = set()
    for _ in range(2):
        for device in devices:
            device.offline_until_day = 0
            if not device.sync(SETTLE_ATTEMPTS, clock):
                failed.add(device.name)
        for device in devices:
            device.transport.release_held()
    return sorted(failed)


def compare_replicas(
    devices: list[FieldDevice], office: Office, folder: Path, clock: SimClock
) -> tuple[int, list[str]]:
    """How many devices show exactly what a fresh device of their user pulls from scratch."""
    assert office.url is not None
    consistent, found = 0, []
    with httpx.Client(base_url=office.url, timeout=60) as http:
        for device in devices:
            path = folder / f"reference-{device.name}.db"
            kdf = KdfParams.new(n=16)
            with DeviceClient(path, http, passphrase=PIN, kdf=kdf, wall_ms=clock) as reference:
                reference.enroll(office.code(device.user_id), label=f"reference {device.name}")
                reference.pull()
                problems = differences(device.client, device.path, reference, path)
            if problems:
                found += [f"{device.name}: {problem}" for problem in problems]
            else:
                consistent += 1
    return consistent, found


def print_report(report: Report, console: Console) -> None:
    options, a = report.options, report.accounting
    table = Table(title="lianxin simulate", show_header=True)
    table.add_column("")
    table.add_column("", justify="right")
    roles = ", ".join(f"{n} {role}s" for role, n in sorted(report.roles.items()))
    table.add_row("devices", f"{options.devices} ({roles})")
    table.add_row("simulated days", str(options.days))
    table.add_row(
        "knobs",
        f"seed {options.seed}, loss {options.loss}, duplicate {options.duplicate},"
        f" latency {options.latency_ms} ms, skew ±{options.skew_hours} h,"
        f" offline {options.offline}, concurrent {options.concurrent}",
    )
    r = report.requests
    faulted = sum(r[k] for k in ("drop_request", "hold", "drop_response", "truncate", "duplicate"))
    table.add_row("requests", f"{r['requests']} ({faulted} faulted)")
    for kind in ("drop_request", "drop_response", "truncate", "hold", "released", "duplicate"):
        table.add_row(f"  {kind.replace('_', ' ')}", str(r[kind]))
    table.add_row(
        "  body bytes sent / received",
        f"{r['body_bytes_sent']:,} / {r['body_bytes_received']:,}",
    )
    errors = ", ".join(f"{n} {kind}" for kind, n in report.errors.most_common())
    table.add_row("failed syncs retried", errors or "none")
    table.add_row("changes made", str(a.made))
    table.add_row("  applied", str(a.applied))
    table.add_row("  answered conflict", f"{a.conflict} ({report.open_conflicts} open conflicts)")
    rejected = ", ".join(f"{n} {reason}" for reason, n in a.rejected.most_common())
    table.add_row("  quarantined with a reason", f"{a.rejected.total()} ({rejected or 'none'})")
    table.add_row("  lost", _mark(len(a.lost)))
    table.add_row("  duplicated", _mark(len(a.duplicated)))
    table.add_row("  unanswered after sync", _mark(len(a.unanswered)))
    table.add_row("  answer disagrees with log", _mark(len(a.disagreeing)))
    table.add_row("edits refused on the device", str(report.refused_locally))
    table.add_row("records evicted from phones", str(report.evicted))
    table.add_row(
        "replicas equal to the server's view",
        f"{report.consistent}/{report.replicas}",
    )
    table.add_row("wall time", f"{report.seconds:.1f} s")
    console.print(table)
    for difference in report.differences[:20]:
        console.print(f"  [red]differs[/red] {difference}")
    for problem in report.office_problems[:20]:
        console.print(f"  [red]office[/red] {problem}")
    violations = report.violations
    if violations:
        console.print(f"[bold red]FAIL[/bold red]: {'; '.join(violations)}")
    else:
        console.print("[bold green]OK[/bold green]: 0 lost, 0 duplicated, every replica consistent")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _mark(count: int) -> str:
    return str(count) if count == 0 else f"[bold red]{count}[/bold red]"


def phones_folder(data: Path) -> Path:
    """Where the simulated phones keep their files: in memory where there is some.

    A device file syncs every edit and pulled page to disk (synchronous = FULL);
    a fleet of them on one disk spends the run in fsync, which is not what is
    simulated here. They are thrown away after the run.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(dir=shm, prefix="lianxin-phones-"))
    folder = data / "simulated-phones"
    folder.mkdir(exist_ok=True)
    return folder


def main(args: argparse.Namespace) -> int:
    """Run `lianxin simulate` from parsed arguments; 0 when every check passes."""
    options = Options(
        devices=args.devices,
        days=args.days,
        seed=args.seed,
        loss=args.loss,
        duplicate=args.duplicate,
        latency_ms=args.latency_ms,
        skew_hours=args.skew_hours,
        offline=args.offline,
        concurrent=args.concurrent,
    )
    if options.problems():
        for problem in options.problems():
            print(f"lianxin simulate: {problem}", file=sys.stderr)
        return 2
    console = Console()
    # A service manager's or `timeout`'s stop cleans up as Ctrl-C does: the server it
    # started is stopped, the folders removed.
    signal.signal(signal.SIGTERM, _interrupt)
    temporary = args.data is None
    data = Path(tempfile.mkdtemp(prefix="lianxin-simulate-")) if temporary else args.data
    try:
        if args.server:
            if temporary:
                raise SystemExit("lianxin: --server needs the office's folder as --data")
            passphrase = os.environ.get("LIANXIN_PASSPHRASE") or PASSPHRASE
            office = Office(data, passphrase, url=args.server)
        else:
            office = Office.create(data, os.environ.get("LIANXIN_PASSPHRASE") or PASSPHRASE)
            office.start()
        phones = phones_folder(data)
        try:
            console.print(f"Office in {data}, served at {office.url}; phones in {phones}")
            report = run(options, office, phones, console)
        finally:
            office.close()
            if phones.parent != data:
                shutil.rmtree(phones, ignore_errors=True)
        print_report(report, console)
        return 1 if report.violations else 0
    finally:
        if temporary and not args.keep:
            shutil.rmtree(data, ignore_errors=True)
