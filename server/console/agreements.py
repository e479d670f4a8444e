"""Agreements: how far signing has come, every signature checked and why, the receipt, export.

Each signature the office holds was verified when it arrived; the page checks
it again, now, with `sync.agreements.check_signature` and its device's key
from the directory, and says why one does not count (other content, bad
signature, unknown device, withdrawn). A device revoked after the office
accepted a signature leaves that signature valid (PROTOCOL.md section 13).
Signatures refused on arrival are shown from the quarantine, each with its
own reason. The receipt is checked with the office's signing key. The
export is the very bundle `lianxin agreement export` writes, and is audited.
"""

from __future__ import annotations

import hashlib

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery

from schemas.changes import Append, Reason
from schemas.console.agreements import (
    AgreementList,
    AgreementPage,
    AgreementRow,
    ReceiptCheck,
    RefusedSignature,
    SignatureCheck,
    SignerRow,
    WithdrawalRow,
)
from schemas.records import Agreement, Party, Signature
from server import agreements as office_agreements
from server.console.actions import logged
from server.console.cases import PAGE, visible
from server.console.web import _, page_offset, render, service_of, signed_in
from server.service import SyncService
from server.storage.directory import Device, User
from sync import agreements
from sync.changes import decode_change
from sync.errors import UnknownRecord
from sync.merge import materialize

UNKNOWN_DEVICE = "unknown_device"
REVOKED_DEVICE = "revoked_device"
WITHDRAWN = "withdrawn"
WHY = {
    Reason.SIGNER_NOT_REQUIRED: _("the signer is not one of the required signers"),
    Reason.CONTENT_MISMATCH: _("signed other content: the terms changed after signing"),
    Reason.SIGNATURE_INVALID: _("bad signature: it does not verify as its device's"),
    UNKNOWN_DEVICE: _("signed on a device this office does not know"),
    REVOKED_DEVICE: _("signed on a device revoked before the signature arrived"),
    WITHDRAWN: _("the signer withdrew this signature"),
}
REVOKED_LATER = _("its device was revoked later; a signature accepted before stays valid")


def _why(reason: str) -> str:
    return WHY.get(reason, _("refused by the office"))


def counted(agreement_id: str, agreement: Agreement) -> set[str]:
    """The required signers whose signature counts towards execution now
    (`sync.agreements.is_complete` asks whether this is all of them)."""
    current = agreements.content_hash(agreement_id, agreement)
    withdrawn = {w.signer for w in agreement.withdrawals}
    signed = {s.signer for s in agreement.signatures if s.content_hash == current}
    return (signed - withdrawn) & set(agreement.required_signers)


def _visible_agreement(service: SyncService, user_id: str, agreement_id: str) -> Agreement:
    key = ("agreement", agreement_id)
    state = service.store.states([key]).get(key)
    if state is None or not visible(service, user_id, *key):
        raise UnknownRecord(_("no such agreement in your view"))
    agreement = materialize(state)
    assert isinstance(agreement, Agreement)
    return agreement


def agreement_list(service: SyncService, user_id: str, offset: int = 0) -> AgreementList:
    """The agreements `user_id` may see, most recently changed first, a page at a time."""
    with service.store.snapshot() as db:
        # `records.seq` is the stored checkpoint's; `agreement_index.seq` is the last change's.
        joined = (
            " FROM records r JOIN access a ON a.user_id = ? AND a.record_type = 'agreement'"
            " AND a.record_id = r.record_id"
            " LEFT JOIN agreement_index x ON x.agreement_id = r.record_id"
            " WHERE r.record_type = 'agreement' AND NOT r.deleted"
        )
        (total,) = db.execute(f"SELECT count(*){joined}", [user_id]).fetchone()
        ids = [
            agreement_id
            for (agreement_id,) in db.execute(
                f"SELECT r.record_id{joined} ORDER BY coalesce(x.seq, r.seq) DESC, r.record_id"
                " LIMIT ? OFFSET ?",
                [user_id, PAGE, offset],
            )
        ]
        states = service.store.states(("agreement", i) for i in ids)
        rows = []
        for agreement_id in ids:
            state = states.get(("agreement", agreement_id))
            if state is None:
                continue
            agreement = materialize(state)
            assert isinstance(agreement, Agreement)
            receipt = agreement.receipt
            rows.append(
                AgreementRow(
                    agreement_id=agreement_id,
                    case_id=agreement.case,
                    version=agreement.version,
                    status=agreement.status,
                    signed=len(counted(agreement_id, agreement)),
                    required=len(set(agreement.required_signers)),
                    withdrawn=len({w.signer for w in agreement.withdrawals}),
                    executed_at=receipt.executed_at.isoformat() if receipt else None,
                )
            )
        return AgreementList(agreements=rows, total=total, offset=offset, limit=PAGE)


