"""The console's devices and users page (admins only): who is enrolled, codes, revocation."""

from __future__ import annotations

import msgspec


class UserRow(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    name: str
    role: str
    org_units: list[str]
    devices: int  # enrolled and not revoked
    codes: int  # enrolment codes issued, used or not
    disabled_at_ms: int | None  # when they left the office; None while they work here


class CodeRow(msgspec.Struct, frozen=True, kw_only=True):
    """An enrolment code issued (the code itself is never kept, only its hash)."""

    user_id: str
    user_name: str
    role: str
    expires_at_ms: int
    used_at_ms: int | None
    device_id: str | None  # the device it enrolled
    state: str  # unused / used / expired


class DeviceRow(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    user_id: str
    user_name: str
    role: str
    label: str  # what the device called itself at enrolment
    enrolled_at_ms: int
    last_seen_ms: int | None  # its last signed request (a sync): None if never
    revoked_at_ms: int | None


class AdminPage(msgspec.Struct, frozen=True, kw_only=True):
    users: list[UserRow]
    users_total: int
    codes: list[CodeRow]  # the latest issued
    devices: list[DeviceRow]  # active first, most recently seen first
    devices_total: int
    offset: int  # of both lists
    limit: int
    now_ms: int


class CodeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user_id: str


class IssuedCode(msgspec.Struct, frozen=True, kw_only=True):
    """A new one-time enrolment code: shown this once, never stored in clear."""

    user_id: str
    code: str
    expires_at_ms: int


class RevokeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


class Revoked(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    revoked_at_ms: int


class DisableRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


class Disabled(msgspec.Struct, frozen=True, kw_only=True):
    """A user who left the office: signed out, refused sign-in, every device revoked."""

    user_id: str
    disabled_at_ms: int
    revoked_devices: list[str]


class MoveRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org_units: list[str] = []
    reason: str = ""


class Moved(msgspec.Struct, frozen=True, kw_only=True):
    """A user given other org units: for a supervisor, what they may read follows."""

    user_id: str
    org_units_before: list[str]
    org_units: list[str]
