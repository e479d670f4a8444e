"""Lawful erasure: the key goes, every copy stops opening, devices evict, the audit log says so."""

import sqlite3

import msgspec

from schemas import Add, Append
from server import audit
from server.erasure import erase_case
from server.storage.people import repeats
from server.storage.sqlite import SqliteStore
from server.storage.vault import Vault
from tests.server.test_app import GONGSHU, decode
from tests.server.test_atrest import leaks

HE = {"name": "He Jianguo", "phone": "+86 138 0000 1234", "address": "Daguan 3-401"}
NOTE = {"entry_id": "n-1", "at": "2026-11-18T09:00:00Z", "by": "sun", "text": "Ceiling stained"}


def open_case(phone, case_id, party_id, party=HE):
    return [
        phone.change("party", party_id, party),
        phone.change(
            "case",
            case_id,
            {"title": "Water leak from the flat above", "status": "new", "location": GONGSHU},
            [Add(field="parties", value=party_id), Append(field="notes", entry=NOTE)],
        ),
    ]


def items_of(phone, cursor):
    page = decode(phone.pull(cursor))
    return page["items"], page["cursor"]


def test_an_erased_case_opens_nowhere_and_every_device_evicts_it(office, tmp_path):
    sun = office.enroll("mediator")
    chen = office.enroll("supervisor", org_units=["Hangzhou"])
    assert decode(sun.push(open_case(sun, "k-he", "p-he")))["results"][0]["status"] == "applied"
    _, sun_cursor = items_of(sun, None)
    chen_items, chen_cursor = items_of(chen, None)
    assert len(chen_items) == 2
    # A backup of the data, taken before the erasure (the key store is backed up apart).
    backup = tmp_path / "backup.db"
    with sqlite3.connect(backup) as copy:
        office.store.db.conn.backup(copy)

    erased = erase_case(office.store, "k-he", "court order 2026-17", "operator:wang", 1)
    assert erased.records == [("case", "k-he"), ("party", "p-he")]
    assert erased.evicted_users == 2
    # Nor does its newest state stay in the server's memory.
    assert office.store._cache.peek(erased.records) == {}

    # Nothing of it opens: not in the store, not in the backup.
    assert office.store.states([("case", "k-he"), ("party", "p-he")]) == {}
    assert list(office.store.changes_since(0, 100)) == []
    restored = SqliteStore(backup, Vault(office.store.vault.path, office.keys))
    assert restored.states([("case", "k-he"), ("party", "p-he")]) == {}
    sealed = restored.db.execute("SELECT raw FROM changes WHERE record_id = 'k-he'").fetchone()[0]
    assert len(sealed) > 100  # the backup still holds the ciphertext, and nothing opens it
    restored.close()
    assert leaks(tmp_path, {"He Jianguo", "Ceiling stained"}) == {}

    # Both devices are told on their next pull.
    for phone, cursor in ((sun, sun_cursor), (chen, chen_cursor)):
        items, _ = items_of(phone, cursor)
        evicted = {(i["record_type"], i["record_id"], i["reason"]) for i in items}
        assert evicted == {("case", "k-he", "erased"), ("party", "p-he", "erased")}

    # Nothing can be written to it again, and a fresh device never sees it.
    answer = decode(sun.push([sun.change("case", "k-he", {"priority": "high"})], "b-2"))
    assert answer["results"][0]["reason"] == "record_erased"
    late = office.enroll("supervisor", org_units=["Hangzhou"])
    assert items_of(late, None)[0] == []

    (entry,) = [e for e in audit.entries(office.store.db) if e.action == "erase"]
    assert (entry.action, entry.subject, entry.actor) == ("erase", "case/k-he", "operator:wang")
    assert entry.detail["reason"] == "court order 2026-17"
    assert audit.verify(office.store.db) == []


def test_a_party_another_case_names_is_kept(office):
    sun = office.enroll("mediator")
    sun.push(open_case(sun, "k-1", "p-he"))
    second = sun.change("case", "k-2", {"title": "Again", "location": GONGSHU})
    second = msgspec.structs.replace(second, ops=[Add(field="parties", value="p-he")])
    sun.push([second], "b-2")
    erased = erase_case(office.store, "k-1", "request of the petitioner", "operator:wang", 1)
    assert erased.records == [("case", "k-1")]
    assert erased.kept == [("party", "p-he")]
    assert office.store.record("party", "p-he") is not None


def test_erasing_is_audited_in_a_chain_that_shows_tampering(office):
    sun = office.enroll("mediator")
    sun.push(open_case(sun, "k-1", "p-1"))
    sun.push(open_case(sun, "k-2", "p-2", {**HE, "phone": "139"}), "b-2")
    erase_case(office.store, "k-1", "first", "operator:wang", 1)
    erase_case(office.store, "k-2", "second", "operator:wang", 2)
    assert audit.verify(office.store.db) == []
    first = next(e.seq for e in audit.entries(office.store.db) if e.action == "erase")
    db = office.store.db
    db.execute("UPDATE audit SET detail = ? WHERE seq = ?", ['{"reason":"other"}', first])
    assert audit.verify(db) == [f"entry {first} (erase): hash does not match its content"]
    db.execute("DELETE FROM audit WHERE seq = ?", [first])
    assert f"entry {first + 1}: expected entry {first} (one is missing)" in audit.verify(db)


def test_an_erased_party_leaves_the_blind_index(office):
    sun = office.enroll("mediator")
    sun.push(open_case(sun, "k-1", "p-he"))
    sun.push(open_case(sun, "k-2", "p-he-again", {**HE, "name": "HE  Jianguo"}), "b-2")
    assert [r.case_id for r in repeats(office.store, "k-2")] == ["k-1"]
    erase_case(office.store, "k-1", "request", "operator:wang", 1)
    assert repeats(office.store, "k-2") == []
