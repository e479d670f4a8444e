"""The office's side of agreements: check each signature on arrival, execute when complete,
export as an offline-verifiable bundle.

Runs inside the push transaction. A signature counts only if it verified when
the office first received it (its device known and not revoked then); once
accepted it is never re-judged, so a signing phone revoked later leaves its
signatures valid (DESIGN scenario 4).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

import msgspec

from schemas.changes import Append, Change, Delete, Reason
from schemas.policy import Sealed
from schemas.records import Agreement, Receipt, Signature
from schemas.state import RecordState
from server import audit
from server.keys import OfficeKeys
from server.storage.directory import Directory
from server.storage.index import index_records
from server.storage.sqlite import SqliteStore
from sync import agreements
from sync.agreements import Bundle, SigningDevice
from sync.clock import Clock
from sync.engine import Vet, apply
from sync.merge import field_specs, materialize, seen_by
from sync.store import RecordKey

FINAL = ("executed", "superseded")
# The sealed fields: what the parties sign (sync.agreements.canonical_content).
CONTENT = frozenset(
    name for name, spec in field_specs("agreement").items() if isinstance(spec.policy, Sealed)
)
OFFICE_ONLY = ("executed", "superseded")


def _is_final(state: RecordState | None) -> bool:
    agreement = materialize(state, ("status",)) if state else None  # the status alone
    return isinstance(agreement, Agreement) and agreement.status in FINAL


def _appends(op: object, field: str) -> TypeGuard[Append]:
    return isinstance(op, Append) and op.field == field


def _check_withdrawal(
    directory: Directory, change: Change, agreement: Agreement, entry: Any, *, signers: bool
) -> tuple[Reason, str] | None:
    """A withdrawal comes from the signer's own device or the witness of their signature;
    of a required signer, unless `signers` is off (see `_made_before_an_edit`)."""
    signer = str(entry["signer"])
    device = directory.device(change.device_id)
    user = device.user.user_id if device else None
    witnesses = {s.witness for s in agreement.signatures if s.signer == signer}
    if signers and signer not in agreement.required_signers:
        return Reason.SIGNER_NOT_REQUIRED, f"{signer} is not a required signer"
    if user != signer and user not in witnesses:
        return Reason.NOT_PERMITTED, f"only {signer} or the witness of their signature withdraws it"
    return None


def _check_supersedes(store: SqliteStore, agreement: Agreement) -> tuple[Reason, str] | None:
    """New terms replace an executed agreement only with the consent of all who signed it:
    the new version requires every signer the old one required."""
    if not agreement.supersedes:
        return None
    key = ("agreement", agreement.supersedes)
    state = store.states([key]).get(key)
    old = materialize(state, ("status", "required_signers")) if state else None
    if not isinstance(old, Agreement) or old.status != "executed":
        return None
    missing = sorted(set(old.required_signers) - set(agreement.required_signers))
    if missing:
        return Reason.NOT_PERMITTED, (
            f"a new version of executed agreement {agreement.supersedes} needs all its"
            f" signers: {', '.join(missing)} missing"
        )
    return None


def _made_before_an_edit(
    change: Change, state: RecordState, edited: Iterable[str] = CONTENT
) -> bool:
    """Whether `change` was made on the agreement (it had seen a write of it: its draft's
    status, which an edit never replaces, or some content) before an edit of the `edited`
    fields that it had not seen."""
    if all(seen_by(write, change) for name in edited for write in state.registers.get(name, [])):
        return False
    content = [write for name in CONTENT for write in state.registers.get(name, [])]
    return any(seen_by(write, change) for write in [*state.history.get("status", []), *content])


def signature_vet(directory: Directory) -> Vet:
    """A `vet` for `apply_batch` that refuses agreement signatures that do not verify."""

    def vet(change: Change, before: RecordState | None, after: RecordState) -> Any:
        if change.record_type != "agreement":
            return None
        if "receipt" in change.set or change.set.get("status") in OFFICE_ONLY:
            return Reason.NOT_PERMITTED, "only the office executes, supersedes and countersigns"
        withdrawals = [op.entry for op in change.ops if _appends(op, "withdrawals")]
        signatures = [op.entry for op in change.ops if _appends(op, "signatures")]
        sealed = [name for name in change.set if name in CONTENT]
        ends = change.set.get("status") == "void" or any(
            isinstance(op, Delete) for op in change.ops
        )
        # Only these depend on the status before: read it for them alone.
        was_final = (ends or withdrawals or signatures or sealed) and _is_final(before)
        if ends and was_final:
            return Reason.NOT_PERMITTED, "an executed agreement cannot be voided or deleted"
        # The receipt seals the signatures it counted: a repeat signed earlier offline
        # would take the place of the one counted, and the receipt would no longer verify.
        if signatures and was_final:
            return Reason.AGREEMENT_SEALED, "signatures: the agreement was executed"
        # A sealed field is sealed by the signatures its device had seen; one written
        # offline beside the signatures that executed the agreement would change what
        # its receipt vouches for. Once executed, the content is final.
        if sealed and was_final:
            return Reason.AGREEMENT_SEALED, f"{', '.join(sealed)}: the agreement was executed"
        agreement = materialize(after)
        assert isinstance(agreement, Agreement)
        if withdrawals and was_final:
            return Reason.WITHDRAWAL_AFTER_EXECUTION, "an executed agreement binds its signers"
        # A signature is made over the content its device had, and a withdrawal for a
        # signer it had as required. An edit it had not seen may have changed those before
        # it arrived: it is kept then, not counting (PROTOCOL.md section 13), as when it
        # arrives before that edit. One that had seen nothing of the agreement is held to
        # the agreement as it stands.
        acts = signatures or withdrawals
        signers = not (acts and _made_before_an_edit(change, after, ["required_signers"]))
        for entry in withdrawals:
            refused = _check_withdrawal(directory, change, agreement, entry, signers=signers)
            if refused:
                return refused
        if signatures or "supersedes" in change.set or "required_signers" in change.set:
            refused = _check_supersedes(directory.store, agreement)
            if refused:
                return refused
        before_an_edit = bool(signatures) and _made_before_an_edit(change, after)
        for entry in signatures:
            signature = msgspec.convert(entry, Signature)
            device = directory.device(signature.device_id or "")
            usable = device is not None and device.revoked_at_ms is None
            refused = agreements.check_signature(
                change.record_id,
                agreement,
                signature,
                device.signing_key if usable and device else None,
                device.user.user_id if usable and device else None,
                content=not before_an_edit,
                signers=signers,
            )
            if refused:
                return refused
        return None

    return vet


def execute_ready(
    store: SqliteStore,
    keys: OfficeKeys,
    clock: Clock,
    written: Mapping[RecordKey, RecordState],
    now_ms: int,
) -> None:
    """Move the agreements a batch wrote along: collecting once signed, executed with
    a receipt once every required signer has signed; executing a new version
    supersedes the version it names (voids it, if that one was never executed).
    `written` are the record states the batch wrote.

    The office's changes set only `status` and `receipt`, so they never change
    who may see an agreement.
    """
    for key in [key for key in written if key[0] == "agreement"]:
        # As it is now, not as the batch wrote it: executing an earlier one of the batch
        # may have superseded or voided it since.
        state = store.states([key])[key]
        agreement = materialize(state)
        assert isinstance(agreement, Agreement)
        if agreement.status == "draft" and agreement.signatures:
            state = _office_change(store, keys, clock, state, {"status": "collecting"}, now_ms)
            agreement = materialize(state)
            assert isinstance(agreement, Agreement)
        if agreement.status == "collecting" and agreements.is_complete(key[1], agreement):
            # The same batch may have executed the agreement this one names: ask again.
            unconsented = _check_supersedes(store, agreement)
            if unconsented:
                audit.append(
                    store.db,
                    now_ms,
                    f"office:{keys.office_id}",
                    "agreement_not_executed",
                    f"agreement/{key[1]}",
                    {"why": unconsented[1]},
                )
                continue
            receipt = _receipt(keys, key[1], agreement, store.last_seq() + 1, now_ms)
            receipt_value = msgspec.to_builtins(receipt)
            executed = {"status": "executed", "receipt": receipt_value}
            _office_change(store, keys, clock, state, executed, now_ms)
            audit.append(
                store.db,
                now_ms,
                f"office:{keys.office_id}",
                "agreement_execute",
                f"agreement/{key[1]}",
                {
                    "content_hash": receipt.content_hash,
                    "signatures_hash": receipt.signatures_hash,
                    "signatures": len(agreement.signatures),
                    "receipt_seq": receipt.seq,
                    "supersedes": agreement.supersedes,
                },
            )
            # No check of who may see the old version here: the change that executes
            # is often another user's (a signer's own phone), and the office sees all.
            # What matters is whether the user who set `supersedes` could write the
            # agreement named, and only the push of that sealed field knows who that
            # was: `SyncService._device_rules` refuses it then (`not_permitted`).
            if agreement.supersedes:
                _supersede(store, keys, clock, agreement.supersedes, now_ms)


def _supersede(
    store: SqliteStore, keys: OfficeKeys, clock: Clock, agreement_id: str, now_ms: int
) -> None:
    key = ("agreement", agreement_id)
    state = store.states([key]).get(key)
    if state is None:
        return
    old = materialize(state)
    assert isinstance(old, Agreement)
    ends = {"executed": "superseded", "draft": "void", "collecting": "void"}
    if old.status in ends:  # not already superseded or void
        _office_change(store, keys, clock, state, {"status": ends[old.status]}, now_ms)


def _receipt(
    keys: OfficeKeys, agreement_id: str, agreement: Agreement, seq: int, now_ms: int
) -> Receipt:
    unsigned = Receipt(
        office_id=keys.office_id,
        content_hash=agreements.content_hash(agreement_id, agreement),
        signatures_hash=agreements.signatures_hash(agreement_id, agreement.signatures),
        executed_at=agreements.moment(now_ms),
        seq=seq,
        signature=b"",
    )
    message = agreements.receipt_message(agreement_id, unsigned)
    return msgspec.structs.replace(unsigned, signature=keys.signing.sign(message))


def _office_change(
    store: SqliteStore,
    keys: OfficeKeys,
    clock: Clock,
    state: RecordState,
    fields: dict[str, Any],
    now_ms: int,
) -> RecordState:
    """Apply a change authored by the office, which has seen everything in the record.

    It sets only `status` and `receipt`, so readers stay as they are; the
    console's indexes are brought up to date.
    """
    change = Change(
        change_id=f"{keys.office_id}-{uuid.uuid4().hex}",
        record_type=state.record_type,
        record_id=state.record_id,
        device_id=keys.office_id,
        hlc=clock.now(),
        seen=dict(state.vv),
        set=fields,
    )
    (result,), records, _ = apply(store, [change], clock)
    if result.seq is None:
        raise RuntimeError(f"the office's own change was refused: {result.reason} {result.detail}")
    index_records(store, records, now_ms)
    after, _ = records[(state.record_type, state.record_id)]
    return after


def bundle(directory: Directory, keys: OfficeKeys, agreement_id: str) -> Bundle | None:
    """The agreement as a self-contained bundle that `sync.agreements.verify_file` checks
    with no server (its signing devices' keys, revoked ones included, and the office's
    key); None if the store holds no such agreement.

    What `lianxin agreement export` writes and the console downloads.
    """
    key = ("agreement", agreement_id)
    state = directory.store.states([key]).get(key)
    if state is None:
        return None
    agreement = materialize(state)
    assert isinstance(agreement, Agreement)
    devices = []
    for device_id in sorted({s.device_id for s in agreement.signatures if s.device_id}):
        device = directory.device(device_id)
        if device is not None:
            devices.append(
                SigningDevice(
                    device_id=device_id, user_id=device.user.user_id, signing_key=device.signing_key
                )
            )
    return Bundle(
        agreement_id=agreement_id,
        agreement=agreement,
        devices=devices,
        office_id=keys.office_id,
        office_key=keys.signing_public,
    )
