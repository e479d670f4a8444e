"""Devices and users, for admins: who is enrolled, enrolment codes, last sync, revocation.

Admins see no case data (every case page refuses them); supervisors do not
see this page. Three writes, each CSRF-checked and audited:

- issue a one-time enrolment code for a user (action `issue_code`): the code
  is shown once, in the answer to the request that made it, and only its
  hash is kept (`Directory.issue_code`), as with `lianxin code`;
- revoke a device (action `revoke`): from that moment every request it
  signs is refused `revoked_device`, and nothing is sealed to it again;
  what it pushed before stays valid and attributed (DESIGN scenario 4);
- disable a user who left the office (action `disable_user`): signed out,
  refused sign-in, every device of theirs revoked as above, their unused
  codes expired (`Directory.disable`). An admin cannot disable themselves, so
  the console always keeps one admin; `lianxin user enable` undoes it.
"""

from __future__ import annotations

import functools

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery

from schemas.console.admin import (
    AdminPage,
    CodeRequest,
    CodeRow,
    DeviceRow,
    Disabled,
    DisableRequest,
    IssuedCode,
    Moved,
    MoveRequest,
    Revoked,
    RevokeRequest,
    UserRow,
)
from server.console.actions import logged
from server.console.web import (
    _,
    back_to,
    documents_body,
    json_body,
    page_offset,
    render,
    service_of,
    signed_call,
    signed_form,
    signed_in,
)
from server.service import SyncService
from server.storage.directory import User
from sync.errors import InvalidAction, UnknownRecord

PAGE = 100
LATEST_CODES = 50
CODE_TTL_MS = 24 * 3600_000  # as `lianxin code` issues them


def admin_page(service: SyncService, offset: int = 0) -> AdminPage:
    """Users, the latest enrolment codes and devices, a page of each list at a time."""
    with service.store.snapshot() as db:
        now = service.wall_ms()
        names: dict[str, str] = {}

        def name_of(user_id: str) -> str:
            if user_id not in names:
                user = service.directory.user(user_id)
                names[user_id] = user.name if user else ""
            return names[user_id]

        (users_total,) = db.execute("SELECT count(*) FROM users").fetchone()
        users = [
            UserRow(
                user_id=user_id,
                name=name_of(user_id),
                role=role,
                org_units=msgspec.json.decode(units),
                devices=devices,
                codes=codes,
                disabled_at_ms=disabled,
            )
            for user_id, role, units, disabled, devices, codes in db.execute(
                "SELECT u.user_id, u.role, u.org_units, u.disabled_at_ms,"
                " (SELECT count(*) FROM devices d WHERE d.user_id = u.user_id"
                " AND d.revoked_at_ms IS NULL),"
                " (SELECT count(*) FROM enrollment_codes e WHERE e.user_id = u.user_id)"
                " FROM users u ORDER BY u.created_at_ms, u.user_id LIMIT ? OFFSET ?",
                [PAGE, offset],
            )
        ]
        codes = [
            CodeRow(
                user_id=user_id,
                user_name=name_of(user_id),
                role=role,
                expires_at_ms=expires,
                used_at_ms=used,
                device_id=device_id,
                state="used" if used is not None else "expired" if expires <= now else "unused",
            )
            for user_id, role, expires, used, device_id in db.execute(
                "SELECT user_id, role, expires_at_ms, used_at_ms, device_id FROM enrollment_codes"
                " ORDER BY expires_at_ms DESC, code_hash LIMIT ?",
                [LATEST_CODES],
            )
        ]
        (devices_total,) = db.execute("SELECT count(*) FROM devices").fetchone()
        devices = [
            DeviceRow(
                device_id=device_id,
                user_id=user_id,
                user_name=name_of(user_id),
                role=role,
                label=label or "",
                enrolled_at_ms=enrolled,
                last_seen_ms=seen,
                revoked_at_ms=revoked,
            )
            for device_id, user_id, role, label, enrolled, seen, revoked in db.execute(
                "SELECT device_id, user_id, role, label, enrolled_at_ms, last_seen_ms,"
                " revoked_at_ms FROM devices ORDER BY revoked_at_ms IS NOT NULL,"
                " coalesce(last_seen_ms, enrolled_at_ms) DESC, device_id LIMIT ? OFFSET ?",
                [PAGE, offset],
            )
        ]
        return AdminPage(
            users=users,
            users_total=users_total,
            codes=codes,
            devices=devices,
            devices_total=devices_total,
            offset=offset,
            limit=PAGE,
            now_ms=now,
        )


