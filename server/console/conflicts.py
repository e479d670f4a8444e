"""Conflicts: the queue of open conflicts in a supervisor's view, and settling one.

A settlement is an office change (`server.console.actions.office_change`)
whose causal context is the record's whole version vector: it has seen every
candidate, so it supersedes them and the conflict closes (PROTOCOL.md
section 5), here at once and on every device once it pulls the change
(DESIGN scenario 3). A field conflict (`value` or `status`) is settled by
writing the field: a candidate's value, or one the supervisor writes, which
the merge code checks like any device's (a status must still be a legal move
from the status shown). A deletion (`_record`) is settled by restoring the
record or deleting it again. The page sends the conflict's version, so a
conflict that gained a candidate after the page was drawn is not settled
blind.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromQuery

from schemas.changes import Conflict, Delete, Op, Restore
from schemas.console.conflicts import (
    Author,
    CandidateView,
    ConflictList,
    ConflictView,
    Settled,
    SettleRequest,
)
from schemas.records import Agreement, Case, EarlyWarning, Party
from server.console import times
from server.console.actions import office_change
from server.console.cases import visible
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
    whole_number,
)
from server.pseudonyms import pseudonym
from server.service import CONSOLE_DEVICES, SyncService
from server.storage.directory import Device, User
from sync.errors import InvalidAction, UnknownRecord
from sync.merge import DELETED_FIELD, field_specs, materialize
from sync.store import RecordKey

PAGE = 50
# The record types with a console page of their own (parties show on their case's).
PAGES = {"case": "cases", "warning": "warnings", "agreement": "agreements"}
DELETION_CHOICES = {"restore": "settle_conflict_restore", "delete": "settle_conflict_keep_deleted"}
_decode_conflict = msgspec.msgpack.Decoder(Conflict).decode
_text = msgspec.json.Encoder(order="sorted")


def shown(value: Any) -> str:
    """A field value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return _text.encode(value).decode()


class Authors:
    """Who stands behind each device id, looked up once per page."""

    def __init__(self, service: SyncService) -> None:
        self.service = service
        self.device: Callable[[str], Device | None] = functools.cache(service.directory.device)

    def __call__(self, device_id: str) -> Author:
        directory = self.service.directory
        if device_id.startswith(CONSOLE_DEVICES):
            # A change made at the console: the office, at this supervisor's hand.
            user = directory.user(device_id.removeprefix(CONSOLE_DEVICES))
            return Author(
                device_id=device_id,
                user_id=user.user_id if user else None,
                user_name=user.name if user else None,
                office=True,
            )
        if device_id == self.service.keys.office_id:  # agreement execution, receipts
            return Author(device_id=device_id, user_id=None, user_name=None, office=True)
        device = self.device(device_id)
        if device is not None and device.user.role == "informant":
            # Informants appear to supervisors as their pseudonym, as on their warnings
            # (PROTOCOL.md section 15): only `reidentify`, audited, says who they are.
            alias = pseudonym(self.service.keys.pseudonym_key, device.user.user_id)
            return Author(device_id=device_id, user_id=alias, user_name=alias, office=False)
        return Author(
            device_id=device_id,
            user_id=device.user.user_id if device else None,
            user_name=device.user.name if device else None,
            office=False,
        )


def title_of(record: msgspec.Struct) -> str:
    """What names a record in a list: a case's title, a party's name, a warning's category."""
    match record:
        case Case(title=title):
            return title
        case Party(name=name):
            return name
        case EarlyWarning(category=category, description=description):
            return category or description[:80]
        case Agreement(terms=terms):
            return terms[:80]
    return ""


def link_of(service: SyncService, user_id: str, key: RecordKey) -> str | None:
    """The console page of a record: its own, else that of a case linking it (if in view)."""
    record_type, record_id = key
    if record_type in PAGES:
        return f"/console/{PAGES[record_type]}/{record_id}"
    with service.store.snapshot() as db:
        row = db.execute(
            "SELECT l.case_id FROM links l JOIN access a ON a.user_id = ?"
            " AND a.record_type = 'case' AND a.record_id = l.case_id"
            " WHERE l.record_type = ? AND l.record_id = ?"
            " ORDER BY l.case_id LIMIT 1",
            [user_id, record_type, record_id],
        ).fetchone()
    return f"/console/cases/{row[0]}" if row else None


