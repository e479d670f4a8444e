"""Fixtures shared by every test folder: real stores in temp dirs, fixed clocks."""

import pytest

from server.storage.sqlite import SqliteStore
from sync.clock import Clock

WALL_MS = 1_795_000_000_000  # 2026-11-18, a fixed "now" for the server clock


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "lianxin.db")
    yield store
    store.close()


@pytest.fixture
def server_clock():
    return Clock(lambda: WALL_MS)
