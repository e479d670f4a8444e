"""`lianxin demo`: an office on embedded SQLite with the DESIGN scenarios, served with its console.

The office (keys locked with a passphrase everyone knows, unless
LIANXIN_PASSPHRASE is set) gets a supervisor for Hangzhou with a console
password and an admin; the seed scenarios are loaded through the office's
own apply path (readers, indexes, agreements). The server then starts on
127.0.0.1 and, on a fresh office, a simulated week of field work in three
districts goes through it (`server.fleet`: phones enrolled with codes, signed
and sealed sync over a lossy network, supervisors triaging and assigning,
mediators visiting, concurrent edits becoming conflicts); a summary and the
console's logins are printed and it serves until Ctrl-C. Running it again
reuses the folder, answers every seed change as a duplicate and adds no
second week; `--reset` starts over.

The demo keeps its own folder (`./lianxin-demo`), never the office folder
the other commands default to, and marks the folders it makes: it adds users
whose passwords it prints, and `--reset` deletes, so it refuses any other.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import msgspec
import uvicorn
from rich.console import Console

from server import logs, seed
from server.app import create_app
from server.console import signin
from server.fleet import simulate
from server.fleet.office import Office
from server.fleet.options import Options
from server.keys import OfficeKeys
from server.service import SyncService
from server.settings import Settings
from server.storage.directory import Directory, Role, User
from server.storage.sqlite import SqliteStore, open_store
from sync.clock import Clock, system_wall_ms

FOLDER = Path("lianxin-demo")
MARK = "LIANXIN-DEMO"  # a file in each folder the demo made
PASSPHRASE = "lianxin demo only"
SUPERVISOR_PASSWORD = "demo supervisor"
ADMIN_PASSWORD = "demo administrator"


def _user(directory: Directory, name: str, role: Role, password: str) -> User:
    """The demo user with this name and role, made (with its password) on first run."""
    for user in directory.users(role=role):
        if user.name == name:
            return user
    user = directory.add_user(name, role, ["Hangzhou"], system_wall_ms())
    signin.set_password(directory, user.user_id, password)
    return user


# A week in three districts: a little loss and skew, as on a decent day in the field.
WEEK = Options(
    devices=30, days=7, loss=0.1, duplicate=0.02, skew_hours=2.0, offline=0.15, concurrent=0.2
)


def run(
    settings: Settings,
    passphrase: str,
    *,
    reset: bool,
    serve: bool,
    week: Options = WEEK,
) -> int:
    """Set up (or reuse) the demo office in `settings.data_dir`, serve it, and on a fresh
    office run `week` of simulated field work through the server; keep serving until
    Ctrl-C unless `serve` is off."""
    data = settings.data_dir
    mark = data / MARK
    if data.exists() and any(data.iterdir()) and not mark.exists():
        raise SystemExit(
            f"lianxin: {data} holds something the demo did not make: left alone. The demo"
            f" keeps its own folder ({FOLDER} unless --data names another, new one)."
        )
    if reset and data.exists():
        shutil.rmtree(data)
        print(f"Removed {data}")
    data.mkdir(parents=True, exist_ok=True)
    if not mark.exists():
        mark.write_text("Made by `lianxin demo`: its users' passwords are printed for all.\n")
    if not settings.keys_path.exists():
        OfficeKeys.generate(passphrase).save(settings.keys_path, new=True)
        shown = "$LIANXIN_PASSPHRASE" if passphrase != PASSPHRASE else repr(passphrase)
        print(f"Created demo office keys {settings.keys_path}, locked with {shown}")
    keys = OfficeKeys.load(settings.keys_path, passphrase)
    store = open_store(settings, keys)
    fresh = "0001_initial" in store.migrations_applied
    applied = ", ".join(store.migrations_applied)
    if fresh:
        print(f"Created store {store.path} ({applied})")
    elif applied:
        print(f"Reusing store {store.path}, migrated ({applied}); --reset starts over")
    else:
        print(f"Reusing store {store.path} (run with --reset to start over)")
    service = SyncService(settings, store, keys, Clock(), system_wall_ms)
    supervisor = _user(service.directory, "Chen Jing 陈静", "supervisor", SUPERVISOR_PASSWORD)
    admin = _user(service.directory, "Wang Li 王丽", "admin", ADMIN_PASSWORD)
    for scenario in seed.scenarios():
        results = service.act(supervisor, scenario.changes)
        tally = Counter(r.status for r in results)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(tally.items()))
        print(f"  {scenario.name}: {len(results)} changes: {summary}")
    url = f"http://{settings.host}:{settings.port}"
    week_due = fresh and week.days > 0
    if not fresh and week.days > 0:
        print("A simulated week runs on a new store only (--reset starts over with one).")
    try:
        with _serving(settings, keys, store) if serve or week_due else nullcontext() as serving:
            synced = _field_week(settings, passphrase, url, week) if week_due else 0
            _summary(store, synced)
            print(f"\nConsole: {url}/console/login")
            print(f"  supervisor: user id {supervisor.user_id}, password {SUPERVISOR_PASSWORD!r}")
            print(f"  admin:      user id {admin.user_id}, password {ADMIN_PASSWORD!r}")
            print("  (a real office's admins also need an authenticator: lianxin user totp)")
            if serve and serving is not None:
                signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: as Ctrl-C
                print("Serving until Ctrl-C (plain HTTP here, so cookies are not `Secure`).")
                sys.stdout.flush()
                while serving.is_alive():
                    serving.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _serving(
    settings: Settings, keys: OfficeKeys, store: SqliteStore
) -> Iterator[threading.Thread]:
    """The office served on `settings`' address in a thread of this process, until exit."""
    # Plain HTTP on this machine, so console cookies cannot be `Secure`; and the demo's
    # admin signs in with the printed password alone (a real office's needs a code).
    demo = msgspec.structs.replace(settings, secure_cookies=False, admin_second_factor=False)
    app = create_app(demo, keys=keys, store=store)
    # The demo's printed story is its output: only problems are logged (as JSON lines).
    logs.configure_logging(logging.WARNING)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
    )
    serving = threading.Thread(target=server.run, name="lianxin-demo-server", daemon=True)
    serving.start()
    try:
        while not server.started:
            if not serving.is_alive():
                raise SystemExit(f"lianxin: could not serve on port {settings.port} (in use?)")
            time.sleep(0.05)
        yield serving
    finally:
        server.should_exit = True
        serving.join()


