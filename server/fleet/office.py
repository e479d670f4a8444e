"""The office a fleet simulation runs against: made fresh in a folder, served by `lianxin serve`.

The simulator needs three things of an office: users and enrolment codes
(written straight to its directory, as `lianxin user add` and `lianxin code`
do, also while the server runs), a real server process on 127.0.0.1, and a
read of its change log and quarantine to account for every change.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.directory import Directory, Role
from server.storage.sqlite import SqliteStore, open_store
from sync.clock import system_wall_ms

ROOT = Path(__file__).resolve().parents[2]  # where `python -m server.cli` is found

CODE_TTL_MS = 24 * 3600_000


class Logged(NamedTuple):
    """What the server holds of one change: its log seq and status, or its quarantine reason."""

    seq: int | None
    status: str
    reason: str | None


class Office:
    """An office folder, its directory, and (once started) its server process."""

    def __init__(self, data: Path, passphrase: str, url: str | None = None) -> None:
        self.settings = Settings(data_dir=data)
        self.passphrase = passphrase
        self.url = url
        self.process: subprocess.Popen[bytes] | None = None
        self._store: SqliteStore | None = None

    @classmethod
    def create(cls, data: Path, passphrase: str) -> Office:
        """A new office in `data` (which must not hold one)."""
        office = cls(data, passphrase)
        if office.settings.keys_path.exists():
            raise FileExistsError(f"{data} already holds an office")
        data.mkdir(parents=True, exist_ok=True)
        OfficeKeys.generate(passphrase).save(office.settings.keys_path, new=True)
        return office

    @property
    def store(self) -> SqliteStore:
        """The office's store, opened beside the running server (reads what it committed)."""
        if self._store is None:
            keys = OfficeKeys.load(self.settings.keys_path, self.passphrase)
            self._store = open_store(self.settings, keys)
        return self._store

    @property
    def directory(self) -> Directory:
        return Directory(self.store)

    def add_user(self, name: str, role: Role, org_units: list[str]) -> str:
        return self.directory.add_user(name, role, org_units, system_wall_ms()).user_id

    def code(self, user_id: str) -> str:
        return self.directory.issue_code(user_id, system_wall_ms(), CODE_TTL_MS)

    def start(self) -> None:
        """Serve the office with `lianxin serve` on a free port of 127.0.0.1."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "LIANXIN_PASSPHRASE": self.passphrase}
        try:
            self.process = start_server(self.settings.data_dir, port, env)
        except RuntimeError:
            self.close()
            raise

    def logged(self) -> dict[str, list[Logged]]:
        """Every change id in the change log or the quarantine, with what became of it.

        A list per id: more than one entry means the change was taken twice.
        """
        found: dict[str, list[Logged]] = {}
        uri = f"file:{self.settings.store_path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as db:
            for change_id, seq, status in db.execute("SELECT change_id, seq, status FROM changes"):
                found.setdefault(change_id, []).append(Logged(seq, status or "applied", None))
            for change_id, reason in db.execute("SELECT change_id, reason FROM quarantine"):
                found.setdefault(change_id, []).append(Logged(None, "rejected", reason))
        return found

    def open_conflicts(self) -> int:
        uri = f"file:{self.settings.store_path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as db:
            query = "SELECT count(*) FROM conflicts WHERE settled_seq IS NULL"
            return int(db.execute(query).fetchone()[0])

    def close(self) -> None:
        """Stop the server this office started (if any) and close the directory."""
        if self.process is not None:
            stop_process(self.process)
        if self._store is not None:
            self._store.close()
            self._store = None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(
    data: Path, port: int, env: Mapping[str, str], timeout_s: float = 60
) -> subprocess.Popen[Any]:
    """`lianxin serve` for `data` on 127.0.0.1:`port`, logging to `data/server.log`;
    returns once `/v1/office` answers. If it exits or is not up within `timeout_s`, it
    is stopped and `RuntimeError` carries the end of its log."""
    log_path = data / "server.log"
    command = [sys.executable, "-m", "server.cli", "--data", str(data), "serve"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=log, stderr=log, cwd=ROOT, env=dict(env)
        )
    url = f"http://127.0.0.1:{port}/v1/office"
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    stop_process(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the server did not start within {timeout_s} s:\n{tail}")


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    """End a child server: SIGTERM for a clean shutdown, SIGKILL if it takes too long."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
