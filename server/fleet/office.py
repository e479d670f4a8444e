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
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.directory import Directory, Role
from server.storage.sqlite import SqliteStore, open_store
from sync.clock import system_wall_ms

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
    def directory(self) -> Directory:
        if self._store is None:
            keys = OfficeKeys.load(self.settings.keys_path, self.passphrase)
            self._store = open_store(self.settings, keys)
        return Directory(self._store)

    def add_user(self, name: str, role: Role, org_units: list[str]) -> str:
        return self.directory.add_user(name, role, org_units, system_wall_ms()).user_id

    def code(self, user_id: str) -> str:
        return self.directory.issue_code(user_id, system_wall_ms(), CODE_TTL_MS)

    def start(self) -> None:
        """Serve the office with `lianxin serve` on a free port of 127.0.0.1."""
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = self.settings.data_dir
        command = ["-m", "server.cli", "--data", str(data), "serve", "--port", str(port)]
        with open(data / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                stdout=log,
                stderr=log,
                env={**os.environ, "LIANXIN_PASSPHRASE": self.passphrase},
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/v1/office", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError(f"the server did not start; see {data / 'server.log'}")

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