def _field_week(settings: Settings, passphrase: str, url: str, week: Options) -> int:
    """Work `week` in the field through the server at `url`; the body bytes synced."""
    console = Console()
    console.print(
        f"Simulating {week.days} days of field work: {week.devices} phones in three districts"
        f" (loss {week.loss:.0%}, clocks off by up to {week.skew_hours:g} h)"
    )
    office = Office(settings.data_dir, passphrase, url=url)
    phones = simulate.phones_folder(settings.data_dir)
    try:
        devices, clock = simulate.field_days(week, office, phones, console)
        simulate.settle(devices, clock)
        counts: Counter[str] = Counter()
        for device in devices:
            counts.update(device.transport.counts)
            device.close()
    finally:
        office.close()
        shutil.rmtree(phones, ignore_errors=True)
    return counts["body_bytes_sent"] + counts["body_bytes_received"]


def _summary(store: SqliteStore, synced: int) -> None:
    db = store.db
    cases, warnings, open_conflicts, settled, executed = db.execute(
        "SELECT (SELECT count(*) FROM case_index), (SELECT count(*) FROM warning_index),"
        " (SELECT count(*) FROM conflicts WHERE settled_seq IS NULL),"
        " (SELECT count(*) FROM conflicts WHERE settled_seq IS NOT NULL),"
        " (SELECT count(*) FROM agreement_index WHERE executed_ms IS NOT NULL)"
    ).fetchone()
    counts = store.counts()
    print(
        f"\nThe office holds {cases} cases, {warnings} early warnings, {counts['records']} records"
        f" and {counts['changes']} changes in the log; {counts['quarantine']} quarantined."
    )
    print(
        f"Conflicts: {open_conflicts} open, {settled} settled."
        f" Agreements executed: {executed}."
        + (
            f" Synced this run: {synced / 1e6:.1f} MB of request and answer bodies."
            if synced
            else ""
        )
    )
    for conflict in store.open_conflicts()[:5]:
        values = " | ".join(f"{c.device_id}: {c.value!r}" for c in conflict.candidates)
        print(f"  conflict {conflict.record_type}/{conflict.record_id}.{conflict.field}: {values}")
