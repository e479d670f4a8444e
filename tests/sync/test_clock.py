"""Hybrid logical clocks: strictly increasing per node, and not dragged by absurd stamps.

DESIGN.md, "Clocks": causality beats wall-clock time, and absurd future
timestamps are clamped and flagged. The wall clock is injected, so these
tests set it to anything, backwards jumps included.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.clock import COUNTER_MASK, DEFAULT_MAX_DRIFT_MS, Clock, pack, wall_of
from tests.conftest import WALL_MS, Wall

settings.register_profile(
    "lianxin-clock-laws",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
clock_laws = settings(settings.get_profile("lianxin-clock-laws"))

DAY_MS = 24 * 60 * 60 * 1000


def test_a_stamp_packs_wall_milliseconds_and_a_counter():
    stamp = pack(WALL_MS, 7)
    assert wall_of(stamp) == WALL_MS
    assert stamp & COUNTER_MASK == 7
    assert pack(WALL_MS, COUNTER_MASK) < pack(WALL_MS + 1, 0)


def test_now_follows_the_wall_clock_when_it_moves_forward():
    wall = Wall(WALL_MS)
    clock = Clock(wall)
    first = clock.now()
    wall.ms += 5_000
    second = clock.now()
    assert wall_of(first) == WALL_MS
    assert wall_of(second) == WALL_MS + 5_000


def test_now_keeps_increasing_when_the_wall_clock_jumps_back_hours():
    wall = Wall(WALL_MS)
    clock = Clock(wall)
    before = clock.now()
    wall.ms -= 5 * 60 * 60 * 1000
    after = [clock.now() for _ in range(3)]
    assert before < after[0] < after[1] < after[2]


def test_many_stamps_in_one_millisecond_stay_strictly_increasing():
    # More stamps than the 16-bit counter holds, with the wall clock frozen.
    clock = Clock(Wall(WALL_MS))
    stamps = [clock.now() for _ in range(COUNTER_MASK + 10)]
    assert all(a < b for a, b in itertools.pairwise(stamps))


def test_a_restarted_clock_continues_after_its_persisted_last_stamp():
    clock = Clock(Wall(WALL_MS))
    for _ in range(5):
        clock.now()
    # The phone restarts with its wall clock an hour behind; `last` was persisted.
    restarted = Clock(Wall(WALL_MS - 3_600_000), last=clock.last)
    assert restarted.now() > clock.last


def test_receive_moves_a_lagging_clock_past_the_remote_stamp():
    behind = Clock(Wall(WALL_MS - 3 * 60 * 60 * 1000))  # three hours slow
    remote = Clock(Wall(WALL_MS)).now()
    received = behind.receive(remote)
    assert not received.clamped
    assert received.stamp > remote
    assert behind.now() > remote


def test_an_absurd_remote_stamp_is_clamped_and_reported():
    clock = Clock(Wall(WALL_MS))
    ten_days_ahead = pack(WALL_MS + 10 * DAY_MS)
    received = clock.receive(ten_days_ahead)
    assert received.clamped
    # The clock is held at the drift bound, not dragged ten days ahead (one
    # millisecond of slack: the stamp must sort after the capped remote).
    assert wall_of(received.stamp) - WALL_MS <= DEFAULT_MAX_DRIFT_MS + 1
    assert clock.now() < ten_days_ahead


def test_a_remote_stamp_within_the_drift_bound_is_not_clamped():
    clock = Clock(Wall(WALL_MS))
    received = clock.receive(pack(WALL_MS + DEFAULT_MAX_DRIFT_MS, 5))
    assert not received.clamped
    assert received.stamp > pack(WALL_MS + DEFAULT_MAX_DRIFT_MS, 5)


# A remote stamp either near the local wall time (where the drift bound is) or anywhere.
def remote_stamps(max_drift_ms: int) -> st.SearchStrategy:
    near = st.builds(
        lambda offset, counter: ("near", offset, counter),
        st.integers(-3 * max_drift_ms - 10, 3 * max_drift_ms + 10),
        st.integers(0, COUNTER_MASK),
    )
    anywhere = st.integers(0, 2**63 - 1).map(lambda stamp: ("at", stamp, 0))
    return st.one_of(near, anywhere)


steps = st.integers(0, 5_000).flatmap(
    lambda max_drift_ms: st.tuples(
        st.just(max_drift_ms),
        st.lists(
            st.one_of(
                st.tuples(st.just("now"), st.none()),
                # The wall clock jumps anywhere: forwards, backwards, by years.
                st.tuples(st.just("wall"), st.integers(0, 2**44)),
                st.tuples(st.just("wall_by"), st.integers(-max_drift_ms * 4, max_drift_ms * 4)),
                st.tuples(st.just("receive"), remote_stamps(max_drift_ms)),
            ),
            max_size=40,
        ),
    )
)


@clock_laws
@given(script=steps, start=st.integers(0, 2**44), last=st.integers(0, 2**50))
def test_stamps_strictly_increase_and_absurd_remotes_are_clamped(script, start, last):
    max_drift_ms, operations = script
    wall = Wall(start)
    clock = Clock(wall, last=last, max_drift_ms=max_drift_ms)
    previous = clock.last
    for operation, argument in operations:
        match operation:
            case "wall":
                wall.ms = argument
                continue
            case "wall_by":
                wall.ms = max(0, wall.ms + argument)
                continue
            case "now":
                stamp = clock.now()
            case _:
                kind, value, counter = argument
                remote = pack(wall.ms + value, counter) if kind == "near" else value
                remote = max(0, remote)
                # A twin in the same state, given the highest stamp that is not absurd.
                twin = Clock(wall, last=clock.last, max_drift_ms=max_drift_ms)
                bound = twin.limit()
                at_bound = twin.receive(bound)
                stamp, clamped = clock.receive(remote)
                absurd = wall_of(remote) > wall.ms + max_drift_ms
                assert clamped == absurd, (remote, wall.ms)
                if absurd:
                    # Clamped: treated as the highest acceptable stamp, never followed past it.
                    assert (stamp, clamped) == (at_bound.stamp, True)
                    if previous < remote:
                        assert stamp <= remote
                else:
                    assert stamp > remote, "a received stamp orders the next event after it"
        assert stamp > previous, "stamps of one node strictly increase"
        assert clock.last == stamp
        previous = stamp