_FROM = (
    " FROM conflicts c JOIN access a ON a.user_id = ? AND a.record_type = c.record_type"
    " AND a.record_id = c.record_id WHERE c.settled_seq IS NULL"
)


def conflict_list(service: SyncService, user_id: str, offset: int = 0) -> ConflictList:
    """The open conflicts of the records `user_id` may see, oldest first, a page at a time."""
    with service.store.snapshot() as db:
        (total,) = db.execute(f"SELECT count(*){_FROM}", [user_id]).fetchone()
        rows = db.execute(
            "SELECT c.record_type, c.record_id, c.field, c.conflict, c.opened_seq, c.updated_seq"
            f"{_FROM} ORDER BY c.opened_seq, c.id LIMIT ? OFFSET ?",
            [user_id, PAGE, offset],
        ).fetchall()
        states = service.store.states((t, i) for t, i, *_ in rows)
        authors = Authors(service)
        zone = service.settings.zone
        views = []
        for record_type, record_id, field, sealed, opened, version in rows:
            key = (record_type, record_id)
            plain = service.store.open_value("conflicts", key, field, sealed)
            state = states.get(key)
            if plain is None or state is None:  # erased since the count
                continue
            title = title_of(materialize(state))
            link = link_of(service, user_id, key)
            conflict = _decode_conflict(plain)
            views.append(_view(conflict, title, link, version, opened, authors, zone))
        return ConflictList(conflicts=views, total=total, offset=offset, limit=PAGE)


def _view(
    conflict: Conflict,
    title: str,
    link: str | None,
    version: int,
    opened: int,
    authors: Authors,
    zone: ZoneInfo,
) -> ConflictView:
    deletion = conflict.kind == "deleted"

    def text(value: Any) -> str:
        if deletion and isinstance(value, dict):  # {field: value} of one unseen write
            return "; ".join(f"{name}: {shown(v)}" for name, v in value.items())
        return shown(value)

    candidates = [
        CandidateView(
            index=index,
            value=candidate.value,
            shown=text(candidate.value),
            author=authors(candidate.device_id),
            change_id=candidate.change_id,
            hlc=candidate.hlc,
            at_ms=candidate.hlc >> 16,
            at=times.second(candidate.hlc >> 16, zone),
        )
        for index, candidate in enumerate(conflict.candidates)
    ]
    choices = (
        list(DELETION_CHOICES) if deletion else [*(str(c.index) for c in candidates), "custom"]
    )
    return ConflictView(
        record_type=conflict.record_type,
        record_id=conflict.record_id,
        field=conflict.field,
        kind=conflict.kind,
        title=title,
        link=link,
        winner=conflict.winner,
        winner_shown=text(conflict.winner),
        version=version,
        opened_seq=opened,
        candidates=candidates,
        choices=choices,
    )


def form_value(record_type: str, field: str, text: str) -> Any:
    """A value typed in the page's text box, for a field of any type.

    Kept as text when the field takes text (or a date); otherwise read as
    JSON (a number, a location object). Whatever it is, the merge code
    validates it afterwards and refuses it precisely.
    """
    spec = field_specs(record_type).get(field)
    if spec is None:
        return text
    try:
        msgspec.convert({"value": text}, spec.holder)
        return text
    except msgspec.ValidationError:
        pass
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):  # `[[[[…` a thousand deep is text too
        return text


