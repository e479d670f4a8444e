"""The storage benchmark checks what the engine stored, and its ceiling run stores the same."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator

import pytest

from bench import apply_changes
from sync import engine, merge


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    """The benchmark tunes the collector as `lianxin serve` does; leave other tests Python's."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def _run(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    assert apply_changes.main(["--changes", "3000", *flags]) == 0
    return capsys.readouterr().out


def _digest(out: str) -> str:
    found = re.search(r"digest ([0-9a-f]{16})", out)
    assert found, out
    return found.group(1)


def test_the_ceiling_run_stores_exactly_what_the_engine_stores(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = _run(capsys)
    free = _run(capsys, "--free-merge")

    assert "engine (apply_batch)" in plain and "engine, merging free" in free
    # verify() raises unless every change is stored once and every record state is as
    # expected, so equal digests mean the replayed answers stood in for merging exactly.
    assert _digest(free) == _digest(plain)
    assert engine.merge is merge


def test_a_ceiling_is_not_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        apply_changes.main(["--changes", "10", "--free-merge", "--record"])
    assert "not recorded" in capsys.readouterr().err
