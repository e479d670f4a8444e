"""Quarantine: the changes the office rejected, for supervisors to acknowledge or re-apply.

Who sees a quarantined change:
- if its record exists, whoever may see the record (the `access` table), as
  everywhere in the console;
- if it does not (the change would have created it), the supervisors whose
  org units hold the location the change sets; when it sets no usable
  location, those over the org units of the device's user (the mediators and
  informants of their area); when that is unknown too, only supervisors of a
  top org unit (a city).
Changes of erased records are never shown: their bytes are gone.

Acknowledging marks a change as dealt with, audited; acknowledged changes
leave the list unless `all` is asked for.

Re-applying takes the change out of quarantine and runs its exact signed
bytes through the engine again (`SyncService.reapply`), authorized by the
rules of a push for its device's user as they stand now, and kept with the
batch it came in, so it stays attributable to its device. It is for after a
supervisor fixed the cause: typically access (the mediator has since been
assigned to the case), or an earlier change of the same device that it built
on was re-applied first. The change keeps its stamp and causal context, so
the merge judges it against what its device had seen when it was made: a
status move that was illegal from the status the device had seen stays
illegal whatever the status is now (the supervisor makes that move by an
office change instead), and once the device has written the record again its
old change is stale (`stale_stamp`). Rejected again, it is back in quarantine
with the new reason, unacknowledged, and the page says so. Either way the act
is audited. A revoked device's changes are not re-applied: the office
refuses that device from its revocation on.
"""

from __future__ import annotations

import datetime
import functools
from typing import Annotated, Any, NamedTuple
from urllib.parse import quote

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromQuery, QueryParameter
from msgspec.structs import asdict

from schemas.changes import Change
from schemas.console.quarantine import (
    Acknowledged,
    AcknowledgeRequest,
    QuarantinedView,
    QuarantineList,
    Reapplied,
    ReapplyRequest,
)
from schemas.records import Location
from server.console import times
from server.console.actions import logged
from server.console.conflicts import Authors, link_of, title_of
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
from sync import signing
from sync.access import location_refused, org_unit, within
from sync.changes import decode_change
from sync.errors import InvalidAction, UnknownRecord
from sync.merge import materialize
from sync.store import RecordKey

PAGE = 50


class Held(NamedTuple):
    """One quarantine row the user may see; its sealed bytes are opened when needed."""

    change_id: str
    key: RecordKey
    device_id: str
    reason: str
    detail: str
    sealed: bytes
    batch_id: str | None
    received_ms: int | None
    acknowledged_ms: int | None
    acknowledged_by: str | None
    present: bool  # the record exists

    def opened(self, service: SyncService) -> tuple[Change, bytes] | None:
        """The change and its exact bytes; None once its record was erased."""
        raw = service.store.open_value("quarantine", self.key, self.change_id, self.sealed)
        return None if raw is None else (decode_change(raw), raw)


def _held(
    service: SyncService,
    user: User,
    include_acknowledged: bool,
    change_id: str | None = None,
) -> list[Held]:
    """The quarantined changes `user` may see, newest first (see the module docstring).

    Only the changes to records that do not exist are opened here, to read
    where they would have been.
    """
    with service.store.snapshot() as db:
        rows = db.execute(
            "SELECT q.change_id, q.record_type, q.record_id, q.device_id, q.reason, q.detail,"
            " q.raw, q.batch_id, b.received_at_ms, q.acknowledged_ms, q.acknowledged_by,"
            " r.record_id IS NOT NULL FROM quarantine q"
            " LEFT JOIN records r ON r.record_type = q.record_type AND r.record_id = q.record_id"
            " LEFT JOIN access a ON a.user_id = :user AND a.record_type = q.record_type"
            " AND a.record_id = q.record_id"
            " LEFT JOIN batches b ON b.device_id = q.device_id AND b.batch_id = q.batch_id"
            " WHERE (:all OR q.acknowledged_ms IS NULL)"
            " AND (:change IS NULL OR q.change_id = :change)"
            # Erasure empties the bytes (and the record's access): nothing left to show.
            " AND (a.user_id IS NOT NULL OR r.record_id IS NULL) AND length(q.raw) > 0"
            " ORDER BY q.id DESC",
            {"user": user.user_id, "all": include_acknowledged, "change": change_id},
        ).fetchall()
    authors = Authors(service)
    held = []
    for found, record_type, record_id, device_id, reason, detail, sealed, *rest in rows:
        batch_id, received, acknowledged_ms, acknowledged_by, present = rest
        row = Held(
            found,
            (record_type, record_id),
            device_id,
            reason,
            detail or "",
            sealed,
            batch_id,
            received,
            acknowledged_ms,
            acknowledged_by,
            bool(present),
        )
        if not present:
            opened = row.opened(service)
            if opened is None or not _may_see_new(user, opened[0], authors):
                continue
        held.append(row)
    return held


