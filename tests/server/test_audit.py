"""The audit log: batches and executions logged, signed checkpoints, and every break reported.

Each tampering test edits the raw SQLite file as someone with access to it
would, then checks that `verify_store` names exactly what was changed.
"""

import base64
import re
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import TestClient

from server import audit
from server.app import create_app
from server.audit_verify import verify_store
from server.cli import main
from server.settings import Settings
from server.storage import migrations
from server.storage.directory import Directory
from server.storage.sqlite import open_store
from sync import signing
from sync.clock import Clock
from tests.conftest import PASSPHRASE, Wall, make_store, office_keys
from tests.server.conftest import Office, running_office
from tests.server.test_agreements import attested, open_agreement, sign, stored_agreement
from tests.server.test_console import sign_in, supervisor

PROTOCOL = (Path(__file__).parent.parent.parent / "docs" / "PROTOCOL.md").read_text()


@contextmanager
def served_office(folder):
    """An office laid out as `lianxin init` leaves it (key file, data-key store), served."""
    settings = Settings(data_dir=folder, require_sealed=False, secure_cookies=False)
    keys = office_keys()
    keys.save(settings.keys_path, new=True)
    store = open_store(settings, keys)
    wall = Wall()
    app = create_app(settings, store=store, keys=keys, clock=Clock(wall), wall_ms=wall)
    with TestClient(app) as http:
        yield Office(store, Directory(store), keys, http, wall)
    store.close()


@pytest.fixture
def signed(tmp_path):
    """An office holding three pushed batches and an agreement executed by the last one."""
    with served_office(tmp_path) as office:
        (mediator,) = open_agreement(office)
        sign(mediator, attested(mediator, "p-1"), attested(mediator, "p-2"), batch_id="s-1")
        sign(mediator, attested(mediator, "p-3"), batch_id="s-2")
        assert stored_agreement(office).status == "executed"
        office.mediator = mediator
        yield office


def problems(office):
    return verify_store(office.store, office.keys).problems


def sql(office, statement, *parameters):
    office.store.db.execute(statement, list(parameters))


def push_entry(office, batch_id):
    return next(
        e
        for e in audit.entries(office.store.db)
        if e.action == "push" and e.subject == f"batch/{batch_id}"
    )


def test_an_untouched_store_verifies_and_says_what_it_checked(signed):
    report = verify_store(signed.store, signed.keys)
    assert report.problems == []
    assert (report.batches, report.agreements, report.signatures, report.receipts) == (3, 1, 3, 1)
    # b-1 held the case and the agreement, s-1 and s-2 one change each.
    assert report.changes == 4
    assert report.checkpoints >= 1  # the first push signs one


def test_each_accepted_batch_is_logged_with_its_manifest_and_signature(signed):
    device_id = signed.mediator.device_id
    entry = push_entry(signed, "s-1")
    manifest, signature = signed.store.db.execute(
        "SELECT manifest, signature FROM batches WHERE device_id = ? AND batch_id = 's-1'",
        [device_id],
    ).fetchone()
    assert entry.actor == f"device:{device_id}"
    assert entry.detail == {
        "batch_id": "s-1",
        "manifest_sha256": signing.digest(manifest).hex(),
        "signature_sha256": signing.digest(signature).hex(),
        "changes": 1,
        "stored": 1,
    }


def test_a_retried_or_refused_batch_adds_no_entry(signed):
    phone = signed.mediator
    entries = len(audit.entries(signed.store.db))
    again = [phone.change("agreement", "a-1", {"terms": "other"})]
    assert phone.push(again, batch_id="s-1").status_code == 409  # batch_reused
    assert len(audit.entries(signed.store.db)) == entries
    change = phone.change("case", "k-1", {"title": "Grease, again"})
    assert phone.push([change], batch_id="s-3").status_code == 200
    assert phone.push([change], batch_id="s-3").status_code == 200  # a retry
    assert [e.subject for e in audit.entries(signed.store.db)[entries:]] == ["batch/s-3"]