def issue_code(service: SyncService, admin: User, user_id: str) -> IssuedCode:
    """A new one-time enrolment code for `user_id`, audited; `UnknownRecord` if no such
    user, `InvalidAction` if they are disabled."""
    user = service.directory.user(user_id)
    if user is None:
        raise UnknownRecord(_("no such user"))
    if user.disabled_at_ms is not None:
        raise InvalidAction(_("this user left the office (disabled)"))
    now = service.wall_ms()
    with service.store.transaction():
        code = service.directory.issue_code(user_id, now, CODE_TTL_MS)
        expires = {"expires_at_ms": now + CODE_TTL_MS}
        logged(service, admin, "issue_code", f"user/{user_id}", expires, now)
    return IssuedCode(user_id=user_id, code=code, expires_at_ms=now + CODE_TTL_MS)


def revoke(service: SyncService, admin: User, device_id: str, reason: str) -> Revoked:
    """Revoke a device at once, audited; `UnknownRecord` if there is no such active device."""
    now = service.wall_ms()
    with service.store.transaction():
        device = service.directory.device(device_id)
        if device is None or not service.directory.revoke(device_id, now):
            raise UnknownRecord(_("no such device, or it is revoked already"))
        detail = {"reason": reason.strip(), "user_id": device.user.user_id}
        logged(service, admin, "revoke", f"device/{device_id}", detail, now)
    return Revoked(device_id=device_id, revoked_at_ms=now)


def disable_user(service: SyncService, admin: User, user_id: str, reason: str) -> Disabled:
    """Disable a user who left the office, audited with the devices it revoked.

    `UnknownRecord` if there is no such user still enabled; `InvalidAction` for
    the admin themselves or without a reason.
    """
    if user_id == admin.user_id:
        raise InvalidAction(_("you cannot disable yourself; ask another admin"))
    if not reason.strip():
        raise InvalidAction(_("a reason is required"))
    now = service.wall_ms()
    with service.store.transaction():
        revoked = service.directory.disable(user_id, now)
        if revoked is None:
            raise UnknownRecord(_("no such user, or they are disabled already"))
        detail = {"reason": reason.strip(), "revoked_devices": revoked}
        logged(service, admin, "disable_user", f"user/{user_id}", detail, now)
    return Disabled(user_id=user_id, disabled_at_ms=now, revoked_devices=revoked)


def move_user(
    service: SyncService, admin: User, user_id: str, org_units: list[str], reason: str
) -> Moved:
    """Give a user other org units, audited: a mediator may be assigned cases there, a
    supervisor reads what they hold (worked out a chunk at a time, `Directory.move`).

    `UnknownRecord` if there is no such user still enabled; `InvalidAction` without a
    reason or an org unit, or for an org unit that is not a path.
    """
    typed = ("/".join(part.strip() for part in unit.split("/")) for unit in org_units)
    units = list(dict.fromkeys(unit for unit in typed if unit))
    if not units:
        raise InvalidAction(_("name at least one org unit"))
    if not reason.strip():
        raise InvalidAction(_("a reason is required"))
    user = service.directory.user(user_id)
    if user is None or user.disabled_at_ms is not None:
        raise UnknownRecord(_("no such user, or they left the office"))

    def audited(before: list[str]) -> None:
        detail = {"reason": reason.strip(), "org_units_before": before, "org_units": units}
        logged(service, admin, "move_user", f"user/{user_id}", detail)

    try:
        before = service.directory.move(user_id, units, audited)
    except ValueError:
        raise InvalidAction(_("an org unit is a path such as Hangzhou/Xihu")) from None
    if before is None:
        raise UnknownRecord(_("no such user, or they left the office"))
    return Moved(user_id=user_id, org_units_before=before, org_units=units)


@get("/console/admin", sync_to_thread=True, include_in_schema=False)
def admin_html(request: Request, offset: FromQuery[int] = 0) -> Response:
    current = signed_in(request, "admin")
    data = admin_page(service_of(request), page_offset(offset))
    return render(request, current, "admin.html", data=data, issued=None)


