"""At rest on the server: nothing that names or describes a person is stored in clear.

Personal values are sealed under per-record data keys (server.storage.vault),
the data keys under the office master key, and that under the passphrase.
"""

from pathlib import Path

import msgspec
import pytest
from litestar.testing import TestClient

from server import seed
from server.app import create_app
from server.cli import main
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.access import update_access
from server.storage.directory import Directory
from server.storage.sqlite import bind
from sync.atrest import open_sealed
from sync.client import DeviceClient
from sync.clock import Clock
from sync.engine import apply, apply_batch
from sync.errors import Unreadable
from tests.conftest import PASSPHRASE, TEST_KDF, Wall, make_store, office_keys

# The fields whose values name or describe people, their homes and their grievances.
PERSONAL = {"name", "phone", "id_number", "address", "title", "summary", "text", "description"}
PERSONAL |= {"response", "terms"}


def personal_values(value, field=None):
    """Every string under a personal field, anywhere in a change's values."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from personal_values(inner, key)
    elif isinstance(value, list):
        for inner in value:
            yield from personal_values(inner, field)
    elif isinstance(value, str) and field in PERSONAL and len(value) >= 4:
        yield value


def seed_secrets():
    found = set()
    for scenario in seed.scenarios():
        for change in scenario.changes:
            found.update(personal_values(msgspec.to_builtins(change)))
    return found


def leaks(folder: Path, secrets: set[str]) -> dict[str, list[str]]:
    """Which secrets appear (UTF-8) in which file under `folder`, WAL and key files included."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = sorted(s for s in secrets if s.encode() in data)
            if hits:
                found[path.name] = hits
    return found


def test_the_seed_has_personal_values_to_look_for():
    secrets = seed_secrets()
    assert {"He Jianguo", "+86 138 0000 1234", "Daguan 3-401", "Household 7"} <= secrets
    assert len(secrets) > 100


def test_no_personal_value_in_the_store_its_wal_or_the_key_store(tmp_path):
    store = make_store(tmp_path / "lianxin.db")
    clock = Clock()
    for scenario in seed.scenarios():
        apply_batch(store, scenario.changes, clock)
    # Still open: the WAL holds the latest pages.
    assert (tmp_path / "lianxin.db-wal").stat().st_size > 0
    assert leaks(tmp_path, seed_secrets()) == {}
    # ...and the store still reads them back.
    party = store.record("party", "p-he")
    assert party is not None and party.registers["name"][0].value == "He Jianguo"
    assert len(store.open_conflicts()) == 1
    store.close()


def test_no_personal_value_in_the_demo_office_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)
    assert main(["--data", str(tmp_path / "office"), "demo", "--no-serve"]) == 0
    assert leaks(tmp_path / "office", seed_secrets()) == {}


def test_a_sealed_value_does_not_open_on_another_row_or_record(tmp_path):
    store = make_store(tmp_path / "lianxin.db")
    for scenario in seed.scenarios():
        apply_batch(store, scenario.changes, Clock())
    state_of = dict(
        ((t, i), blob)
        for t, i, blob in store.db.execute("SELECT record_type, record_id, state FROM records")
    )
    data_key = store.vault.data_keys([("party", "p-he")])[("party", "p-he")]
    assert data_key is not None
    here = bind("records", ("party", "p-he"))
    assert open_sealed(data_key, state_of[("party", "p-he")], here)
    # Another record's state under this record's binding: refused.
    with pytest.raises(Unreadable):
        open_sealed(data_key, state_of[("party", "p-he-again")], here)
    # This record's state bound as a change row: refused.
    with pytest.raises(Unreadable):
        open_sealed(data_key, state_of[("party", "p-he")], bind("changes", ("party", "p-he")))
    store.close()


def test_the_key_file_opens_only_with_its_passphrase(tmp_path):
    keys = office_keys()
    keys.save(tmp_path / "office-keys.json", new=True)
    text = (tmp_path / "office-keys.json").read_bytes()
    assert keys.signing.private_bytes_raw() not in text
    assert OfficeKeys.load(tmp_path / "office-keys.json", PASSPHRASE).office_id == keys.office_id
    with pytest.raises(Unreadable, match="passphrase"):
        OfficeKeys.load(tmp_path / "office-keys.json", PASSPHRASE + "!")
    # The salt and cost are stored beside the sealed keys; the default cost is scrypt's
    # interactive figure, tests use a cheap one.
    assert msgspec.json.decode(text)["kdf"]["n"] == TEST_KDF.n


def test_a_supervisors_phone_holding_the_whole_seed_shows_none_of_it(tmp_path):
    keys = office_keys()
    (tmp_path / "office").mkdir()
    store = make_store(tmp_path / "office" / "lianxin.db", keys)
    wall = Wall()
    clock = Clock(wall)
    touched = {}
    for scenario in seed.scenarios():
        records = apply(store, scenario.changes, clock).records
        touched.update({key: seq for key, (_, seq) in records.items()})
    directory = Directory(store)
    supervisor = directory.add_user("Chen", "supervisor", ["Hangzhou"], wall.ms)
    update_access(store, touched, None)
    app = create_app(Settings(data_dir=tmp_path / "office"), keys=keys, store=store, wall_ms=wall)
    with TestClient(app) as http:
        code = directory.issue_code(supervisor.user_id, wall.ms, 60_000)
        phone = DeviceClient(tmp_path / "phone.db", http, passphrase="246810", kdf=TEST_KDF)
        phone.enroll(code)
        assert phone.pull().states == len(touched)  # every record, as the office holds it
        assert phone.record("party", "p-he").name == "He Jianguo"
        assert leaks(tmp_path, seed_secrets()) == {}  # the phone file and the office's, open
        phone.close()
    store.close()
    assert leaks(tmp_path, seed_secrets()) == {}