def _may_see_new(user: User, change: Change, authors: Authors) -> bool:
    """Whether `user` oversees a rejected change that would have created its record."""
    try:
        location = msgspec.convert(change.set.get("location"), Location | None)
    except msgspec.ValidationError:
        location = None  # the change may have been rejected for this very value
    # A location that names no unit, or that the office refused, places the change nowhere.
    unit = None if location_refused(change) else org_unit(location)
    if unit:
        return within(unit, user.org_units)
    device = authors.device(change.device_id)
    if device is not None and device.user.org_units:
        return any(within(theirs, user.org_units) for theirs in device.user.org_units)
    return any("/" not in mine for mine in user.org_units)


def _one(service: SyncService, user: User, change_id: str) -> Held:
    found = _held(service, user, include_acknowledged=True, change_id=change_id)
    if not found:
        raise UnknownRecord(_("no such quarantined change in your view"))
    return found[0]


def quarantine_list(
    service: SyncService,
    user: User,
    include_acknowledged: bool = False,
    offset: int = 0,
    reapplied: str = "",
    limit: int = PAGE,
) -> QuarantineList:
    """The quarantined changes `user` may see, newest first, `limit` at a time.

    `reapplied` names a change just re-applied, whose outcome the list reports.
    """
    held = _held(service, user, include_acknowledged)
    page = [
        (h, opened)
        for h in held[offset : offset + limit]
        if (opened := h.opened(service)) is not None  # erased since
    ]
    states = service.store.states({h.key for h, _ in page if h.present})
    authors = Authors(service)
    items = []
    for h, (change, _raw) in page:
        state = states.get(h.key)
        items.append(
            QuarantinedView(
                change_id=change.change_id,
                record_type=change.record_type,
                record_id=change.record_id,
                exists=h.present,
                title=title_of(materialize(state)) if state else "",
                link=link_of(service, user.user_id, h.key) if state else None,
                author=authors(change.device_id),
                reason=h.reason,
                detail=h.detail,
                set=_shown(change.set),
                ops=[_shown({"type": op.__struct_config__.tag, **asdict(op)}) for op in change.ops],
                hlc=change.hlc,
                made_ms=change.hlc >> 16,
                received_ms=h.received_ms,
                received=times.minute(h.received_ms, service.settings.zone),
                acknowledged_ms=h.acknowledged_ms,
                acknowledged_by=h.acknowledged_by,
            )
        )
    return QuarantineList(
        items=items,
        total=len(held),
        all=include_acknowledged,
        offset=offset,
        limit=limit,
        reapplied=_outcome(service, user, reapplied) if reapplied else None,
    )


# A refused change may hold anything its device sent: values nested a thousand deep, map
# keys that are not strings, MessagePack extension types. The page, its JSON twin and the
# export show such values, so each is cut down to JSON's types first, never a 500.
SHOWN_DEPTH = 16


