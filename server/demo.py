"""`lianxin demo`: an office on embedded SQLite with the DESIGN scenarios, served with its console.

The office (keys locked with a passphrase everyone knows, unless
LIANXIN_PASSPHRASE is set) gets a supervisor for Hangzhou with a console
password and an admin; the seed scenarios are loaded through the office's
own apply path (readers, indexes, agreements), and the server then runs on
127.0.0.1 until Ctrl-C. Running it again reuses the folder, and answers every
seed change as a duplicate; `--reset` starts over.
"""

from __future__ import annotations

import shutil
from collections import Counter

import msgspec

from server import seed
from server.console import signin
from server.keys import OfficeKeys
from server.service import SyncService
from server.settings import Settings
from server.storage.directory import Directory, Role, User
from server.storage.sqlite import open_store
from sync.clock import Clock, system_wall_ms

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


def run(settings: Settings, passphrase: str, *, reset: bool, serve: bool) -> int:
    """Set up (or reuse) the demo office in `settings.data_dir`; serve it unless `serve` is off."""
    data = settings.data_dir
    if reset and data.exists():
        shutil.rmtree(data)
        print(f"Removed {data}")
    data.mkdir(parents=True, exist_ok=True)
    if not settings.keys_path.exists():
        OfficeKeys.generate(passphrase).save(settings.keys_path, new=True)
        shown = "$LIANXIN_PASSPHRASE" if passphrase != PASSPHRASE else repr(passphrase)
        print(f"Created demo office keys {settings.keys_path}, locked with {shown}")
    keys = OfficeKeys.load(settings.keys_path, passphrase)
    store = open_store(settings, keys)
    applied = ", ".join(store.migrations_applied)
    if "0001_initial" in store.migrations_applied:
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
    counts = store.counts()
    conflicts = store.open_conflicts()
    print(
        f"Store holds {counts['records']} records, {counts['changes']} changes in the log,"
        f" {len(conflicts)} open conflicts, {counts['quarantine']} quarantined."
    )
    for conflict in conflicts:
        values = " | ".join(f"{c.device_id}: {c.value!r}" for c in conflict.candidates)
        print(f"  conflict {conflict.record_type}/{conflict.record_id}.{conflict.field}: {values}")
    if not serve:
        store.close()
        return 0
    import uvicorn

    from server.app import create_app

    url = f"http://{settings.host}:{settings.port}"
    print(f"\nConsole: {url}/console/login")
    print(f"  supervisor: user id {supervisor.user_id}, password {SUPERVISOR_PASSWORD!r}")
    print(f"  admin:      user id {admin.user_id}, password {ADMIN_PASSWORD!r}")
    print("Serving until Ctrl-C (plain HTTP on this machine, so cookies are not `Secure`).")
    app = create_app(
        msgspec.structs.replace(settings, secure_cookies=False), keys=keys, store=store
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    store.close()
    return 0
