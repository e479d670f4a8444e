"""Per-record data keys in their own key store (server/storage/vault.py)."""

import os
import sqlite3
from pathlib import Path

import pytest

import server.storage.vault as vault_module
from server.storage.vault import Vault
from sync.atrest import open_sealed, seal
from tests.conftest import office_keys


def resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_vault_holding_twenty_thousand_keys_stays_small(tmp_path):
    # A supervisor's whole pull opens a key for every record it carries, and the
    # vault keeps up to 50,000 of them: held as cipher objects (about 2.5 KB of
    # OpenSSL state each) 20,000 took 48 MB; as their 32 bytes, with ciphers for
    # the 2,048 most recently used records only, 6 MB.
    vault = Vault(tmp_path / "data-keys.db", office_keys())
    records = [("case", f"case-{n:05}") for n in range(20_000)]
    before = resident_mb()
    for start in range(0, len(records), 1_000):  # in batches, as pushes make them
        made = vault.data_keys(records[start : start + 1_000], create=True)
        if start == 0:
            first = made[records[0]]
            assert first is not None
            sealed = seal(first, b"Zhang Wei, 138 0013 8000", b"row")
    for start in range(0, len(records), 1_000):  # and read again, as pulls do
        assert len(vault.data_keys(records[start : start + 1_000])) == 1_000
    assert resident_mb() - before < 20
    # The first key's cipher was long pushed out; the one built again opens what it sealed.
    again = vault.data_keys([records[0]])[records[0]]
    assert again is not None and again is not first
    assert open_sealed(again, sealed, b"row") == b"Zhang Wei, 138 0013 8000"
    vault.close()


def test_erased_names_the_records_whose_key_was_destroyed_here_or_elsewhere(tmp_path):
    keys = office_keys()
    vault = Vault(tmp_path / "data-keys.db", keys)
    a, b, never = ("case", "a"), ("case", "b"), ("case", "never-stored")
    vault.data_keys([a, b], create=True)
    assert vault.erased([a, b, never]) == set()

    assert vault.erase(a, "asked by the party", now_ms=1)
    assert vault.erased([a, b, never]) == {a}
    # Another process (the CLI) erasing is seen at once, though both keys were cached here.
    cli = Vault(vault.path, keys)
    assert cli.erase(b, "asked by the party", now_ms=2)
    cli.close()
    assert vault.erased([a, b, never]) == {a, b}
    assert vault.data_keys([a, b]) == {a: None, b: None}
    vault.close()


def test_an_erasure_by_another_process_is_seen_after_this_vault_writes_too(tmp_path):
    # SQLite's data_version moves only for other connections' commits. Reading it afresh
    # after this vault's own commit (here an erasure or a rewrap; a new key too, when the
    # CLI commits between the vault's check and its own commit) swallowed an erasure the
    # CLI had committed in between, and the server went on opening the erased record.
    keys = office_keys()
    vault = Vault(tmp_path / "data-keys.db", keys)
    records = [("case", name) for name in ("a", "b", "c", "d")]
    vault.data_keys(records, create=True)
    cli = Vault(vault.path, keys)

    def erased_elsewhere(record, then):
        vault.data_keys(records)  # every key cached here
        assert cli.erase(record, "asked by the party", now_ms=1)
        then()
        assert vault.data_keys([record]) == {record: None}
        assert vault.erased([record]) == {record}

    erased_elsewhere(records[1], lambda: vault.erase(records[3], "asked by the party", now_ms=2))
    erased_elsewhere(records[2], lambda: vault.rewrap())
    cli.close()
    vault.close()


def test_an_erased_key_leaves_the_write_ahead_log_once_its_reader_ends(tmp_path):
    keys = office_keys()
    server = Vault(tmp_path / "data-keys.db", keys)  # the serving office's, open throughout
    record = ("party", "p-1")
    server.data_keys([record], create=True)
    raw = sqlite3.connect(server.path)
    (wrapped,) = raw.execute("SELECT wrapped FROM data_keys").fetchone()
    raw.execute("BEGIN")  # a backup being taken in another process
    raw.execute("SELECT count(*) FROM data_keys").fetchone()

    def on_disk() -> bytes:
        wal = Path(f"{server.path}-wal")
        return server.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    cli = Vault(server.path, keys)  # `lianxin case erase`, which ends before the backup
    assert cli.erase(record, "asked by the party", now_ms=1)
    cli.close()
    assert wrapped in on_disk()  # the reader holds the old pages
    raw.execute("COMMIT")
    assert server.erased([record]) == {record}  # the server's next use folds the log
    assert wrapped not in on_disk()
    raw.close()
    server.close()


def test_a_key_made_as_another_process_erases_it_fails_that_call_alone(tmp_path, monkeypatch):
    # The erasure (a party its case named before any phone pushed it) commits between the
    # server's look-up and its insert: the insert fails, and the connection must not be
    # left inside its transaction, failing every later read and locking out the CLI.
    keys = office_keys()
    server, cli = Vault(tmp_path / "data-keys.db", keys), Vault(tmp_path / "data-keys.db", keys)
    party, case = ("party", "p-1"), ("case", "k-1")
    made = vault_module.new_key

    def erased_meanwhile() -> bytes:
        monkeypatch.setattr(vault_module, "new_key", made)
        assert cli.erase(party, "asked by the party", now_ms=1)
        return made()

    monkeypatch.setattr(vault_module, "new_key", erased_meanwhile)
    with pytest.raises(sqlite3.IntegrityError):
        server.data_keys([party], create=True)
    assert server.data_keys([party]) == {party: None}
    assert server.data_keys([case], create=True)[case] is not None
    assert cli.erase(case, "asked by the party", now_ms=2)
    server.close()
    cli.close()