def _shown(value: Any, depth: int = 0) -> Any:
    """`value` as the console can show it: JSON's types, string keys, `SHOWN_DEPTH` deep."""
    if depth >= SHOWN_DEPTH:
        return "…"
    match value:
        case None | bool() | int() | float() | str():
            return value
        case dict():
            return {
                key if isinstance(key, str) else f"<{type(key).__name__}>": _shown(item, depth + 1)
                for key, item in value.items()
            }
        case list() | tuple():
            return [_shown(item, depth + 1) for item in value]
        case bytes() | datetime.datetime():
            return msgspec.to_builtins(value)  # base64, ISO 8601
        case _:
            return f"<{type(value).__name__}>"


def _outcome(service: SyncService, user: User, change_id: str) -> Reapplied | None:
    """What became of a re-applied change, read back from the store (if in view)."""
    found = _held(service, user, include_acknowledged=True, change_id=change_id)
    if found:
        return Reapplied(
            change_id=change_id, status="rejected", reason=found[0].reason, detail=found[0].detail
        )
    with service.store.snapshot() as db:
        row = db.execute(
            "SELECT c.seq, c.status FROM changes c JOIN access a ON a.user_id = ?"
            " AND a.record_type = c.record_type AND a.record_id = c.record_id"
            " WHERE c.change_id = ?",
            [user.user_id, change_id],
        ).fetchone()
    return Reapplied(change_id=change_id, status=row[1], seq=row[0]) if row else None


def acknowledge(service: SyncService, user: User, change_id: str) -> Acknowledged:
    """Mark a quarantined change in `user`'s view as dealt with (once; audited).

    Raises `UnknownRecord` if there is no such change in the user's view.
    """
    with service.store.transaction():
        held = _one(service, user, change_id)
        if held.acknowledged_ms is not None and held.acknowledged_by is not None:
            return Acknowledged(
                change_id=change_id,
                acknowledged_ms=held.acknowledged_ms,
                acknowledged_by=held.acknowledged_by,
            )
        now_ms = service.wall_ms()
        service.store.db.execute(
            "UPDATE quarantine SET acknowledged_ms = ?, acknowledged_by = ? WHERE change_id = ?",
            [now_ms, user.user_id, change_id],
        )
        logged(
            service,
            user,
            "quarantine_acknowledge",
            "/".join(held.key),
            {"change_id": change_id, "reason": held.reason},
            now_ms,
        )
    return Acknowledged(change_id=change_id, acknowledged_ms=now_ms, acknowledged_by=user.user_id)


def reapply(service: SyncService, user: User, change_id: str, reason: str) -> Reapplied:
    """Take a change out of quarantine and apply it again as its device (see the docstring).

    Raises `UnknownRecord` if there is no such change in `user`'s view, and
    `InvalidAction` without a reason or when its device is unknown or revoked.
    A change the engine rejects again is quarantined again, and so answered.
    """
    if not reason.strip():
        raise InvalidAction(_("a reason is required: say what was fixed"))
    store = service.store
    with store.transaction():
        held = _one(service, user, change_id)
        opened = held.opened(service)
        if opened is None:
            raise UnknownRecord(_("the record was erased"))
        raw = opened[1]
        device = service.directory.device(held.device_id)
        if device is None:
            raise InvalidAction(_("its device is not enrolled here"))
        if device.revoked_at_ms is not None:
            raise InvalidAction(_("its device was revoked; make the change yourself instead"))
        batch_id = held.batch_id or _batch_of(service, device.device_id, raw)
        # The engine answers a change id it holds, quarantined or logged, as a duplicate.
        store.db.execute("DELETE FROM quarantine WHERE change_id = ?", [change_id])
        result = service.reapply(device, raw, batch_id)
        again = result.status == "rejected"  # back in quarantine, unacknowledged: news
        logged(
            service,
            user,
            "quarantine_reapply",
            "/".join(held.key),
            {
                "change_id": change_id,
                "reason": reason,
                "was": held.reason,
                "outcome": result.status,
                **({"rejected": str(result.reason)} if again else {"seq": result.seq}),
            },
        )
    return Reapplied(
        change_id=change_id,
        status=result.status,
        seq=result.seq,
        reason=str(result.reason) if result.reason else None,
        detail=result.detail,
    )