@get("/api/admin", sync_to_thread=True, summary="Users, enrolment codes and devices (admins)")
def admin_api(request: Request, offset: FromQuery[int] = 0) -> AdminPage:
    signed_in(request, "admin")
    return admin_page(service_of(request), page_offset(offset))


@post("/console/admin/codes", include_in_schema=False)
async def issue_code_form(request: Request) -> Response:
    """Issue a code and show it on the page this once (no redirect: it must not be kept)."""
    current, fields, _form = await signed_form(request, "admin")
    service = service_of(request)
    work = functools.partial(issue_code, service, current.user, fields.get("user_id", "").strip())
    issued = await anyio.to_thread.run_sync(work)
    data = await anyio.to_thread.run_sync(admin_page, service)
    page = functools.partial(render, request, current, "admin.html", data=data, issued=issued)
    return await anyio.to_thread.run_sync(page)


@post(
    "/api/admin/codes",
    status_code=200,
    summary="Issue a one-time enrolment code (X-CSRF-Token)",
    dependencies=documents_body(CodeRequest),
)
async def issue_code_api(request: Request) -> IssuedCode:
    current = await signed_call(request, "admin")
    asked = await json_body(request, CodeRequest, empty=b"{}")
    work = functools.partial(issue_code, service_of(request), current.user, asked.user_id)
    return await anyio.to_thread.run_sync(work)


@post("/console/admin/devices/{device_id:str}/revoke", include_in_schema=False)
async def revoke_form(request: Request, device_id: FromPath[str]) -> Response:
    current, fields, _form = await signed_form(request, "admin")
    work = functools.partial(
        revoke, service_of(request), current.user, device_id, fields.get("reason", "")
    )
    await anyio.to_thread.run_sync(work)
    return back_to("/console/admin")


@post(
    "/api/admin/devices/{device_id:str}/revoke",
    status_code=200,
    summary="Revoke a device at once (X-CSRF-Token)",
    dependencies=documents_body(RevokeRequest),
)
async def revoke_api(request: Request, device_id: FromPath[str]) -> Revoked:
    current = await signed_call(request, "admin")
    asked = await json_body(request, RevokeRequest, empty=b"{}")
    work = functools.partial(revoke, service_of(request), current.user, device_id, asked.reason)
    return await anyio.to_thread.run_sync(work)


@post("/console/admin/users/{user_id:str}/disable", include_in_schema=False)
async def disable_form(request: Request, user_id: FromPath[str]) -> Response:
    current, fields, _form = await signed_form(request, "admin")
    work = functools.partial(
        disable_user, service_of(request), current.user, user_id, fields.get("reason", "")
    )
    await anyio.to_thread.run_sync(work)
    return back_to("/console/admin")


@post(
    "/api/admin/users/{user_id:str}/disable",
    status_code=200,
    summary="Disable a user who left the office, revoking their devices (X-CSRF-Token)",
    dependencies=documents_body(DisableRequest),
)
async def disable_api(request: Request, user_id: FromPath[str]) -> Disabled:
    current = await signed_call(request, "admin")
    asked = await json_body(request, DisableRequest, empty=b"{}")
    work = functools.partial(disable_user, service_of(request), current.user, user_id, asked.reason)
    return await anyio.to_thread.run_sync(work)


@post("/console/admin/users/{user_id:str}/move", include_in_schema=False)
async def move_form(request: Request, user_id: FromPath[str]) -> Response:
    current, fields, _form = await signed_form(request, "admin")
    units = fields.get("org_units", "").split(",")
    work = functools.partial(
        move_user, service_of(request), current.user, user_id, units, fields.get("reason", "")
    )
    await anyio.to_thread.run_sync(work)
    return back_to("/console/admin")


@post(
    "/api/admin/users/{user_id:str}/move",
    status_code=200,
    summary="Give a user other org units (X-CSRF-Token)",
    dependencies=documents_body(MoveRequest),
)
async def move_api(request: Request, user_id: FromPath[str]) -> Moved:
    current = await signed_call(request, "admin")
    asked = await json_body(request, MoveRequest, empty=b"{}")
    work = functools.partial(
        move_user, service_of(request), current.user, user_id, asked.org_units, asked.reason
    )
    return await anyio.to_thread.run_sync(work)


ROUTES = [
    admin_html,
    admin_api,
    issue_code_form,
    issue_code_api,
    revoke_form,
    revoke_api,
    disable_form,
    disable_api,
    move_form,
    move_api,
]
