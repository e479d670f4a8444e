"""Informants' pseudonyms: stable, keyed, and reversible only by a supervisor, on the record.

An informant's warnings carry `informant = pseudonym(key, user_id)` instead of
who they are; mediators see only that. The pseudonym key lives in the office
key file, so nobody without it can link a pseudonym to a user by hashing
user ids. `reidentify` finds the user behind a pseudonym for a supervisor
whose org units cover the informant, and writes an audit entry every time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from server import audit
from server.storage.directory import Directory, User
from sync.access import within
from sync.errors import Forbidden

PREFIX = "inf-"


def pseudonym(key: bytes, user_id: str) -> str:
    digest = hmac.new(key, f"informant\x00{user_id}".encode(), hashlib.sha256).digest()
    return PREFIX + base64.b32encode(digest[:10]).decode().lower()


def reidentify(
    directory: Directory, key: bytes, name: str, supervisor: User, reason: str, now_ms: int
) -> User | None:
    """The informant behind pseudonym `name`, for `supervisor`, audited; None if nobody has it.

    Raises `Forbidden` unless `supervisor` is a supervisor still at the office whose
    org units cover the informant's; the refusal is audited too.
    """
    with directory.store.transaction():
        found = next(
            (
                user
                for user in directory.users(role="informant")
                if hmac.compare_digest(pseudonym(key, user.user_id).encode(), name.encode())
            ),
            None,
        )
        allowed = (
            supervisor.role == "supervisor"
            and supervisor.disabled_at_ms is None
            and (found is None or all(within(u, supervisor.org_units) for u in found.org_units))
        )
        audit.append(
            directory.db,
            now_ms,
            f"user:{supervisor.user_id}",
            "reidentify" if allowed else "reidentify_refused",
            f"informant/{name}",
            {"reason": reason, "found": found is not None},
        )
    if not allowed:
        raise Forbidden(f"{supervisor.user_id} may not re-identify informants of these units")
    return found
