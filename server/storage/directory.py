"""The office's directory: org units, users and roles, enrolment codes, devices, nonces."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

from server.storage import due
from server.storage.sqlite import SqliteStore
from sync.errors import EnrollmentRefused, Replayed

Role = Literal["mediator", "informant", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("mediator", "informant", "supervisor", "admin")
# Enrolment codes are typed by hand on a phone: short, unambiguous letters.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 12
USER_COLUMNS = "user_id, name, role, org_units, disabled_at_ms"  # what `_user` takes


class User(NamedTuple):
    user_id: str
    name: str
    role: Role
    org_units: list[str]
    disabled_at_ms: int | None = None  # set when they left the office (`Directory.disable`)


class Device(NamedTuple):
    device_id: str
    user: User
    label: str
    signing_key: bytes
    kem_key: bytes
    revoked_at_ms: int | None


def _stored_within(unit: str) -> tuple[str, list[object]]:
    """The condition (on `records AS r`) and its parameters for a stored record in org unit
    `unit` or beneath it: a prefix test by path segment (LIKE would ignore case and
    wildcards). An erased record keeps its row, emptied: there is nothing of it to see."""
    return (
        "length(r.state) > 0 AND (r.org_unit = ? OR substr(r.org_unit, 1, ?) = ?)",
        [unit, len(unit) + 1, unit + "/"],
    )


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


class Directory:
    """Who is who, kept in the store's database.

    Every write goes through the store's writer gate; reads see what is committed
    (`SqliteStore.snapshot`), or, inside the gate, what the writer wrote so far.
    """

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.db = store.db

    def _add_org_unit(self, path: str) -> None:
        """Add `city/district/street/community` (1–4 parts) and every parent."""
        parts = [p.strip() for p in path.split("/")]
        if not 1 <= len(parts) <= 4 or not all(parts):
            raise ValueError(
                f"org unit path must be city[/district[/street[/community]]]: {path!r}"
            )
        for depth in range(1, len(parts) + 1):
            self.db.execute(
                "INSERT OR IGNORE INTO org_units (path, parent) VALUES (?, ?)",
                ["/".join(parts[:depth]), "/".join(parts[: depth - 1]) or None],
            )

    def add_user(self, name: str, role: Role, org_units: list[str], now_ms: int) -> User:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        user = User(f"u-{uuid.uuid4().hex[:12]}", name, role, org_units)
        with self.store.transaction():
            for unit in org_units:
                self._add_org_unit(unit)
            self.db.execute(
                "INSERT INTO users (user_id, name, role, org_units, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    user.user_id,
                    self._seal_name(user.user_id, name),
                    role,
                    json.dumps(org_units),
                    now_ms,
                ],
            )
            if role == "supervisor":
                self._grant_org_units(user.user_id, org_units)
        return user

    def _grant_org_units(self, user_id: str, org_units: list[str]) -> None:
        """Let a supervisor see every record already in their org units, and what the
        cases there link, from now on: what `sync.access.readers` gives one at a push."""
        now = self.store.last_seq()
        for unit in org_units:
            inside, where = _stored_within(unit)
            self.db.execute(
                "INSERT OR IGNORE INTO access (user_id, record_type, record_id, since_seq)"
                f" SELECT ?, r.record_type, r.record_id, ? FROM records AS r WHERE {inside}",
                [user_id, now, *where],
            )
            # A warning located elsewhere, or a party, that a case here links.
            self.db.execute(
                "INSERT OR IGNORE INTO access (user_id, record_type, record_id, since_seq)"
                " SELECT DISTINCT ?, l.record_type, l.record_id, ?"
                " FROM records AS r JOIN links AS l ON l.case_id = r.record_id"
                " JOIN records AS t ON t.record_type = l.record_type"
                " AND t.record_id = l.record_id AND length(t.state) > 0"
                f" WHERE r.record_type = 'case' AND {inside}",
                [user_id, now, *where],
            )

    def _seal_name(self, user_id: str, name: str) -> bytes:
        # Informants' names above all must not be read off a copied database.
        return self.store.seal_value("users", ("user", user_id), "name", name.encode())

    def _user(
        self, user_id: str, name: bytes, role: Role, org_units: str, disabled_at_ms: int | None
    ) -> User:
        opened = self.store.open_value("users", ("user", user_id), "name", name)
        name_text = opened.decode() if opened else ""
        return User(user_id, name_text, role, json.loads(org_units), disabled_at_ms)

    def user(self, user_id: str) -> User | None:
        with self.store.snapshot() as db:
            row = db.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id = ?",
                [user_id],
            ).fetchone()
        return self._user(*row) if row else None

    def names(self, user_ids: Iterable[str]) -> dict[str, str]:
        """The display name of each of these users that exists, by user id."""
        ids = sorted(set(user_ids))
        with self.store.snapshot() as db:
            rows = db.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
        return {row[0]: self._user(*row).name for row in rows}

    def users(self, role: Role | None = None) -> list[User]:
        """Every user (of `role`), in the order they were added."""
        with self.store.snapshot() as db:
            rows = db.execute(
                f"SELECT {USER_COLUMNS} FROM users"
                " WHERE ? IS NULL OR role = ? ORDER BY created_at_ms, user_id",
                [role, role],
            ).fetchall()
        return [self._user(*row) for row in rows]

    def issue_code(self, user_id: str, now_ms: int, ttl_ms: int) -> str:
        """A one-time enrolment code for `user_id`, valid for `ttl_ms`; only its hash is kept."""
        user = self.user(user_id)
        if user is None:
            raise ValueError(f"no user {user_id}")
        if user.disabled_at_ms is not None:
            raise ValueError(f"user {user_id} is disabled")
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        with self.store.transaction():
            self.db.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, role, expires_at_ms)"
                " VALUES (?, ?, ?, ?)",
                [_code_hash(code), user_id, user.role, now_ms + ttl_ms],
            )
        return code

    def enroll(
        self, code: str, signing_key: bytes, kem_key: bytes, label: str, now_ms: int
    ) -> tuple[Device, bool]:
        """Spend `code` on a new device holding these public keys; the device, and
        whether it is new.

        Enrolling again with the same code and the same keys (a retry after a
        lost answer) returns the same device; anything else is refused.
        """
        device_id = f"dev-{uuid.uuid4().hex[:16]}"
        with self.store.transaction():
            # Spending the code is one conditional update, so a code is used at most once.
            spent = self.db.execute(
                "UPDATE enrollment_codes SET used_at_ms = ?, device_id = ?"
                " WHERE code_hash = ? AND used_at_ms IS NULL AND expires_at_ms > ?"
                # One begun before its user was disabled may get here after: refused.
                " AND user_id IN (SELECT user_id FROM users WHERE disabled_at_ms IS NULL)"
                " RETURNING user_id, role",
                [now_ms, device_id, _code_hash(code), now_ms],
            ).fetchone()
            if spent is None:
                # A retry whose first answer was lost: the same keys get the same device.
                again = self.db.execute(
                    "SELECT d.device_id FROM enrollment_codes e JOIN devices d USING (device_id)"
                    " WHERE e.code_hash = ? AND d.signing_key = ? AND d.kem_key = ?",
                    [_code_hash(code), signing_key, kem_key],
                ).fetchone()
                if again is None:
                    raise EnrollmentRefused("the enrolment code is unknown, used or expired")
                device_id = again[0]
            else:
                self.db.execute(
                    "INSERT INTO devices (device_id, user_id, role, label, signing_key, kem_key,"
                    " enrolled_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [device_id, spent[0], spent[1], label, signing_key, kem_key, now_ms],
                )
        device = self.device(device_id)
        assert device is not None
        return device, spent is not None

    def device(self, device_id: str) -> Device | None:
        with self.store.snapshot() as db:
            row = db.execute(
                "SELECT d.device_id, d.label, d.signing_key, d.kem_key, d.revoked_at_ms,"
                " u.user_id, u.name, d.role, u.org_units, u.disabled_at_ms"
                " FROM devices d JOIN users u USING (user_id) WHERE d.device_id = ?",
                [device_id],
            ).fetchone()
        if row is None:
            return None
        user = self._user(*row[5:])
        return Device(row[0], user, row[1], row[2], row[3], row[4])

    def revoke(self, device_id: str, now_ms: int) -> bool:
        """Revoke a device at once; False if it does not exist or was already revoked."""
        with self.store.transaction():
            cursor = self.db.execute(
                "UPDATE devices SET revoked_at_ms = ?"
                " WHERE device_id = ? AND revoked_at_ms IS NULL",
                [now_ms, device_id],
            )
        return cursor.rowcount == 1

    def disable(self, user_id: str, now_ms: int) -> list[str] | None:
        """Disable a user who left the office, at once; the devices it revoked.

        Their console sessions end and they cannot sign in, every device of theirs
        is revoked and their unused enrolment codes expire. What they did before
        stays valid and attributed. None if there is no such user or they were
        disabled already.
        """
        with self.store.transaction():
            disabled = self.db.execute(
                "UPDATE users SET disabled_at_ms = ? WHERE user_id = ? AND disabled_at_ms IS NULL",
                [now_ms, user_id],
            )
            if disabled.rowcount != 1:
                return None
            return self._signed_out(user_id, now_ms)

    def _signed_out(self, user_id: str, now_ms: int) -> list[str]:
        """End a user's console sessions, expire their unused codes and revoke their
        devices; the devices it revoked."""
        self.db.execute("DELETE FROM sessions WHERE user_id = ?", [user_id])
        self.db.execute(
            "UPDATE enrollment_codes SET expires_at_ms = ?"
            " WHERE user_id = ? AND used_at_ms IS NULL AND expires_at_ms > ?",
            [now_ms, user_id, now_ms],
        )
        revoked = self.db.execute(
            "UPDATE devices SET revoked_at_ms = ? WHERE user_id = ? AND revoked_at_ms IS NULL"
            " RETURNING device_id",
            [now_ms, user_id],
        ).fetchall()
        return sorted(device_id for (device_id,) in revoked)

    def enable(self, user_id: str) -> bool:
        """Undo `disable`: they may sign in again with their password, and be issued
        enrolment codes; their revoked devices stay revoked. False if not disabled."""
        with self.store.transaction():
            cursor = self.db.execute(
                "UPDATE users SET disabled_at_ms = NULL"
                " WHERE user_id = ? AND disabled_at_ms IS NOT NULL",
                [user_id],
            )
        return cursor.rowcount == 1

    def move(
        self,
        user_id: str,
        org_units: list[str],
        on_moved: Callable[[list[str]], object] | None = None,
    ) -> list[str] | None:
        """Give a user other org units; the ones they had, or None if there is no such user.
        `on_moved(the units they had)` runs in the transaction that gives them (an audit).

        A mediator may then be assigned cases of the new units only (those assigned
        stay); a supervisor sees what the new units hold, and their phones get
        evictions for what only the old ones held. Who may read each record of the
        units is worked out again a chunk to a transaction (`due.redo_readers`), so a
        city's records do not hold the writer gate for long; stopped half way, the
        rest is done at the server's next start.
        """
        with self.store.transaction():  # the units it had read under the gate, too
            user = self.user(user_id)
            if user is None:
                return None
            for unit in org_units:
                self._add_org_unit(unit)
            self.db.execute(
                "UPDATE users SET org_units = ? WHERE user_id = ?", [json.dumps(org_units), user_id]
            )
            if on_moved is not None:
                on_moved(user.org_units)
            if user.role == "supervisor":
                self._readers_due_within({*user.org_units, *org_units})
        due.redo_readers(self.store)
        return user.org_units

    def change_role(
        self,
        user_id: str,
        role: Role,
        now_ms: int,
        on_changed: Callable[[Role, list[str]], object] | None = None,
    ) -> tuple[Role, list[str]] | None:
        """Give a user another role; their old role and the devices it revoked, or None if
        there is no such user still enabled. `ValueError` for an unknown or the same role.

        A device acts with the role it enrolled with, so every device of theirs is
        revoked and their unused codes expire: they enrol again for the new role. Their
        console sessions end. Who may read what they could read, and (for a supervisor)
        what their units hold, or (for a mediator) the cases naming them, is worked out
        again as after a move. `on_changed(old role, revoked)` runs in the transaction
        that changes it (an audit).
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        with self.store.transaction():
            user = self.user(user_id)
            if user is None or user.disabled_at_ms is not None:
                return None
            if user.role == role:
                raise ValueError(f"{user_id} is a {role} already")
            self.db.execute("UPDATE users SET role = ? WHERE user_id = ?", [role, user_id])
            revoked = self._signed_out(user_id, now_ms)
            if on_changed is not None:
                on_changed(user.role, revoked)
            self._readers_due("record_type, record_id FROM access WHERE user_id = ?", [user_id])
            self._readers_due(
                "'case', case_id FROM case_index, json_each(mediators) WHERE json_each.value = ?",
                [user_id],
            )
            if role == "supervisor":
                self._readers_due_within(user.org_units)
        due.redo_readers(self.store)
        return user.role, revoked

    def _readers_due(self, selected: str, parameters: list[object]) -> None:
        """List the records `SELECT {selected}` names for `due.redo_readers`."""
        self.db.execute(
            "INSERT OR IGNORE INTO due (work, record_type, record_id)"
            f" SELECT 'readers', {selected}",
            parameters,
        )

    def _readers_due_within(self, units: Iterable[str]) -> None:
        for unit in units:
            inside, where = _stored_within(unit)
            self._readers_due(f"r.record_type, r.record_id FROM records AS r WHERE {inside}", where)

    def spend_nonce(self, device_id: str, nonce: str, now_ms: int, window_ms: int) -> None:
        """Record a request nonce; `Replayed` if this device used it within the window."""
        with self.store.transaction():
            self.db.execute("DELETE FROM nonces WHERE at_ms < ?", [now_ms - 2 * window_ms])
            inserted = self.db.execute(
                "INSERT OR IGNORE INTO nonces (device_id, nonce, at_ms) VALUES (?, ?, ?)",
                [device_id, nonce, now_ms],
            )
            self.db.execute(
                "UPDATE devices SET last_seen_ms = ? WHERE device_id = ?", [now_ms, device_id]
            )
        if inserted.rowcount != 1:
            raise Replayed("this nonce was already used")
