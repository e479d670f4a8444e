"""Named schema migrations, applied in order, each once, each in its own transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

from server import audit
from server.storage import repeats


def _initial(db: sqlite_utils.Database) -> None:
    db.table("records").create(
        {"record_type": str, "record_id": str, "seq": int, "deleted": int, "state": bytes},
        pk=("record_type", "record_id"),
        not_null={"seq", "deleted", "state"},
    )
    db.table("changes").create(
        {
            "seq": int,
            "change_id": str,
            "record_type": str,
            "record_id": str,
            "device_id": str,
            "hlc": int,
            "status": str,
            "result": bytes,
            "raw": bytes,
        },
        pk="seq",
        not_null={"change_id", "record_type", "record_id", "device_id", "hlc", "result", "raw"},
    )
    # The unique change id is what makes every retry idempotent.
    db.table("changes").create_index(["change_id"], unique=True)
    db.table("changes").create_index(["record_type", "record_id", "seq"])
    db.table("quarantine").create(
        {
            "id": int,
            "change_id": str,
            "record_type": str,
            "record_id": str,
            "device_id": str,
            "reason": str,
            "detail": str,
            "result": bytes,
            "raw": bytes,
        },
        pk="id",
        not_null={"change_id", "reason", "result", "raw"},
    )
    db.table("quarantine").create_index(["change_id"], unique=True)
    db.table("conflicts").create(
        {
            "id": int,
            "record_type": str,
            "record_id": str,
            "field": str,
            "kind": str,
            "conflict": bytes,
            "opened_seq": int,
            "updated_seq": int,
            "settled_seq": int,
        },
        pk="id",
        not_null={"record_type", "record_id", "field", "conflict", "opened_seq", "updated_seq"},
    )
    db.execute(
        "CREATE UNIQUE INDEX conflicts_open ON conflicts (record_type, record_id, field)"
        " WHERE settled_seq IS NULL"
    )


def _directory(db: sqlite_utils.Database) -> None:
    """Org units, people, enrolment codes, devices, request nonces and push batches."""
    db.table("org_units").create({"path": str, "parent": str}, pk="path")
    db.table("users").create(
        {"user_id": str, "name": str, "role": str, "org_units": str, "created_at_ms": int},
        pk="user_id",
        not_null={"name", "role", "org_units"},
    )
    db.table("enrollment_codes").create(
        {
            "code_hash": str,
            "user_id": str,
            "role": str,
            "expires_at_ms": int,
            "used_at_ms": int,
            "device_id": str,
        },
        pk="code_hash",
        not_null={"user_id", "role", "expires_at_ms"},
        foreign_keys=[("user_id", "users", "user_id")],
    )
    db.table("devices").create(
        {
            "device_id": str,
            "user_id": str,
            "role": str,
            "label": str,
            "signing_key": bytes,
            "kem_key": bytes,
            "enrolled_at_ms": int,
            "revoked_at_ms": int,
        },
        pk="device_id",
        not_null={"user_id", "role", "signing_key", "kem_key", "enrolled_at_ms"},
        foreign_keys=[("user_id", "users", "user_id")],
    )
    db.table("nonces").create(
        {"device_id": str, "nonce": str, "at_ms": int},
        pk=("device_id", "nonce"),
        not_null={"at_ms"},
    )
    db.table("nonces").create_index(["at_ms"])
    db.table("batches").create(
        {
            "device_id": str,
            "batch_id": str,
            "manifest": bytes,
            "signature": bytes,
            "received_at_ms": int,
        },
        pk=("device_id", "batch_id"),
        not_null={"manifest", "signature", "received_at_ms"},
    )
    db.table("changes").add_column("batch_id", str)
    # Routing columns kept in clear so pulls can filter (PROTOCOL.md, "Visibility").
    db.table("records").add_column("org_unit", str)
    db.table("records").add_column("created_by", str)
    db.table("access").create(
        {"user_id": str, "record_type": str, "record_id": str, "since_seq": int},
        pk=("user_id", "record_type", "record_id"),
        not_null={"since_seq"},
    )
    db.table("evictions").create(
        {"seq": int, "user_id": str, "record_type": str, "record_id": str, "reason": str},
        pk=("seq", "user_id", "record_type", "record_id"),
    )
    db.table("evictions").create_index(["user_id", "seq"])
    db.table("links").create(
        {"case_id": str, "record_type": str, "record_id": str},
        pk=("case_id", "record_type", "record_id"),
    )
    db.table("links").create_index(["record_type", "record_id"])


def _change_order(db: sqlite_utils.Database) -> None:
    """The stamp a clamped change was ranked by, which pulls must pass on."""
    db.table("changes").add_column("order_stamp", int)


def _access_indexes(db: sqlite_utils.Database) -> None:
    """Read access by record (a record's readers, after every push) and by grant time.

    Without them each push scanned the whole access table once per record it
    touched, and each pull read every record the user may see.
    """
    db.table("access").create_index(["record_type", "record_id"], index_name="access_record")
    db.table("access").create_index(["user_id", "since_seq"], index_name="access_user_since")


def _confidentiality(db: sqlite_utils.Database) -> None:
    """The hash-chained audit log, and keyed blind indexes of people (server.storage.people)."""
    db.table("audit").create(
        {
            "seq": int,
            "at_ms": int,
            "actor": str,
            "action": str,
            "subject": str,
            "detail": str,
            "hash": bytes,
        },
        pk="seq",
        not_null={"at_ms", "actor", "action", "subject", "detail", "hash"},
    )
    db.table("people_index").create(
        {"kind": str, "digest": str, "record_type": str, "record_id": str},
        pk=("kind", "digest", "record_type", "record_id"),
    )
    db.table("people_index").create_index(["record_type", "record_id"])


def _console(db: sqlite_utils.Database) -> None:
    """Sign-in for the supervisor console, and the indexes its lists and statistics read.

    `case_index` and `warning_index` hold only what lists filter and count by
    (status, org unit, category, assignees, dates); titles and texts stay
    sealed in the record states and are opened for the rows shown.
    """
    db.table("users").add_column("password_hash", str)
    db.table("users").add_column("totp_secret", bytes)  # sealed under the user's data key
    db.table("users").add_column("language", str)
    db.table("sessions").create(
        {
            "token_hash": str,
            "user_id": str,
            "csrf": str,
            "created_ms": int,
            "seen_ms": int,
        },
        pk="token_hash",
        not_null={"user_id", "csrf", "created_ms", "seen_ms"},
        foreign_keys=[("user_id", "users", "user_id")],
    )
    db.table("sessions").create_index(["user_id"])
    db.table("login_failures").create({"who": str, "at_ms": int}, not_null={"who", "at_ms"})
    db.table("login_failures").create_index(["who", "at_ms"])
    db.table("case_index").create(
        {
            "case_id": str,
            "status": str,
            "org_unit": str,
            "category": str,
            "mediators": str,  # JSON list of user ids
            "households": int,
            "priority": str,
            "due": str,  # ISO date or NULL
            "received_ms": int,
            "resolved_ms": int,
            "seq": int,
        },
        pk="case_id",
        not_null={"status", "received_ms", "seq"},
    )
    for columns in (["status"], ["org_unit"], ["received_ms"], ["due"]):
        db.table("case_index").create_index(columns)
    db.table("warning_index").create(
        {
            "warning_id": str,
            "status": str,
            "org_unit": str,
            "category": str,
            "severity": str,
            "informant": str,  # the pseudonym
            "case_id": str,
            "received_ms": int,
            "seq": int,
        },
        pk="warning_id",
        not_null={"status", "received_ms", "seq"},
    )
    db.table("warning_index").create_index(["status", "received_ms"])
    db.table("deadlines").create({"category": str, "days": int}, pk="category", not_null={"days"})
    db.table("quarantine").add_column("acknowledged_ms", int)
    db.table("quarantine").add_column("acknowledged_by", str)


def _device_last_seen(db: sqlite_utils.Database) -> None:
    """When each device last made a signed request (the console's device list)."""
    db.table("devices").add_column("last_seen_ms", int)


def _conflicts_quarantine(db: sqlite_utils.Database) -> None:
    """The signed batch each quarantined change came in (the console's quarantine).

    It dates the rejection (`batches.received_at_ms`) and, when a supervisor
    re-applies the change, keeps it attributable to the batch signature.
    Rows quarantined before this migration have none: the console shows no
    time for them, and finds their batch by the change's hash among the
    device's manifests when one is re-applied.
    """
    db.table("quarantine").add_column("batch_id", str)


def _stats(db: sqlite_utils.Database) -> None:
    """What the console's statistics count by: resolution dates, repeats, executed agreements.

    The indexes let the statistics read a half year of a city's cases from
    indexes alone (bench/console.py): the cases resolved in a period with
    what they are grouped by; each party's cases; each case's receipt time.
    `agreement_index` holds each agreement's status and when it was first
    executed (kept in step by `server.storage.index.index_records`), so
    counting executed agreements opens no sealed state. Agreements written
    before this migration enter it at their next write.
    """
    db.table("case_index").create_index(
        ["resolved_ms", "case_id", "received_ms", "category", "org_unit"],
        index_name="case_index_resolved",
    )
    db.table("case_index").create_index(
        ["case_id", "received_ms"], index_name="case_index_received_by_id"
    )
    db.table("links").create_index(
        ["record_type", "record_id", "case_id"], index_name="links_by_record"
    )
    db.table("agreement_index").create(
        {"agreement_id": str, "status": str, "executed_ms": int, "seq": int},
        pk="agreement_id",
        not_null={"status", "seq"},
    )
    db.table("agreement_index").create_index(["executed_ms"], index_name="agreement_index_executed")


def _repeat_flag(db: sqlite_utils.Database) -> None:
    """Each case's repeat-petition flag (`server.storage.repeats`), worked out for every case
    once here and then kept in step by every batch, for the statistics to count."""
    db.table("case_index").add_column("repeat", int, not_null_default=0)
    repeats.refresh(db, None)


def _audit_checkpoints(db: sqlite_utils.Database) -> None:
    """The office's signed checkpoints of the audit chain's head (`server.audit`).

    Push batches are audited from now on; each batch stored before gets its
    entry here, marked `backfilled`, so that every batch has exactly one
    and `lianxin audit verify` can hold each to it.
    """
    db.table("audit_checkpoints").create(
        {"seq": int, "hash": bytes, "at_ms": int, "signature": bytes},
        pk="seq",
        not_null={"hash", "at_ms", "signature"},
    )
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    rows = db.execute(
        "SELECT device_id, batch_id, manifest, signature, received_at_ms FROM batches"
        " ORDER BY received_at_ms, rowid"
    )
    for device_id, batch_id, manifest, signature, received_ms in rows.fetchall():
        backfilled = {"backfilled": True, "received_at_ms": received_ms}
        audit.record_batch(db, now_ms, device_id, batch_id, manifest, signature, backfilled)


def _totp_replay(db: sqlite_utils.Database) -> None:
    """The time step of each user's last accepted authenticator code: a code is spent once
    used, so one read over a shoulder or from a proxy log cannot open a second session."""
    db.table("users").add_column("totp_last_step", int)


def _due(db: sqlite_utils.Database) -> None:
    """Work for the next start (`server.storage.due`): what a changed rule asks of records
    already stored, which only the engine can redo, with their states and the keys.

    Listed now, as `readers`: the cases naming a user who is not a mediator in
    `mediators`. Offices used to let such a user read the case and what it links;
    they no longer count as assigned, but the access they had stayed until the case
    changed again.
    """
    db.execute(
        "CREATE TABLE due (work TEXT NOT NULL, record_type TEXT NOT NULL,"
        " record_id TEXT NOT NULL, PRIMARY KEY (work, record_type, record_id))"
    )
    db.execute(
        "INSERT OR IGNORE INTO due (work, record_type, record_id)"
        " SELECT 'readers', 'case', ci.case_id FROM case_index ci, json_each(ci.mediators) m"
        " LEFT JOIN users u ON u.user_id = m.value WHERE u.role IS NOT 'mediator'"
    )


def _phone_digests(db: sqlite_utils.Database) -> None:
    """A landline written with its trunk 0, or with a country code and no 0, is one number
    now (`people.normal_phone`): every party with a phone digest is indexed again."""
    db.execute(
        "INSERT OR IGNORE INTO due (work, record_type, record_id)"
        " SELECT DISTINCT 'people', record_type, record_id FROM people_index WHERE kind = 'phone'"
    )


def _merge_states(db: sqlite_utils.Database) -> None:
    """The merge keeps more in each state now (a log entry's place in its change, whether
    an edit was made beside a delete, each record's edits): every record's checkpoint is
    merged again from its logged changes (`states`), so old and new records follow one
    rule, as a device merging the log from nothing does."""
    db.execute(
        "INSERT OR IGNORE INTO due (work, record_type, record_id)"
        " SELECT 'states', record_type, record_id FROM records WHERE length(state) > 0"
    )


def _stale_case_readers(db: sqlite_utils.Database) -> None:
    """A party, agreement or warning now takes its readers from the `access` rows of the
    cases linking it (`access.update_access`), so a case's rows must hold no one its own
    rules leave out. 0014 listed the cases an older rule had let a non-mediator read from
    `case_index`, which misses cases stored before that index was filled. Listed now, as
    `readers`: every case readable by someone who is neither its creator, nor a mediator,
    nor a supervisor whose org units hold it."""
    db.execute(
        "INSERT OR IGNORE INTO due (work, record_type, record_id)"
        " SELECT DISTINCT 'readers', 'case', a.record_id FROM access a"
        " JOIN records r ON r.record_type = 'case' AND r.record_id = a.record_id"
        " LEFT JOIN users u ON u.user_id = a.user_id"
        " WHERE a.record_type = 'case' AND a.user_id IS NOT r.created_by"
        " AND (u.role IS NULL OR u.role NOT IN ('mediator', 'supervisor')"
        " OR (u.role = 'supervisor' AND NOT EXISTS (SELECT 1 FROM json_each(u.org_units) o"
        " WHERE r.org_unit = o.value"
        " OR substr(r.org_unit, 1, length(o.value) + 1) = o.value || '/')))"
    )


def _index_rows(db: sqlite_utils.Database) -> None:
    """The console's lists and statistics read `case_index`, `warning_index` and
    `agreement_index`, which 0006 and 0010 made empty, to be filled as records were
    written again: a case untouched since then was in no list and no figure. Listed
    now, as `index`: every stored case, warning and agreement without its row."""
    db.execute(
        "INSERT OR IGNORE INTO due (work, record_type, record_id)"
        " SELECT 'index', r.record_type, r.record_id FROM records r"
        " WHERE length(r.state) > 0 AND CASE r.record_type"
        " WHEN 'case' THEN NOT EXISTS (SELECT 1 FROM case_index WHERE case_id = r.record_id)"
        " WHEN 'warning' THEN NOT EXISTS"
        " (SELECT 1 FROM warning_index WHERE warning_id = r.record_id)"
        " WHEN 'agreement' THEN NOT EXISTS"
        " (SELECT 1 FROM agreement_index WHERE agreement_id = r.record_id)"
        " ELSE 0 END"
    )


def _audit_actions(db: sqlite_utils.Database) -> None:
    """Cursors bind the office's last restore (`audit.last_restore`): found along an
    index, not by reading an audit log of one entry a batch from its end."""
    db.table("audit").create_index(["action", "seq"], if_not_exists=True)


def _disabled_users(db: sqlite_utils.Database) -> None:
    """When a user left the office (`Directory.disable`); NULL while they work here."""
    db.table("users").add_column("disabled_at_ms", int)


def _eviction_held_since(db: sqlite_utils.Database) -> None:
    """Since when the evicted user could read the record (its `access.since_seq`): a grant
    at the eviction's own position, before the log gets there, takes that row back whole
    (a supervisor moved away and back), so their phones are not thought never to have
    held it. NULL in the evictions of older offices."""
    db.table("evictions").add_column("held_since", int)


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_initial", _initial),
    ("0002_directory", _directory),
    ("0003_change_order", _change_order),
    ("0004_access_indexes", _access_indexes),
    ("0005_confidentiality", _confidentiality),
    ("0006_console", _console),
    ("0007_device_last_seen", _device_last_seen),
    ("0008_conflicts_quarantine", _conflicts_quarantine),
    ("0010_stats", _stats),
    ("0011_repeat_flag", _repeat_flag),
    ("0012_audit_checkpoints", _audit_checkpoints),
    ("0013_totp_replay", _totp_replay),
    ("0014_due", _due),
    ("0015_phone_digests", _phone_digests),
    ("0016_merge_states", _merge_states),
    ("0017_stale_case_readers", _stale_case_readers),
    ("0018_index_rows", _index_rows),
    ("0019_audit_actions", _audit_actions),
    ("0020_disabled_users", _disabled_users),
    ("0021_eviction_held_since", _eviction_held_since),
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM migrations").fetchall()}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        # One transaction each (the store's connection commits every statement alone
        # unless told): a crash half way leaves the migration to run again, whole.
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            db.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                [name, datetime.now(UTC).isoformat()],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(name)
    return applied
