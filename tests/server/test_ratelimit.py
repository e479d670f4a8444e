"""How often a device may sync, and an address fail to enrol: a minute's allowance at
once, then the steady rate."""

import msgspec
import pytest

from schemas import EnrollRequest
from server.ratelimit import Allowance
from sync import signing
from sync.changes import encode_change
from sync.errors import RateLimited
from tests.server.conftest import MSGPACK, enrolment, running_office
from tests.server.test_hostile_requests import store_digest
from tests.server.test_push_v2 import error_of


def admit(rates, device_id, now_ms):
    rates.check(device_id, now_ms)
    rates.take(device_id, now_ms)


def test_a_minutes_allowance_comes_at_once_and_then_one_request_a_tick():
    rates = Allowance(60, "requests")
    for _ in range(60):
        admit(rates, "dev-1", 0)
    with pytest.raises(RateLimited) as refused:
        rates.check("dev-1", 0)
    assert refused.value.retry_after_s == 1
    admit(rates, "dev-2", 0)  # another device has its own allowance
    admit(rates, "dev-1", 1_000)  # a second later, one more
    with pytest.raises(RateLimited):
        rates.check("dev-1", 1_000)
    for _ in range(60):  # an hour idle refills no more than a minute's worth
        admit(rates, "dev-1", 3_600_000)
    with pytest.raises(RateLimited):
        rates.check("dev-1", 3_600_000)


def test_memory_stays_with_the_devices_active_in_the_last_minute():
    rates = Allowance(60, "requests")
    for n in range(10_000):  # a thousand devices a minute, each seen once
        admit(rates, f"dev-{n}", n * 60)
    assert len(rates._buckets) <= 3 * 1_000


def test_no_limit_when_set_to_zero():
    rates = Allowance(0, "requests")
    for _ in range(10_000):
        admit(rates, "dev-1", 0)


@pytest.fixture
def office(tmp_path):
    with running_office(tmp_path, sync_requests_per_minute=3) as running:
        yield running


def nonces(office):
    return office.store.db.execute("SELECT count(*) FROM nonces").fetchone()[0]


def test_a_device_over_its_allowance_is_told_when_to_retry_and_nothing_is_written(office):
    phone = office.enroll("mediator")
    change = phone.change("case", "k-1", {"title": "Drains", "status": "new"})
    assert phone.pull().status_code == 200
    assert phone.pull_v2(phone.pull_v2_body()).status_code == 200
    assert phone.push([phone.change("case", "k-0", {"title": "Fence"})]).status_code == 200
    stored, spent = store_digest(office.store.db), nonces(office)

    push = phone.push_v2(phone.push_v2_body([encode_change(change)], batch_id="b-2"))
    pull = phone.pull()

    assert error_of(push) == (429, "rate_limited") == error_of(pull)
    assert push.headers["retry-after"] == "20"  # 3 a minute: one every 20 s
    # Refused before its nonce was spent: not even that was written.
    assert (store_digest(office.store.db), nonces(office)) == (stored, spent)
    # Others are not held back, and the phone is welcome again once its time has come.
    other = office.enroll("mediator", name="other")
    assert other.pull().status_code == 200
    office.wall.tick(20_000)
    assert phone.push_v2(phone.push_v2_body([encode_change(change)], "b-2")).status_code == 200


def test_forged_and_replayed_requests_spend_nothing_of_the_allowance(office):
    phone = office.enroll("mediator")
    forger = office.enroll("mediator", name="forger")
    captured = phone.pull_v2_body()
    assert phone.pull_v2(captured).status_code == 200  # one of the three
    for _ in range(10):
        assert error_of(phone.pull_v2(captured)) == (401, "replayed")
        forged = phone.pull_v2_body(key=forger.key)
        assert error_of(phone.pull_v2(forged)) == (401, "bad_signature")
    assert phone.pull().status_code == 200
    assert phone.pull().status_code == 200
    assert error_of(phone.pull()) == (429, "rate_limited")


def test_an_address_that_keeps_guessing_codes_is_held_back_and_others_enrol(tmp_path):
    with running_office(tmp_path, enrol_failures_per_minute=2) as office:
        for _ in range(5):  # an office enrolling its phones through one address: no refusal
            office.enroll("mediator")
        user = office.directory.add_user("li", "mediator", ["Hangzhou"], office.wall.ms)
        code = office.directory.issue_code(user.user_id, office.wall.ms, 3600_000)
        for guess in ("guess-1", "guess-2"):
            answer = office.http.post("/v1/enroll", content=enrolment(guess)[2], headers=MSGPACK)
            assert error_of(answer) == (403, "enrollment_refused")
        stored = store_digest(office.store.db)

        held = office.http.post("/v1/enroll", content=enrolment(code)[2], headers=MSGPACK)

        assert error_of(held) == (429, "rate_limited")
        assert held.headers["retry-after"] == "30"  # 2 a minute
        assert store_digest(office.store.db) == stored  # the code is still unused
        office.wall.tick(30_000)
        answer = office.http.post("/v1/enroll", content=enrolment(code)[2], headers=MSGPACK)
        assert answer.status_code == 200


def test_weak_device_keys_are_refused_at_enrolment_and_count_as_refusals(tmp_path):
    # A small-order signing key "verifies" one signature for every message, so anyone
    # could act as the device; a low-order KEM key leaves nothing to seal answers to.
    with running_office(tmp_path, enrol_failures_per_minute=2) as office:
        user = office.directory.add_user("li", "mediator", ["Hangzhou"], office.wall.ms)
        code = office.directory.issue_code(user.user_id, office.wall.ms, 3600_000)
        identity = (1).to_bytes(32, "little")
        key, kem, _ = enrolment(code)
        kem_public = kem.public_key().public_bytes_raw()
        public = key.public_key().public_bytes_raw()
        stored = store_digest(office.store.db)

        for signing_key, kem_key, proof in [
            (identity, kem_public, identity + bytes(32)),  # no private key behind it
            (public, bytes(32), key.sign(signing.enroll_message(code, public, bytes(32)))),
        ]:
            weak = EnrollRequest(
                code=code, signing_key=signing_key, kem_key=kem_key, label="t", proof=proof
            )
            answer = office.http.post(
                "/v1/enroll", content=msgspec.msgpack.encode(weak), headers=MSGPACK
            )
            assert error_of(answer) == (400, "weak_key")

        assert store_digest(office.store.db) == stored  # no device, and the code unspent
        # Both counted: the address is held back, before its body is even read.
        held = office.http.post("/v1/enroll", content=b"\xc1", headers=MSGPACK)
        assert error_of(held) == (429, "rate_limited")
        office.wall.tick(30_000)
        assert (
            office.http.post("/v1/enroll", content=enrolment(code)[2], headers=MSGPACK).status_code
            == 200
        )
