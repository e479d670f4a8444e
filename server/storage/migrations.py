"""Named schema migrations, applied in order, each once, each in its own transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils


def _initial(db: sqlite_utils.Database) -> None:
    db["records"].create(
        {"record_type": str, "record_id": str, "seq": int, "deleted": int, "state": bytes},
        pk=("record_type", "record_id"),
        not_null={"seq", "deleted", "state"},
    )
    db["changes"].create(
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
    db["changes"].create_index(["change_id"], unique=True)
    db["changes"].create_index(["record_type", "record_id", "seq"])
    db["quarantine"].create(
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
    db["quarantine"].create_index(["change_id"], unique=True)
    db["conflicts"].create(
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


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_initial", _initial),
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
        with db.conn:
            step(db)
            db.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                [name, datetime.now(UTC).isoformat()],
            )
        applied.append(name)
    return applied