def test_the_execution_of_an_agreement_is_logged(signed):
    (entry,) = [e for e in audit.entries(signed.store.db) if e.action == "agreement_execute"]
    receipt = stored_agreement(signed).receipt
    assert (entry.actor, entry.subject) == (f"office:{signed.keys.office_id}", "agreement/a-1")
    assert entry.detail["content_hash"] == receipt.content_hash
    assert entry.detail["signatures_hash"] == receipt.signatures_hash
    assert (entry.detail["signatures"], entry.detail["receipt_seq"]) == (3, receipt.seq)


def test_a_checkpoint_is_signed_after_an_hour_of_entries_not_on_every_push(signed):
    before = audit.checkpoints(signed.store.db)
    phone = signed.mediator
    phone.push([phone.change("case", "k-1", {"title": "A"})], batch_id="s-3")
    assert audit.checkpoints(signed.store.db) == before
    signed.wall.tick(audit.CHECKPOINT_MAX_AGE_MS)
    phone.push([phone.change("case", "k-1", {"title": "B"})], batch_id="s-4")
    (new,) = audit.checkpoints(signed.store.db)[len(before) :]
    assert new.seq == push_entry(signed, "s-4").seq
    assert new.at_ms == signed.wall.ms


def test_a_serving_office_signs_the_consoles_acts_with_no_phone_pushing(tmp_path):
    def signed_head():
        """The checkpoint at the head of the chain, once the office has signed it."""
        for _ in range(500):
            head = audit.entries(office.store.db)[-1].seq
            marks = audit.checkpoints(office.store.db)
            if marks and marks[-1].seq == head:
                return marks[-1]
            time.sleep(0.02)
        pytest.fail(f"the head {head} was never signed; last signed: {marks[-1:]}")

    with running_office(tmp_path, checkpoint_check_s=0.01) as office:
        chen = supervisor(office)
        assert sign_in(office, chen).status_code == 303
        first = signed_head()  # the first act is due at once
        office.wall.tick(60_000)
        assert sign_in(office, chen).status_code == 303
        time.sleep(0.2)  # many rounds: not due yet, less than an hour on the office's clock
        assert audit.checkpoints(office.store.db) == [first]
        office.wall.tick(audit.CHECKPOINT_MAX_AGE_MS)
        second = signed_head()
        assert second.at_ms == office.wall.ms
        keys = office.keys
        assert audit.verify_checkpoints(office.store.db, keys.office_id, keys.signing_public) == []


def test_an_edited_entry_is_named(signed):
    entry = push_entry(signed, "s-1")
    sql(signed, "UPDATE audit SET subject = 'batch/forged' WHERE seq = ?", entry.seq)
    found = problems(signed)
    assert f"entry {entry.seq} (push): hash does not match its content" in found
    device_id = signed.mediator.device_id
    # Moved off its batch: the batch has no entry, and the entry no batch.
    assert f"batch s-1 of {device_id}: no audit entry logs it" in found
    assert f"entry {entry.seq} (push): batch forged of {device_id} is not stored" in found
    assert len(found) == 3


def test_a_dropped_entry_is_named(signed):
    entry = push_entry(signed, "s-1")
    sql(signed, "DELETE FROM audit WHERE seq = ?", entry.seq)
    assert problems(signed) == [
        f"entry {entry.seq + 1}: expected entry {entry.seq} (one is missing)",
        f"entry {entry.seq + 1} ({audit.entries(signed.store.db)[entry.seq - 1].action}):"
        " hash does not match its content",
        f"batch s-1 of {signed.mediator.device_id}: no audit entry logs it",
    ]


