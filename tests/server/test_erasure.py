"""Lawful erasure: the key goes, every copy stops opening, devices evict, the audit log says so."""

import sqlite3

import msgspec
import pytest
import uvicorn

from schemas import Add, Append
from server import audit, backup
from server.cli import main
from server.erasure import erase_case
from server.storage.people import repeats
from server.storage.sqlite import SqliteStore
from server.storage.vault import Vault
from sync.changes import decode_change
from tests.conftest import PASSPHRASE
from tests.server.test_app import GONGSHU, XIHU, decode
from tests.server.test_atrest import leaks
from tests.server.test_cli import opened

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


def seen(items):
    """What a page tells a device: (item type, record type, record id[, eviction reason])."""
    told = set()
    for item in items:
        if item["type"] == "evict":
            told.add(("evict", item["record_type"], item["record_id"], item["reason"]))
        else:
            change = decode_change(item["change"])
            told.add(("change", change.record_type, change.record_id))
    return told


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


def test_records_an_erased_case_linked_leave_its_mediators_view(office):
    # The erased case's mediator kept a shared party and a linked warning in view, and
    # went on receiving every later change to them (a party's new phone number).
    head = office.enroll("supervisor", org_units=["Hangzhou"])  # sees (and links) Xihu's party
    gongshu = office.enroll("supervisor", org_units=["Hangzhou/Gongshu"])
    informant = office.enroll("informant")
    sun = office.enroll("mediator")  # k-1's mediator only
    li = office.enroll("mediator")  # k-2's
    informant.push(
        [informant.change("warning", "w-1", {"description": "Damp", "location": GONGSHU})]
    )
    pushed = li.pushed(
        [
            li.change("party", "p-shared", HE),
            li.change(
                "case",
                "k-2",
                {"title": "Noise", "location": XIHU},
                [Add(field="parties", value="p-shared")],
            ),
        ]
    )
    assert {r["status"] for r in pushed["results"]} == {"applied"}
    pushed = head.pushed(
        [
            head.change(
                "case",
                "k-1",
                {"title": "Water leak", "location": GONGSHU},
                [
                    Add(field="mediators", value=sun.enrollment.user_id),
                    Add(field="parties", value="p-shared"),
                    Add(field="warnings", value="w-1"),
                ],
            )
        ],
        "b-2",
    )
    assert pushed["results"][0]["status"] == "applied"
    sun_items, sun_cursor = items_of(sun, None)
    assert {("change", "party", "p-shared"), ("change", "warning", "w-1")} <= seen(sun_items)
    _, gongshu_cursor = items_of(gongshu, None)
    _, li_cursor = items_of(li, None)
    _, informant_cursor = items_of(informant, None)

    erased = erase_case(office.store, "k-1", "court order 2026-17", "operator:wang", 1)
    assert erased.kept == [("party", "p-shared"), ("warning", "w-1")]

    # Sun's next pull evicts the case and both records it linked.
    sun_items, sun_cursor = items_of(sun, sun_cursor)
    assert seen(sun_items) == {
        ("evict", "case", "k-1", "erased"),
        ("evict", "party", "p-shared", "access_removed"),
        ("evict", "warning", "w-1", "access_removed"),
    }
    # All at the erasure's one log position.
    assert len({item["seq"] for item in sun_items}) == 1
    # The party now lies in k-2's unit only, so Gongshu's supervisor loses it too; the
    # warning keeps its own location, and with it that supervisor.
    gongshu_items, gongshu_cursor = items_of(gongshu, gongshu_cursor)
    assert seen(gongshu_items) == {
        ("evict", "case", "k-1", "erased"),
        ("evict", "party", "p-shared", "access_removed"),
    }
    org_unit = office.store.db.execute(
        "SELECT org_unit FROM records WHERE record_type = 'party' AND record_id = 'p-shared'"
    ).fetchone()[0]
    assert org_unit == "Hangzhou/Xihu/Beishan"
    # The party's own mediator and the warning's informant lose nothing.
    assert items_of(li, li_cursor)[0] == []
    assert items_of(informant, informant_cursor)[0] == []

    # Later changes reach those who still see the records, and not Sun.
    new_phone = li.change("party", "p-shared", {"phone": "+86 139 0000 5678"})
    assert li.pushed([new_phone], "b-3")["results"][0]["status"] == "applied"
    worse = informant.change("warning", "w-1", {"description": "Damp, and worse"})
    assert informant.pushed([worse], "b-4")["results"][0]["status"] == "applied"
    assert items_of(sun, sun_cursor)[0] == []
    assert seen(items_of(gongshu, gongshu_cursor)[0]) == {("change", "warning", "w-1")}
    assert seen(items_of(li, li_cursor)[0]) == {("change", "party", "p-shared")}

    # The audit entry names records by id only, and its chain holds.
    (entry,) = [e for e in audit.entries(office.store.db) if e.action == "erase"]
    assert entry.detail["records"] == ["case/k-1"]
    assert "He Jianguo" not in str(entry.detail)
    assert audit.verify(office.store.db) == []