def settle(
    service: SyncService, user: User, request: SettleRequest, typed: bool = False
) -> Settled:
    """Settle one open conflict of a record in `user`'s view by an audited office change.

    `typed`: a custom `value` is the text of the page's form (see `form_value`).
    Raises `UnknownRecord` if the record is not in the user's view, and
    `InvalidAction` without a reason, without an open conflict on the field,
    when the conflict changed since `request.version`, for a choice that is
    not one of the conflict's, or when the merge code refuses the value.
    """
    if not request.reason.strip():
        raise InvalidAction(_("a reason is required"))
    key = (request.record_type, request.record_id)
    store = service.store
    with store.transaction():  # nothing may join the conflict between reading and settling
        if not visible(service, user.user_id, *key):
            raise UnknownRecord(_("no such record in your view"))
        row = store.db.execute(
            "SELECT conflict, updated_seq FROM conflicts WHERE record_type = ? AND record_id = ?"
            " AND field = ? AND settled_seq IS NULL",
            [*key, request.field],
        ).fetchone()
        if row is None:
            raise InvalidAction(_("this field has no open conflict: was it settled already?"))
        sealed, version = row
        if request.version is not None and request.version != version:
            raise InvalidAction(_("the conflict changed since you opened it; look at it again"))
        plain = store.open_value("conflicts", key, request.field, sealed)
        if plain is None:
            raise UnknownRecord(_("the record was erased"))
        conflict = _decode_conflict(plain)
        action, values, ops = _decision(conflict, request, typed)
        custom = request.choice == "custom"
        result = office_change(
            service, user, *key, action, request.reason, set=values, ops=ops, typed=custom
        )
        (still_open,) = store.db.execute(
            "SELECT count(*) FROM conflicts WHERE record_type = ? AND record_id = ?"
            " AND field = ? AND settled_seq IS NULL",
            [*key, request.field],
        ).fetchone()
        if still_open:  # the merge guarantees otherwise; never leave a half-settled record
            raise InvalidAction(_("the change did not settle the conflict"))
    return Settled(
        record_type=key[0],
        record_id=key[1],
        field=request.field,
        change_id=result.change_id,
        seq=result.seq,
        status=result.status,
    )


def _decision(
    conflict: Conflict, request: SettleRequest, typed: bool
) -> tuple[str, dict[str, Any] | None, list[Op] | None]:
    """The audit action, fields and operations of the settling change."""
    choice = request.choice
    if conflict.field == DELETED_FIELD:
        if choice not in DELETION_CHOICES:
            raise InvalidAction(_("settle a deletion by restoring the record or deleting it"))
        operation: Op = Restore() if choice == "restore" else Delete()
        return DELETION_CHOICES[str(choice)], None, [operation]
    if choice == "custom":
        value = request.value
        if typed:
            value = form_value(conflict.record_type, conflict.field, str(value or ""))
        return "settle_conflict", {conflict.field: value}, None
    index = choice if isinstance(choice, int) else whole_number(choice)
    if index is None or not 0 <= index < len(conflict.candidates):
        raise InvalidAction(_("choose one of the candidates or a value of your own"))
    return "settle_conflict", {conflict.field: conflict.candidates[index].value}, None


@get("/console/conflicts", sync_to_thread=True, include_in_schema=False)
def conflicts_page(request: Request, offset: FromQuery[int] = 0) -> Response:
    current = signed_in(request, "supervisor")
    data = conflict_list(service_of(request), current.user.user_id, page_offset(offset))
    return render(request, current, "conflicts.html", data=data)


@get("/api/conflicts", sync_to_thread=True, summary="Open conflicts in view, with every candidate")
def conflicts_api(request: Request, offset: FromQuery[int] = 0) -> ConflictList:
    current = signed_in(request, "supervisor")
    return conflict_list(service_of(request), current.user.user_id, page_offset(offset))


@post("/console/conflicts/settle", include_in_schema=False)
async def settle_form(request: Request) -> Response:
    current, fields, _form = await signed_form(request, "supervisor")
    service = service_of(request)
    version = fields.get("version", "")
    wanted = SettleRequest(
        record_type=fields.get("record_type", ""),
        record_id=fields.get("record_id", ""),
        field=fields.get("field", ""),
        choice=fields.get("choice", ""),
        value=fields.get("value", ""),
        reason=fields.get("reason", ""),
        version=whole_number(version),
    )
    try:
        await anyio.to_thread.run_sync(settle, service, current.user, wanted, True)
    except InvalidAction as refused:
        data = await anyio.to_thread.run_sync(conflict_list, service, current.user.user_id)
        return render(
            request, current, "conflicts.html", status=400, data=data, failed=refused, form=fields
        )
    return back_to("/console/conflicts")


@post(
    "/api/conflicts/settle",
    status_code=200,
    summary="Settle an open conflict (X-CSRF-Token)",
    dependencies=documents_body(SettleRequest),
)
async def settle_api(request: Request) -> Settled:
    current = await signed_call(request, "supervisor")
    wanted = await json_body(request, SettleRequest)
    return await anyio.to_thread.run_sync(settle, service_of(request), current.user, wanted)


ROUTES = [conflicts_page, conflicts_api, settle_form, settle_api]