def test_dropping_the_last_entries_is_caught_by_a_checkpoint(signed):
    mark = audit.checkpoint(signed.store.db, signed.keys, signed.wall.ms)
    sql(signed, "DELETE FROM audit WHERE seq = ?", mark.seq)
    assert audit.verify(signed.store.db) == []  # the chain alone cannot tell
    assert (
        f"checkpoint at entry {mark.seq}: the log ends at entry {mark.seq - 1}"
        " (later entries were dropped)"
    ) in problems(signed)


def test_a_log_rewritten_with_fresh_hashes_is_caught_by_a_checkpoint(signed):
    mark = audit.checkpoint(signed.store.db, signed.keys, signed.wall.ms)
    db = signed.store.db
    first = audit.entries(db)[0]
    sql(signed, "UPDATE audit SET actor = 'user:nobody' WHERE seq = 1")
    previous = audit.GENESIS
    for entry in audit.entries(db):
        digest = audit.entry_hash(previous, *entry[:6])
        sql(signed, "UPDATE audit SET hash = ? WHERE seq = ?", digest, entry.seq)
        previous = digest
    assert first.actor != "user:nobody" and audit.verify(db) == []
    found = problems(signed)
    assert (
        f"checkpoint at entry {mark.seq}: the entry's hash differs from the signed one (rewritten)"
    ) in found
    assert all(p.startswith("checkpoint at entry") for p in found)


def test_a_forged_checkpoint_is_named(signed):
    db = signed.store.db
    seq, digest = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    db.execute("DELETE FROM audit_checkpoints WHERE seq = ?", [seq])
    stranger = Ed25519PrivateKey.generate()
    message = audit.checkpoint_message(signed.keys.office_id, seq, digest, signed.wall.ms)
    sql(
        signed,
        "INSERT INTO audit_checkpoints (seq, hash, at_ms, signature) VALUES (?, ?, ?, ?)",
        seq,
        digest,
        signed.wall.ms,
        stranger.sign(message),
    )
    assert problems(signed) == [
        f"checkpoint at entry {seq}: its signature does not verify with the office key"
    ]


def test_a_changed_batch_signature_is_named(signed):
    device_id = signed.mediator.device_id
    entry = push_entry(signed, "s-1")
    sql(signed, "UPDATE batches SET signature = zeroblob(64) WHERE batch_id = 's-1'")
    assert problems(signed) == [
        f"batch s-1 of {device_id}: the device's signature does not verify over the stored"
        " manifest",
        f"batch s-1 of {device_id}: the stored signature differs from the one audited in"
        f" entry {entry.seq}",
    ]


def test_changed_manifest_bytes_are_named_with_the_change_they_no_longer_cover(signed):
    device_id = signed.mediator.device_id
    entry = push_entry(signed, "s-2")
    (manifest,) = signed.store.db.execute(
        "SELECT manifest FROM batches WHERE batch_id = 's-2'"
    ).fetchone()
    changed = manifest[:-1] + bytes([manifest[-1] ^ 1])
    sql(signed, "UPDATE batches SET manifest = ? WHERE batch_id = 's-2'", changed)
    (seq, change_id) = signed.store.db.execute(
        "SELECT seq, change_id FROM changes WHERE batch_id = 's-2'"
    ).fetchone()
    assert problems(signed) == [
        f"batch s-2 of {device_id}: the device's signature does not verify over the stored"
        " manifest",
        f"batch s-2 of {device_id}: the stored manifest differs from the one audited in"
        f" entry {entry.seq}",
        f"change {change_id} (seq {seq}) of {device_id}: its bytes are not in the manifest of"
        " batch s-2",
    ]


def test_a_dropped_batch_is_named_with_the_changes_it_attributed(signed):
    device_id = signed.mediator.device_id
    entry = push_entry(signed, "s-2")
    sql(signed, "DELETE FROM batches WHERE batch_id = 's-2'")
    (seq, change_id) = signed.store.db.execute(
        "SELECT seq, change_id FROM changes WHERE batch_id = 's-2'"
    ).fetchone()
    assert problems(signed) == [
        f"entry {entry.seq} (push): batch s-2 of {device_id} is not stored",
        f"change {change_id} (seq {seq}) of {device_id}: its batch s-2 is not stored",
    ]


