"""Changes the office makes at a supervisor's hand: settling, triaging, assigning.

Each is an ordinary change, merged like any device's, so it syncs to every
device that holds the record. It is authored by the pseudo-device
`console:<user id>` with the record's whole version vector as its causal
context (the supervisor saw everything the office holds), so it supersedes
every value it replaces, concurrent siblings included. Every action is also
written to the audit log with the supervisor's reason.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from schemas.changes import Change, ChangeResult, Op
from server import audit
from server.console.web import _
from server.service import CONSOLE_DEVICES, SyncService
from server.storage.directory import User
from sync.errors import InvalidAction, NotSignedIn


def console_device(user: User) -> str:
    return f"{CONSOLE_DEVICES}{user.user_id}"


def logged(
    service: SyncService,
    user: User,
    action: str,
    subject: str,
    detail: Any = None,
    now_ms: int | None = None,
) -> None:
    """Audit `user`'s console write inside its transaction.

    Refused (and so rolled back) if `user` was disabled, or their role or org units
    changed, since their session was read: by a write that committed first, such as an
    admin disabling them. Two admins disabling each other at once leave one.
    """
    if service.directory.user(user.user_id) != user:
        raise NotSignedIn(_("the session has expired; sign in again"))
    at_ms = service.wall_ms() if now_ms is None else now_ms
    audit.append(service.store.db, at_ms, f"user:{user.user_id}", action, subject, detail)


def office_change(
    service: SyncService,
    user: User,
    record_type: str,
    record_id: str,
    action: str,
    reason: str,
    set: dict[str, Any] | None = None,
    ops: list[Op] | None = None,
    typed: bool = False,
) -> ChangeResult:
    """Apply one change for `user` and audit it as `action`; `InvalidAction` if refused.

    `typed`: the change holds a value the user typed (`SyncService.act`)."""
    if not reason.strip():
        raise InvalidAction(_("a reason is required"))
    try:  # a typed value no change can carry: an integer beyond 64 bits
        msgspec.msgpack.encode(set)
    except (OverflowError, msgspec.EncodeError):
        raise InvalidAction(_("this value is too large to store")) from None
    key = (record_type, record_id)
    with service.store.transaction():
        # Read inside the transaction: a push landing in between is seen, and superseded
        # only knowingly.
        state = service.store.states([key]).get(key)
        change = Change(
            change_id=f"{console_device(user)}:{uuid.uuid4().hex}",
            record_type=record_type,
            record_id=record_id,
            device_id=console_device(user),
            hlc=service.clock.now(),
            seen=dict(state.vv) if state else {},
            set=set or {},
            ops=ops or [],
        )
        (result,) = service.act(user, [change], typed)
        if result.status == "rejected":
            raise InvalidAction(f"{result.reason}: {result.detail}")
        logged(
            service,
            user,
            action,
            f"{record_type}/{record_id}",
            {"reason": reason, "change_id": change.change_id, "fields": sorted(change.set)},
        )
    return result
