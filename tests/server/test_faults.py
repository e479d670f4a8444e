"""The fault-injecting transport does what it says, and a seed replays it exactly.

The far end is httpx's own `MockTransport` with a handler that records what
arrives, so each test can see which requests reached the "server" and what
their callers got back.
"""

import random

import httpx
import pytest

from server.fleet import Faults, FaultyTransport

BODY = b"the office's answer, long enough to cut short somewhere " * 4


class Far:
    """The far end: answers every request with BODY and keeps what arrived."""

    def __init__(self) -> None:
        self.arrived: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrived.append(request)
        return httpx.Response(200, content=BODY, headers={"x-seen": request.url.path})


def client(faults: Faults, seed: int = 7, sleep=lambda seconds: None):
    far = Far()
    transport = FaultyTransport(httpx.MockTransport(far), faults, random.Random(seed), sleep=sleep)
    return far, transport, httpx.Client(base_url="http://office", transport=transport)


def outcome(http: httpx.Client, path: str) -> str:
    try:
        response = http.post(path, content=path.encode())
    except httpx.TransportError as error:
        return type(error).__name__
    return "ok" if response.content == BODY else f"cut to {len(response.content)}"


def paths(far: Far) -> list[str]:
    return [request.url.path for request in far.arrived]


def test_a_dropped_request_never_arrives():
    far, _, http = client(Faults(drop_request=1.0))
    with pytest.raises(httpx.ConnectError):
        http.post("/v1/sync/push", content=b"batch")
    assert far.arrived == []


def test_a_dropped_answer_was_still_delivered():
    far, _, http = client(Faults(drop_response=1.0))
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/sync/push", content=b"batch")
    assert paths(far) == ["/v1/sync/push"]
    assert far.arrived[0].content == b"batch"


def test_a_duplicated_request_arrives_twice_byte_for_byte():
    far, transport, http = client(Faults(duplicate=1.0))
    response = http.post("/v1/sync/push", content=b"batch", headers={"lianxin-nonce": "n1"})
    assert response.content == BODY
    first, second = far.arrived
    assert first.content == second.content == b"batch"
    assert first.headers["lianxin-nonce"] == second.headers["lianxin-nonce"] == "n1"
    assert transport.counts["duplicate"] == 1


def test_a_truncated_answer_is_a_strict_prefix_of_the_real_one():
    far, _, http = client(Faults(truncate=1.0))
    cuts = [http.post(f"/{n}", content=b"x").content for n in range(20)]
    assert len(far.arrived) == 20
    assert all(len(cut) < len(BODY) and BODY.startswith(cut) for cut in cuts)
    assert len(set(cuts)) > 1  # cut at different places


def test_a_held_request_arrives_after_later_ones():
    far, transport, http = client(Faults(hold=1.0))
    with pytest.raises(httpx.ConnectTimeout):
        http.post("/held", content=b"first")
    assert far.arrived == []
    transport.faults = Faults()
    for n in range(30):
        http.post(f"/later-{n}", content=b"later")
        if "/held" in paths(far):
            break
    arrived = paths(far)
    assert arrived.index("/held") >= 1  # after at least one request sent later
    assert arrived[0] == "/later-0"
    assert transport.counts["released"] == 1


def test_release_held_sends_everything_still_held():
    far, transport, http = client(Faults(hold=1.0))
    for n in range(3):
        with pytest.raises(httpx.ConnectTimeout):
            http.post(f"/held-{n}", content=b"x")
    transport.release_held()
    assert sorted(paths(far)) == ["/held-0", "/held-1", "/held-2"]
    assert transport.held == []


def test_delays_go_through_the_injected_sleep_with_the_mean_asked_for():
    slept: list[float] = []
    _, transport, http = client(Faults(latency_ms=200), sleep=slept.append)
    for n in range(2000):
        http.get(f"/{n}")
    assert len(slept) == 2000
    assert sum(slept) / len(slept) == pytest.approx(0.2, rel=0.1)
    assert transport.counts["delayed_ms"] == pytest.approx(sum(slept) * 1000, abs=2000)


def test_lossy_faults_hit_the_share_asked_for():
    far, transport, http = client(Faults.lossy(0.3, duplicate=0.05))
    outcomes = [outcome(http, f"/{n}") for n in range(4000)]
    failed = sum(o != "ok" for o in outcomes) / len(outcomes)
    assert failed == pytest.approx(0.3, abs=0.03)
    counts = transport.counts
    assert counts["duplicate"] / 4000 == pytest.approx(0.05, abs=0.015)
    assert counts["drop_request"] / 4000 == pytest.approx(0.12, abs=0.02)
    assert counts["drop_response"] / 4000 == pytest.approx(0.12, abs=0.02)
    transport.release_held()
    # Every request arrives except those dropped on the way; duplicates arrive twice.
    assert len(far.arrived) == 4000 - counts["drop_request"] + counts["duplicate"]


def test_the_same_seed_replays_the_same_faults():
    faults = Faults.lossy(0.5, duplicate=0.1, latency_ms=50)
    runs = []
    for seed in (11, 11, 12):
        slept: list[float] = []
        far, _, http = client(faults, seed, sleep=slept.append)
        runs.append(([outcome(http, f"/{n}") for n in range(300)], paths(far), slept))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]


def test_rates_that_cannot_be_are_refused():
    with pytest.raises(ValueError):
        Faults(drop_request=0.6, drop_response=0.6)
    with pytest.raises(ValueError):
        Faults(duplicate=-0.1)


def test_the_fleet_package_exports_the_transport_and_its_faults():
    import server.fleet

    assert server.fleet.__all__ == ["Faults", "FaultyTransport"]