@pytest.mark.parametrize("table", ["changes", "quarantine"])
def test_a_change_deleted_from_the_store_is_named_with_its_batch(signed, table):
    """Someone with the file and no key rolls a record back: its later change goes."""
    phone = signed.mediator
    if table == "quarantine":
        forged = {**attested(phone, "p-1"), "signature": base64.b64encode(bytes(64)).decode()}
        (result,) = sign(phone, forged, batch_id="s-3")["results"]
        assert result["status"] == "rejected"
    else:
        phone.push([phone.change("case", "k-1", {"summary": "Met both"})], batch_id="s-3")
    entry = push_entry(signed, "s-3")
    assert problems(signed) == []
    sql(signed, f"DELETE FROM {table} WHERE batch_id = 's-3'")
    assert problems(signed) == [
        f"batch s-3 of {phone.device_id}: 0 of its changes are stored, 1 when it was applied"
        f" (entry {entry.seq})"
    ]


def test_quarantined_changes_are_held_to_their_batch_too(signed):
    phone = signed.mediator
    forged = {**attested(phone, "p-1"), "signature": base64.b64encode(bytes(64)).decode()}
    (result,) = sign(phone, forged, batch_id="q-1")["results"]
    assert result["status"] == "rejected"
    assert verify_store(signed.store, signed.keys).changes == 5
    assert problems(signed) == []
    (manifest,) = signed.store.db.execute(
        "SELECT manifest FROM batches WHERE batch_id = 'q-1'"
    ).fetchone()
    other = manifest[:-32] + signing.digest(b"another change")
    sql(signed, "UPDATE batches SET manifest = ? WHERE batch_id = 'q-1'", other)
    found = problems(signed)
    assert (
        f"quarantined change {result['change_id']} of {phone.device_id}: its bytes are not in"
        " the manifest of batch q-1"
    ) in found


def test_an_act_logged_twice_is_named(signed):
    """Appending to the chain needs no key; logging a batch a second time is still caught."""
    db = signed.store.db
    first = push_entry(signed, "s-1")
    copy = audit.append(db, signed.wall.ms, first.actor, "push", first.subject, first.detail)
    assert problems(signed) == [
        f"entry {copy.seq} (push): logs batch/s-1 again (first in entry {first.seq})"
    ]


def test_a_changed_agreement_signature_is_named(signed):
    """Someone holding the keys re-seals the agreement with one signature's bytes changed."""
    store, key = signed.store, ("agreement", "a-1")
    state = store.states([key])[key]
    entries = state.logs["signatures"]
    entry_id, write = next((i, w) for i, w in entries.items() if w.value["signer"] == "p-2")
    forged = base64.b64encode(bytes(64)).decode()
    entries[entry_id] = msgspec.structs.replace(write, value={**write.value, "signature": forged})
    plain = msgspec.msgpack.encode(state)
    sealed = store.seal_value("records", key, "", plain)
    sql(signed, "UPDATE records SET state = ? WHERE record_id = 'a-1'", sealed)
    device_id = signed.mediator.device_id
    assert problems(signed) == [
        f"agreement a-1: the signature of p-2 (device {device_id}): does not verify with the"
        " device's key",
        "agreement a-1: receipt: the receipt seals another set of signatures",
    ]


