"""Fixtures shared by every test folder: real stores in temp dirs, fixed clocks."""

import functools
from pathlib import Path

import pytest

from server.keys import OfficeKeys
from server.storage.migrations import migrate
from server.storage.sqlite import SqliteStore
from server.storage.vault import Vault
from sync.atrest import KdfParams
from sync.clock import Clock

WALL_MS = 1_795_000_000_000  # 2026-11-18, a fixed "now" for the server clock
PASSPHRASE = "correct horse battery staple"
# scrypt at a test cost: the production default costs 0.1 s per unlock.
TEST_KDF = KdfParams(salt=bytes(16), n=2**4)


def office_keys() -> OfficeKeys:
    return OfficeKeys.generate(PASSPHRASE, TEST_KDF)


@functools.cache
def shared_keys() -> OfficeKeys:
    """One office's keys for stores that need no office of their own (and reopen)."""
    return office_keys()


# The data migrations up to this one can run again on an office that ran them; the
# later ones add columns, which cannot be added twice.
LAST_REPEATABLE = "0019_audit_actions"


def migrate_again(db, since: str) -> list[str]:
    """Run the data migrations from `since` on again, as an office from before them does."""
    db.execute("DELETE FROM migrations WHERE name BETWEEN ? AND ?", [since, LAST_REPEATABLE])
    return migrate(db)


def make_store(path: Path, keys: OfficeKeys | None = None) -> SqliteStore:
    """A store on `path` with its data keys beside it in `<name>.keys`."""
    vault = Vault(path.with_name(path.name + ".keys"), keys or shared_keys())
    return SqliteStore(path, vault)


class Wall:
    """An injected wall clock (milliseconds) that the test moves by hand."""

    def __init__(self, ms: int = WALL_MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def tick(self, ms: int = 1_000) -> None:
        self.ms += ms


@pytest.fixture
def store(tmp_path):
    store = make_store(tmp_path / "lianxin.db")
    yield store
    store.close()


@pytest.fixture
def server_clock():
    return Clock(lambda: WALL_MS)