def _batch_of(service: SyncService, device_id: str, raw: bytes) -> str | None:
    """The signed batch whose manifest names `raw` (for rows quarantined before 0008)."""
    digest = signing.digest(raw)
    with service.store.snapshot() as db:
        rows = db.execute(
            "SELECT batch_id, manifest FROM batches WHERE device_id = ?", [device_id]
        ).fetchall()
    for batch_id, manifest in rows:
        if digest in (signing.signed_digests(manifest, device_id, batch_id) or []):
            return str(batch_id)
    return None


def _yes(text: str) -> bool:
    return text.lower() in {"1", "true", "yes", "on"}


@get("/console/quarantine", sync_to_thread=True, include_in_schema=False)
def quarantine_page(
    request: Request,
    everything: Annotated[str, QueryParameter(name="all")] = "",
    offset: FromQuery[int] = 0,
    reapplied: FromQuery[str] = "",
) -> Response:
    current = signed_in(request, "supervisor")
    data = quarantine_list(
        service_of(request), current.user, _yes(everything), page_offset(offset), reapplied
    )
    return render(request, current, "quarantine.html", data=data)


@get("/api/quarantine", sync_to_thread=True, summary="Rejected changes in view")
def quarantine_api(
    request: Request,
    everything: Annotated[str, QueryParameter(name="all")] = "",
    offset: FromQuery[int] = 0,
) -> QuarantineList:
    current = signed_in(request, "supervisor")
    return quarantine_list(service_of(request), current.user, _yes(everything), page_offset(offset))


@post("/console/quarantine/acknowledge", include_in_schema=False)
async def acknowledge_form(request: Request) -> Response:
    current, fields, _form = await signed_form(request, "supervisor")
    service = service_of(request)
    await anyio.to_thread.run_sync(acknowledge, service, current.user, fields.get("change_id", ""))
    return back_to("/console/quarantine" + ("?all=1" if fields.get("all") else ""))


@post("/console/quarantine/reapply", include_in_schema=False)
async def reapply_form(request: Request) -> Response:
    current, fields, _form = await signed_form(request, "supervisor")
    service = service_of(request)
    change_id = fields.get("change_id", "")
    work = functools.partial(reapply, service, current.user, change_id, fields.get("reason", ""))
    try:
        done = await anyio.to_thread.run_sync(work)
    except InvalidAction as refused:
        data = await anyio.to_thread.run_sync(quarantine_list, service, current.user)
        return render(request, current, "quarantine.html", status=400, data=data, failed=refused)
    return back_to(f"/console/quarantine?reapplied={quote(done.change_id)}")


@post(
    "/api/quarantine/acknowledge",
    status_code=200,
    summary="Acknowledge a rejected change",
    dependencies=documents_body(AcknowledgeRequest),
)
async def acknowledge_api(request: Request) -> Acknowledged:
    current = await signed_call(request, "supervisor")
    wanted: AcknowledgeRequest = await json_body(request, AcknowledgeRequest)
    return await anyio.to_thread.run_sync(
        acknowledge, service_of(request), current.user, wanted.change_id
    )


@post(
    "/api/quarantine/reapply",
    status_code=200,
    summary="Apply a rejected change again",
    dependencies=documents_body(ReapplyRequest),
)
async def reapply_api(request: Request) -> Reapplied:
    current = await signed_call(request, "supervisor")
    wanted: ReapplyRequest = await json_body(request, ReapplyRequest)
    return await anyio.to_thread.run_sync(
        reapply, service_of(request), current.user, wanted.change_id, wanted.reason
    )


ROUTES = [
    quarantine_page,
    quarantine_api,
    acknowledge_form,
    reapply_form,
    acknowledge_api,
    reapply_api,
]