def check(
    agreement_id: str, agreement: Agreement, signature: Signature, device: Device | None
) -> tuple[str, str]:
    """Why `signature` does not verify now (reason code, the check's words), or ("", "").

    The device's key is used even if it was revoked since: the office
    accepted the signature before, and that is what counts.
    """
    if device is None:
        return UNKNOWN_DEVICE, _("its device is not in the office's directory")
    refused = agreements.check_signature(
        agreement_id, agreement, signature, device.signing_key, device.user.user_id
    )
    if refused:
        return str(refused[0]), refused[1]
    return "", ""


def _signature_check(
    agreement_id: str,
    agreement: Agreement,
    signature: Signature,
    device: Device | None,
    withdrawn: set[str],
) -> SignatureCheck:
    reason, detail = check(agreement_id, agreement, signature, device)
    counts = not reason and signature.signer not in withdrawn
    reason_shown = WITHDRAWN if not reason and not counts else reason
    return SignatureCheck(
        signer=signature.signer,
        signed_at=signature.signed_at.isoformat(),
        kind="attested" if signature.witness else "own",
        witness=signature.witness,
        device_id=signature.device_id,
        device_label=device.label if device else "",
        verified=not reason,
        counts=counts,
        reason=reason_shown,
        why=_why(reason_shown) if reason_shown else "",
        detail=detail,
        note=REVOKED_LATER if device and device.revoked_at_ms is not None else "",
    )


def _refused(
    service: SyncService, agreement_id: str, agreement: Agreement
) -> list[RefusedSignature]:
    """The signatures of the agreement's quarantined changes, each checked on its own."""
    key = ("agreement", agreement_id)
    with service.store.snapshot() as db:
        rows = db.execute(
            "SELECT change_id, reason, raw FROM quarantine"
            " WHERE record_type = ? AND record_id = ? ORDER BY id",
            list(key),
        ).fetchall()
    found = []
    for change_id, refused_for, sealed in rows:
        plain = service.store.open_value("quarantine", key, change_id, sealed) if sealed else None
        if plain is None:
            continue
        try:
            change = decode_change(plain)
        except msgspec.DecodeError as error:  # stored under an older, looser schema
            found.append(_unreadable(change_id, refused_for, str(error)))
            continue
        for op in change.ops:
            if isinstance(op, Append) and op.field == "signatures":
                found.append(
                    _refused_one(service, agreement_id, agreement, change_id, refused_for, op.entry)
                )
    return found


def _unreadable(change_id: str, refused_for: str, detail: str) -> RefusedSignature:
    return RefusedSignature(
        change_id=change_id,
        signer="",
        device_id=None,
        refused_for=refused_for,
        reason=str(Reason.INVALID_VALUE),
        why=_("not a signature"),
        detail=detail,
    )


def _refused_one(
    service: SyncService,
    agreement_id: str,
    agreement: Agreement,
    change_id: str,
    refused_for: str,
    entry: object,
) -> RefusedSignature:
    try:
        signature = msgspec.convert(entry, Signature)
    except msgspec.ValidationError as error:
        refused = _unreadable(change_id, refused_for, str(error))
        signer = str(entry.get("signer", "")) if isinstance(entry, dict) else ""
        return msgspec.structs.replace(refused, signer=signer)
    device = service.directory.device(signature.device_id or "")
    if device is not None and device.revoked_at_ms is not None:
        reason, detail = REVOKED_DEVICE, _("its device is revoked")
    else:
        reason, detail = check(agreement_id, agreement, signature, device)
    if not reason:
        # This one verifies: another part of the same change was refused.
        reason, detail = refused_for, _("refused with the rest of its change")
    return RefusedSignature(
        change_id=change_id,
        signer=signature.signer,
        device_id=signature.device_id,
        refused_for=refused_for,
        reason=reason,
        why=_why(reason),
        detail=detail,
    )


def _party_names(service: SyncService, user_id: str, party_ids: list[str]) -> dict[str, str]:
    """The names of those parties the user may see."""
    names = {}
    states = service.store.states(("party", p) for p in party_ids)
    for (_type, party_id), state in states.items():
        if visible(service, user_id, "party", party_id):
            party = materialize(state)
            assert isinstance(party, Party)
            names[party_id] = party.name
    return names


