"""Fixtures shared by every test folder: real stores in temp dirs, fixed clocks."""

import pytest

from server.storage.sqlite import SqliteStore
from sync.clock import Clock

WALL_MS = 1_795_000_000_000  # 2026-11-18, a fixed "now" for the server clock


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
    store = SqliteStore(tmp_path / "lianxin.db")
    yield store
    store.close()


@pytest.fixture
def server_clock():
    return Clock(lambda: WALL_MS)
