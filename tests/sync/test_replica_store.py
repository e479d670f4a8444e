"""The device file at rest: what a lost phone's file gives away (nothing personal).

The client-level counterpart, with records pulled from a real app, is in
test_client.py; here the store is filled directly, so every sealed column is
covered, the server's answer text included.
"""

import hashlib
import sqlite3
import unicodedata
from pathlib import Path

import msgspec
import pytest

from schemas.changes import Change, ChangeResult, Reason
from sync import merge
from sync.atrest import KdfParams
from sync.errors import Unreadable
from sync.replica_store import LOCK, ReplicaStore

PIN = "246810"
CHEAP = 2**4  # scrypt cost for tests; the default costs 0.1 s an open
# What must never show in the file: a party, her phone and address, her grievance.
PERSONAL = [
    "王秀英",
    "Wang Xiuying",
    "13812345678",
    "杭州市拱墅区米市巷12号",
    "12 Mishixiang Lane",
    "楼上漏水三个月没人管",
    "water has come through the ceiling for three months",
]


def open_store(path: Path, passphrase: str = PIN) -> ReplicaStore:
    return ReplicaStore(path, passphrase, kdf=KdfParams.new(n=CHEAP))


def party_change(change_id: str, record_id: str, hlc: int, **values: str) -> tuple[Change, bytes]:
    """A change to a party and its wire bytes."""
    change = Change(
        change_id=change_id,
        record_type="party",
        record_id=record_id,
        device_id="dev-wang",
        hlc=hlc,
        set=values,
    )
    return change, msgspec.msgpack.encode(change)


def on_disk(path: Path) -> bytes:
    """The bytes of the file and of whatever SQLite keeps beside it."""
    parts = [path, *(path.with_name(path.name + end) for end in ("-wal", "-shm", "-journal"))]
    return b"".join(part.read_bytes() for part in parts if part.exists())


def leaks(path: Path) -> list[str]:
    content = on_disk(path)
    return [text for text in PERSONAL if text.encode() in content]


@pytest.fixture
def filled(tmp_path: Path) -> ReplicaStore:
    """A store holding personal data in every sealed column; left open."""
    store = open_store(tmp_path / "phone.db")
    pulled, _ = party_change(
        "c-1", "p-1", 1, name=f"{PERSONAL[0]} {PERSONAL[1]}", phone=PERSONAL[2]
    )
    store.put_states([merge.apply_change(None, pulled).state])
    store.set_sealed_meta("identity", PERSONAL[3].encode())
    for n, text in enumerate(PERSONAL[4:], start=2):
        store.append(*party_change(f"c-{n}", "p-1", n, address=text))
    store.add_batch("b-1", ["c-2"], b"body " + PERSONAL[5].encode())
    answer = ChangeResult(
        change_id="c-3", status="rejected", reason=Reason.INVALID_VALUE, detail=PERSONAL[6]
    )
    store.add_batch("b-2", ["c-3"], b"body")
    store.record_answers("b-2", [answer])
    yield store
    store.close()


def test_nothing_personal_is_in_the_file_open_or_closed(filled):
    assert leaks(filled.path) == []
    filled.close()
    assert leaks(filled.path) == []


def test_a_reopened_file_holds_the_same_data(filled):
    def everything(store):
        return (
            store.state(("party", "p-1")),
            store.outbox(),
            store.overlay(("party", "p-1")),
            store.open_batches(),
            store.sealed_meta("identity"),
        )

    before = everything(filled)
    filled.close()
    store = ReplicaStore(filled.path, PIN)
    assert everything(store) == before
    state, outbox, overlay, batches, identity = before
    assert state.registers["phone"][0].value == PERSONAL[2]
    assert outbox[1].detail == PERSONAL[6] and len(overlay) == 2
    assert (batches, identity) == ([("b-1", b"body " + PERSONAL[5].encode())], PERSONAL[3].encode())
    store.close()


def test_a_wrong_passphrase_is_refused_and_changes_nothing(filled):
    filled.close()
    before = hashlib.sha256(on_disk(filled.path)).digest()
    with pytest.raises(Unreadable, match="wrong passphrase"):
        ReplicaStore(filled.path, "135790")
    assert hashlib.sha256(on_disk(filled.path)).digest() == before


@pytest.mark.parametrize(
    ("table", "column", "key", "source", "target", "read"),
    [
        ("records", "state", "record_id", "p-1", "p-2", lambda s: s.state(("party", "p-2"))),
        ("outbox", "raw", "change_id", "c-2", "c-4", lambda s: s.unbatched(10)),
        ("outbox", "detail", "change_id", "c-3", "c-2", lambda s: s.outbox()),
        ("batches", "body", "batch_id", "b-1", "b-3", lambda s: s.open_batches()),
        ("meta", "value", "key", "identity", "signing_key", lambda s: s.sealed_meta("signing_key")),
    ],
)
def test_a_value_copied_onto_another_row_does_not_open(
    filled, table, column, key, source, target, read
):
    filled.put_states([merge.apply_change(None, party_change("c-9", "p-2", 9, name="x")[0]).state])
    filled.add_batch("b-3", [], b"another body")
    filled.set_sealed_meta("signing_key", b"a key")
    db = filled._db
    (value,) = db.execute(f"SELECT {column} FROM {table} WHERE {key} = ?", [source]).fetchone()
    db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", [value, target])
    with pytest.raises(Unreadable, match="another row"):
        read(filled)


def test_changing_the_passphrase_rewraps_the_key_and_forgets_the_old_one(filled):
    old_lock = filled.meta(LOCK)
    with pytest.raises(Unreadable, match="wrong passphrase"):
        filled.change_passphrase("000000", "13579 七八九")
    filled.change_passphrase(PIN, "13579 七八九", kdf=KdfParams.new(n=CHEAP))
    assert filled.state(("party", "p-1")) is not None  # the open store goes on
    # The key wrapped under the old PIN is gone from the file and its log at once.
    assert old_lock not in on_disk(filled.path)
    filled.close()

    with pytest.raises(Unreadable, match="wrong passphrase"):
        ReplicaStore(filled.path, PIN)
    store = ReplicaStore(filled.path, "13579 七八九")
    assert store.sealed_meta("identity") == PERSONAL[3].encode()
    store.close()


def test_an_evicted_record_leaves_no_bytes_behind(filled):
    (sealed,) = filled._db.execute("SELECT state FROM records").fetchone()
    filled.evict(("party", "p-1"))
    filled.close()  # the last connection folds the log into the file
    assert sealed not in on_disk(filled.path)


def test_a_passphrase_opens_whatever_unicode_form_it_is_typed_in(tmp_path):
    composed = unicodedata.normalize("NFC", "café 六")
    open_store(tmp_path / "phone.db", composed).close()
    ReplicaStore(tmp_path / "phone.db", unicodedata.normalize("NFD", composed)).close()


def test_an_empty_passphrase_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty passphrase"):
        open_store(tmp_path / "phone.db", "")


def test_a_replica_from_before_encryption_is_refused(tmp_path):
    path = tmp_path / "old.db"
    open_store(path).close()
    # A replica written before sealing: version 1, its keys in clear in meta.
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta")
        db.execute("INSERT INTO meta VALUES ('signing_key', ?)", [bytes(32)])
    db.close()
    with pytest.raises(Unreadable, match="before replicas were encrypted"):
        ReplicaStore(path, PIN)