def agreement_page(service: SyncService, user_id: str, agreement_id: str) -> AgreementPage:
    """One agreement with every signature checked; `UnknownRecord` if not in view."""
    agreement = _visible_agreement(service, user_id, agreement_id)
    withdrawn = {w.signer for w in agreement.withdrawals}
    signed = counted(agreement_id, agreement)
    required = sorted(set(agreement.required_signers))
    names = _party_names(service, user_id, required)
    devices = {
        device_id: service.directory.device(device_id)
        for device_id in {s.device_id for s in agreement.signatures if s.device_id}
    }
    receipt = agreement.receipt
    receipt_check = None
    if receipt is not None:
        problems = agreements.receipt_problems(
            agreement_id, agreement, service.keys.office_id, service.keys.signing_public
        )
        receipt_check = ReceiptCheck(
            office_id=receipt.office_id,
            executed_at=receipt.executed_at.isoformat(),
            seq=receipt.seq,
            verified=not problems,
            problems=problems,
        )
    return AgreementPage(
        agreement_id=agreement_id,
        case_id=agreement.case,
        version=agreement.version,
        status=agreement.status,
        terms=agreement.terms,
        supersedes=agreement.supersedes,
        content_hash=agreements.content_hash(agreement_id, agreement),
        signed=len(signed),
        required=len(required),
        signers=[
            SignerRow(
                signer=signer,
                name=names.get(signer, ""),
                signed=signer in signed,
                withdrawn=signer in withdrawn,
            )
            for signer in required
        ],
        signatures=[
            _signature_check(agreement_id, agreement, s, devices.get(s.device_id or ""), withdrawn)
            for s in sorted(agreement.signatures, key=lambda s: (s.signer, s.signed_at))
        ],
        refused=_refused(service, agreement_id, agreement),
        withdrawals=[
            WithdrawalRow(
                signer=w.signer,
                withdrawn_at=w.withdrawn_at.isoformat(),
                reason=w.reason,
                witness=w.witness,
            )
            for w in agreement.withdrawals
        ],
        receipt=receipt_check,
    )


def export(service: SyncService, user: User, agreement_id: str) -> bytes:
    """The agreement's signed bundle, as `lianxin agreement export` writes it; audited.

    `UnknownRecord` if the agreement is not in the user's view.
    """
    _visible_agreement(service, user.user_id, agreement_id)
    bundle = office_agreements.bundle(service.directory, service.keys, agreement_id)
    if bundle is None:
        raise UnknownRecord(_("no such agreement in your view"))
    data = agreements.export_bundle(bundle)
    with service.store.transaction():
        logged(
            service,
            user,
            "export",
            f"agreement/{agreement_id}",
            {
                "status": bundle.agreement.status,
                "signatures": len(bundle.agreement.signatures),
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        )
    return data


@get("/console/agreements", sync_to_thread=True, include_in_schema=False)
def agreements_page(request: Request, offset: FromQuery[int] = 0) -> Response:
    current = signed_in(request, "supervisor")
    data = agreement_list(service_of(request), current.user.user_id, page_offset(offset))
    return render(request, current, "agreements.html", data=data)


@get("/api/agreements", sync_to_thread=True, summary="Agreements in view: k of N signed")
def agreements_api(request: Request, offset: FromQuery[int] = 0) -> AgreementList:
    current = signed_in(request, "supervisor")
    return agreement_list(service_of(request), current.user.user_id, page_offset(offset))


@get("/console/agreements/{agreement_id:str}", sync_to_thread=True, include_in_schema=False)
def agreement_page_html(request: Request, agreement_id: FromPath[str]) -> Response:
    current = signed_in(request, "supervisor")
    data = agreement_page(service_of(request), current.user.user_id, agreement_id)
    return render(request, current, "agreement.html", data=data)


@get(
    "/api/agreements/{agreement_id:str}",
    sync_to_thread=True,
    summary="One agreement: each signer, each signature checked, the receipt",
)
def agreement_api(request: Request, agreement_id: FromPath[str]) -> AgreementPage:
    current = signed_in(request, "supervisor")
    return agreement_page(service_of(request), current.user.user_id, agreement_id)


@get(
    "/console/agreements/{agreement_id:str}/export",
    sync_to_thread=True,
    summary="Download the agreement's offline-verifiable bundle (audited)",
)
def export_download(request: Request, agreement_id: FromPath[str]) -> Response:
    current = signed_in(request, "supervisor")
    data = export(service_of(request), current.user, agreement_id)
    return Response(
        data,
        media_type="application/json",
        headers={
            "content-disposition": f'attachment; filename="agreement-{agreement_id}.json"',
            "x-content-type-options": "nosniff",
        },
    )


ROUTES = [agreements_page, agreements_api, agreement_page_html, agreement_api, export_download]
