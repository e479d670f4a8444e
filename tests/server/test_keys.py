"""Key rotation without downtime: master keys re-wrapped in the background, KEM keys overlapping."""

import threading

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from schemas import PullRequest
from server.keys import OfficeKeys
from server.storage.vault import Vault
from sync.envelope import ENVELOPE, Header, seal
from tests.conftest import PASSPHRASE, make_store
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU, decode


@pytest.fixture
def office(tmp_path):
    """An office whose key file is on disk, as `lianxin serve` runs it."""
    with running_office(tmp_path) as running:
        running.keys.save(tmp_path / "office-keys.json", new=True)
        yield running


def operator(office):
    """What `lianxin keys ...` holds: its own unlocked keys and its own key store connection."""
    keys = OfficeKeys.load(office.keys.path, PASSPHRASE)
    return keys, Vault(office.store.vault.path, keys)


def test_rotation_while_devices_push_and_pull_fails_no_request(office):
    phones = [office.enroll("mediator") for _ in range(3)]
    old_master = office.keys.master_id
    rotated = threading.Event()

    def rotate():
        keys, vault = operator(office)
        keys.rotate(master=True, kem=True, now_ms=office.wall.ms)
        keys.save(keys.path)
        rotated.set()
        while vault.rewrap(limit=7):
            pass
        vault.close()

    statuses = []
    rotation = threading.Thread(target=rotate)
    for n in range(60):
        if n == 20:
            rotation.start()
        phone = phones[n % 3]
        change = phone.change("case", f"k-{n}", {"title": f"case {n}", "location": GONGSHU})
        statuses.append(phone.push([change], f"b-{n}").status_code)
        statuses.append(phone.pull().status_code)
    rotation.join()
    assert rotated.is_set() and set(statuses) == {200}
    # The server picked up the new keys; the last data keys it made are under the new master.
    assert office.keys.master_id != old_master

    keys, vault = operator(office)
    while vault.rewrap():  # keys made after the background pass
        pass
    # 60 cases and the 3 users' sealed names, every one under the new master key.
    assert vault.count_under() == {keys.master_id: 63}
    keys.retire(old_master)
    keys.save(keys.path)
    vault.close()

    # Only the new keys from here on: every record still opens.
    fresh = OfficeKeys.load(office.keys.path, PASSPHRASE)
    assert list(fresh.masters) == [keys.master_id]
    store = make_store(office.store.path, fresh)  # the same data and key store files
    opened = store.states([("case", f"k-{n}") for n in range(60)])
    assert len(opened) == 60
    store.close()


def sealed_pull(office, phone, key_id, public_key):
    header = Header(suite=1, key_id=key_id, device_id=phone.device_id, batch_id="p", purpose="pull")
    body = seal(
        msgspec.msgpack.encode(PullRequest()), header, X25519PublicKey.from_public_bytes(public_key)
    )
    headers = {**phone.headers("/v1/sync/pull", body), "content-type": ENVELOPE}
    return office.http.post("/v1/sync/pull", content=body, headers=headers)


def test_the_old_kem_key_opens_until_it_is_retired(office):
    phone = office.enroll("mediator")
    old_id, old_public = office.keys.kem_key_id, office.keys.kem_public
    keys, vault = operator(office)
    keys.rotate(master=False, kem=True, now_ms=office.wall.ms)
    keys.save(keys.path)
    # Devices learn the new key from /v1/office (and their next pull).
    info = decode(office.http.get("/v1/office"))
    assert (info["kem_key_id"], info["kem_key"]) == (keys.kem_key_id, keys.kem_public)
    assert sealed_pull(office, phone, old_id, old_public).status_code == 200
    assert sealed_pull(office, phone, keys.kem_key_id, keys.kem_public).status_code == 200
    keys.retire(old_id)
    keys.save(keys.path)
    answer = sealed_pull(office, phone, old_id, old_public)
    assert (answer.status_code, decode(answer)["error"]) == (400, "wrong_key")
    vault.close()


def test_the_current_key_cannot_be_retired(office):
    keys, vault = operator(office)
    with pytest.raises(ValueError, match="current"):
        keys.retire(keys.master_id)
    with pytest.raises(ValueError, match="no key"):
        keys.retire("office-x.master9")
    vault.close()


def test_a_rotated_kem_key_is_newer_even_when_the_clock_went_back(office):
    before = office.keys.kem_statement
    office.keys.rotate(master=False, kem=True, now_ms=before["kem_key_since_ms"] - 3_600_000)
    after = office.keys.kem_statement
    assert after["kem_key_id"] != before["kem_key_id"]
    # Devices take a key only if it is newer than theirs (PROTOCOL.md section 14).
    assert after["kem_key_since_ms"] > before["kem_key_since_ms"]


def test_two_rotations_at_once_keep_every_key(office):
    first, second = (OfficeKeys.load(office.keys.path, PASSPHRASE) for _ in range(2))

    def rotate_second():
        with second.changing():
            second.rotate(master=True, kem=False, now_ms=office.wall.ms)

    with first.changing():
        rotation = threading.Thread(target=rotate_second)
        rotation.start()
        rotation.join(timeout=0.5)
        assert rotation.is_alive()  # held off while the first one changes the file
        first.rotate(master=True, kem=False, now_ms=office.wall.ms)
    rotation.join()
    saved = OfficeKeys.load(office.keys.path, PASSPHRASE).keyset.master_keys
    assert [k.key_id.rsplit(".", 1)[1] for k in saved] == ["master1", "master2", "master3"]
    # The key the first rotation made, that a server may have wrapped data keys under.
    assert saved[1] == first.keyset.master_keys[-1]


def test_a_rotation_rewrapping_after_a_later_one_moves_to_the_newest_key(office):
    (first, first_vault), (second, second_vault) = operator(office), operator(office)
    first_vault.data_keys([("case", f"k-{n}") for n in range(20)], create=True)
    with first.changing():
        first.rotate(master=True, kem=False, now_ms=office.wall.ms)
    with second.changing():  # another `keys rotate`, run meanwhile
        second.rotate(master=True, kem=False, now_ms=office.wall.ms)
    assert second_vault.rewrap(limit=5) == 5
    # The first one's loop met keys under a master it had never read: a KeyError.
    while first_vault.rewrap(limit=5):
        pass
    assert first_vault.count_under() == {second.master_id: 20}
    first_vault.close()
    second_vault.close()