def test_an_erasure_killed_after_its_keys_went_is_reported_and_finished_by_serve(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)
    data = str(tmp_path / "data")
    main(["--data", data, "demo", "--no-serve", "--days", "0"])
    store = opened(tmp_path / "data")
    # `lianxin case erase` killed after destroying the key, before its store transaction.
    store.vault.erase(("case", "k-noise"), "court order", 1)
    store.close()
    capsys.readouterr()

    assert main(["--data", data, "audit", "verify"]) == 1
    assert "the erasure of case/k-noise stopped half way" in capsys.readouterr().out
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    assert main(["--data", data, "serve"]) == 0
    assert "Finished erasures that had stopped half way: case/k-noise" in capsys.readouterr().out
    assert main(["--data", data, "audit", "verify"]) == 0
    store = opened(tmp_path / "data")
    (entry,) = [e for e in audit.entries(store.db) if e.action == "erase"]
    assert (entry.actor, entry.subject, entry.detail["reason"]) == (
        "lianxin serve",
        "case/k-noise",
        "court order",
    )
    evicted = store.db.execute(
        "SELECT count(*) FROM evictions WHERE record_id = 'k-noise' AND reason = 'erased'"
    ).fetchone()
    assert evicted[0] > 0
    store.close()


def test_an_erasure_destroys_all_its_keys_or_none(office):
    """Killed between two keys, the case's party would stay readable and be no one's to
    erase: its links go when the case's erasure is finished."""
    sun = office.enroll("mediator")
    assert decode(sun.push(open_case(sun, "k-he", "p-he")))["results"][0]["status"] == "applied"
    vault = office.store.vault
    vault._db.execute(  # the key store fails at the second key, as a kill there would
        "CREATE TEMP TRIGGER fail BEFORE UPDATE ON data_keys WHEN old.record_type = 'party'"
        " BEGIN SELECT RAISE(ABORT, 'killed'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="killed"):
        erase_case(office.store, "k-he", "court order", "operator:wang", 1)
    vault._db.execute("DROP TRIGGER fail")
    assert backup.unfinished_erasures(office.store.path, vault.path) == []
    both = [("case", "k-he"), ("party", "p-he")]
    assert set(office.store.states(both)) == set(both)  # nothing erased: run it again
    assert erase_case(office.store, "k-he", "court order", "operator:wang", 2).records == both
    assert office.store.states(both) == {}


def test_a_party_its_case_named_before_it_was_pushed_stays_erased_when_it_comes(office):
    sun = office.enroll("mediator")
    party, case = open_case(sun, "k-he", "p-he")
    assert decode(sun.push([case]))["results"][0]["status"] == "applied"  # names p-he
    erased = erase_case(office.store, "k-he", "court order", "operator:wang", 1)
    assert ("party", "p-he") in erased.records

    (late,) = decode(sun.push([party], "b-2"))["results"]  # from the phone's outbox

    assert (late["status"], late["reason"]) == ("rejected", "record_erased")
    assert office.store.states([("party", "p-he")]) == {}
    assert leaks(office.store.path.parent, {"He Jianguo"}) == {}


def test_no_other_writer_can_link_a_party_while_its_case_is_erased(office, monkeypatch):
    sun = office.enroll("mediator")
    decode(sun.push(open_case(sun, "k-he", "p-he")))
    vault, tried = office.store.vault, []
    destroy = vault.erase_all

    def erase_all_as_a_push_arrives(keys, reason, now_ms):
        # Another process (a running server) would link p-he to a case of its own now.
        other = sqlite3.connect(office.store.path, timeout=0)
        try:
            other.execute("INSERT INTO links VALUES ('k-other', 'party', 'p-he')")
        except sqlite3.OperationalError as refused:
            tried.append(str(refused))
        finally:
            other.close()
        return destroy(keys, reason, now_ms)

    monkeypatch.setattr(vault, "erase_all", erase_all_as_a_push_arrives)
    erase_case(office.store, "k-he", "court order", "operator:wang", 1)
    assert tried == ["database is locked"]