def test_batches_stored_before_batches_were_audited_get_their_entries(tmp_path, monkeypatch):
    earlier = [m for m in migrations.MIGRATIONS if m[0] != "0012_audit_checkpoints"]
    monkeypatch.setattr(migrations, "MIGRATIONS", earlier)
    old = make_store(tmp_path / "old.db")
    manifest = signing.batch_message("dev-1", "b-1", [b"a change", b"another"])
    old.db.execute(
        "INSERT INTO batches (device_id, batch_id, manifest, signature, received_at_ms)"
        " VALUES ('dev-1', 'b-1', ?, ?, 1000)",
        [manifest, bytes(64)],
    )
    old.close()
    monkeypatch.undo()

    store = make_store(tmp_path / "old.db")
    assert store.migrations_applied == ["0012_audit_checkpoints"]
    (entry,) = audit.entries(store.db)
    assert (entry.actor, entry.action, entry.subject) == ("device:dev-1", "push", "batch/b-1")
    assert entry.detail["manifest_sha256"] == signing.digest(manifest).hex()
    assert entry.detail["changes"] == 2
    assert (entry.detail["backfilled"], entry.detail["received_at_ms"]) == (True, 1000)
    assert audit.verify(store.db) == []
    store.close()


def test_the_checkpoint_message_matches_the_protocol_vector():
    block = re.search(r"```text vector:audit-checkpoint\n(.*?)```", PROTOCOL, re.S)
    assert block, "vector audit-checkpoint missing from PROTOCOL.md"
    vector = dict(line.split("=", 1) for line in block.group(1).strip().splitlines())
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["office_key_seed"]))
    message = audit.checkpoint_message(
        vector["office_id"], int(vector["seq"]), bytes.fromhex(vector["hash"]), int(vector["at_ms"])
    )
    assert message.hex() == vector["message_hex"]
    assert base64.b64encode(key.sign(message)).decode() == vector["signature_b64"]


def test_the_command_line_verifies_checkpoints_and_fails_on_a_break(
    signed, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)
    data = ["--data", str(tmp_path), "audit"]
    assert main([*data, "checkpoint"]) == 0
    head = audit.entries(signed.store.db)[-1]
    assert f"Checkpoint at entry {head.seq}: hash {head.hash.hex()}" in capsys.readouterr().out
    assert main([*data, "verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK audit log: {head.seq} entries, chain intact")
    assert "sealed values open; 0 erased values stay shut" in out

    sql(signed, "UPDATE batches SET signature = zeroblob(64) WHERE batch_id = 'b-1'")
    assert main([*data, "verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL batch b-1 of ")
    assert out[-1] == "lianxin: 2 problems found"


def damage_keys(office, record_type):
    """A bad sector in the key store, or keys wrapped under a master the key file lacks."""
    vault = sqlite3.connect(office.store.vault.path)
    with vault:
        vault.execute(
            "UPDATE data_keys SET wrapped = randomblob(60) WHERE record_type = ?", [record_type]
        )
    vault.close()


def failed_verify(folder, capsys):
    """The FAIL lines of `lianxin audit verify`, which must exit 1."""
    assert main(["--data", str(folder), "audit", "verify"]) == 1
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]


def test_a_damaged_data_key_is_named_not_a_crash(signed):
    damage_keys(signed, "case")
    found = problems(signed)
    assert found and all(problem.startswith("case/k-1: ") for problem in found), found


def test_the_command_line_opens_every_sealed_value(signed, tmp_path, capsys, monkeypatch):
    # The user names are in no signed batch: only opening them shows their keys are gone.
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)
    damage_keys(signed, "user")
    failed = failed_verify(tmp_path, capsys)
    assert failed and all(line.startswith("FAIL user/u-") for line in failed), failed


def test_one_damaged_key_is_named_once_and_hides_nothing_else(
    signed, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("LIANXIN_PASSPHRASE", PASSPHRASE)
    sql(signed, "UPDATE records SET state = randomblob(80) WHERE record_type = 'agreement'")
    signed.store.db.conn.commit()
    damage_keys(signed, "case")
    failed = failed_verify(tmp_path, capsys)
    # Read in the same chunk as the case, the agreement was once skipped with it.
    assert "FAIL records agreement/a-1: does not open under its data key" in failed
    assert sum(line.startswith("FAIL case/k-1: ") for line in failed) == 1, failed
