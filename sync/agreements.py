"""Mediation agreements as signed documents: canonical content, signatures, receipts, bundles.

    content_hash(agreement_id, agreement)      what every signature is over
    signature_message(agreement_id, sig)       what a signer's key signs
    check_signature(...)                       why a signature is refused, or None
    receipt_message(agreement_id, receipt)     what the office signs on execution
    receipt_problems(...)                      every problem of an office receipt
    verify_bundle(bundle)                      every problem of an exported bundle

Every message starts with its purpose line, so no signature made for one of
them can be replayed as another (PROTOCOL.md section 13).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import msgspec

from schemas.changes import Reason
from schemas.records import Agreement, Receipt, Signature
from sync import signing
from sync.errors import BadSignature

CONTENT_PURPOSE = "lianxin agreement content v1"
SIGNATURE_PURPOSE = b"lianxin agreement v1"
RECEIPT_PURPOSE = b"lianxin receipt v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encode = msgspec.msgpack.Encoder().encode


def moment(epoch_milliseconds: int) -> datetime:
    """The UTC datetime of whole milliseconds since the Unix epoch."""
    return _EPOCH + timedelta(milliseconds=epoch_milliseconds)


def epoch_ms(at: datetime) -> int:
    """Whole milliseconds since the Unix epoch, exactly (no float rounding)."""
    return (at - _EPOCH) // timedelta(milliseconds=1)


def canonical_content(agreement_id: str, agreement: Agreement) -> bytes:
    """The deterministic encoding of what the parties agree to.

    A MessagePack array: purpose, id, case, version, terms, the required
    signers sorted and without repeats, supersedes. Signatures, status and
    receipt are not content.
    """
    return _encode(
        [
            CONTENT_PURPOSE,
            agreement_id,
            agreement.case,
            agreement.version,
            agreement.terms,
            sorted(set(agreement.required_signers)),
            agreement.supersedes,
        ]
    )


def content_hash(agreement_id: str, agreement: Agreement) -> str:
    """SHA-256 of the canonical content, lowercase hex."""
    return hashlib.sha256(canonical_content(agreement_id, agreement)).hexdigest()


def signature_message(agreement_id: str, signature: Signature) -> bytes:
    """What the signing device's key signs for one signer."""
    lines = [
        SIGNATURE_PURPOSE,
        agreement_id.encode(),
        signature.content_hash.encode(),
        signature.signer.encode(),
        str(epoch_ms(signature.signed_at)).encode(),
        (signature.device_id or "").encode(),
        (signature.witness or "").encode(),
        (signature.handwriting_hash or "").encode(),
    ]
    return b"\n".join(lines)


def check_signature(
    agreement_id: str,
    agreement: Agreement,
    signature: Signature,
    device_key: bytes | None,
    device_user: str | None,
    *,
    content: bool = True,
    signers: bool = True,
) -> tuple[Reason, str] | None:
    """Why `signature` cannot count for `agreement`, or None if it verifies.

    `device_key` and `device_user` are the signing device's public key and
    user, or None when the device is unknown or was revoked before the
    signature reached the office. An own signature (no witness) must come
    from the signer's own device; an attested one must name a handwriting
    image and the witnessing device's user. With `content` off the content
    hash need not be current: for a signature made before an edit of the
    content its device had not seen; with `signers` off, the signer need not be
    required now: for one made before an edit of the signers it had not seen.
    """
    if signers and signature.signer not in agreement.required_signers:
        return Reason.SIGNER_NOT_REQUIRED, f"{signature.signer} is not a required signer"
    if content and signature.content_hash != content_hash(agreement_id, agreement):
        return Reason.CONTENT_MISMATCH, "the signature is over other content than the agreement's"
    if device_key is None or device_user is None:
        return Reason.SIGNATURE_INVALID, f"device {signature.device_id} is unknown or revoked"
    if signature.witness is None and device_user != signature.signer:
        return Reason.SIGNATURE_INVALID, "an own signature must come from the signer's device"
    if signature.witness is not None and (
        signature.witness != device_user or signature.handwriting_hash is None
    ):
        return Reason.SIGNATURE_INVALID, (
            "an attested signature names its device's user as witness and a handwriting hash"
        )
    if not _made_by(device_key, agreement_id, signature):
        return Reason.SIGNATURE_INVALID, "the agreement signature does not verify"
    return None


# Why a signature its device made may not count: it is kept, not refused.
NOT_COUNTING = (Reason.SIGNER_NOT_REQUIRED, Reason.CONTENT_MISMATCH)


def _made_by(device_key: bytes | None, agreement_id: str, signature: Signature) -> bool:
    """Whether the device holding `device_key` made `signature` (None: no known device)."""
    if device_key is None:
        return False
    try:
        signing.verify(
            device_key, signature.signature, signature_message(agreement_id, signature), "agreement"
        )
    except BadSignature:
        return False
    return True


def signatures_hash(agreement_id: str, signatures: Iterable[Signature]) -> str:
    """What a receipt seals: SHA-256 over, in signer order, each signature's
    SHA-256(message) followed by its 64 signature bytes."""
    sealed = hashlib.sha256()
    for signature in sorted(signatures, key=lambda s: s.signer):
        sealed.update(hashlib.sha256(signature_message(agreement_id, signature)).digest())
        sealed.update(signature.signature)
    return sealed.hexdigest()


def receipt_message(agreement_id: str, receipt: Receipt) -> bytes:
    """What the office's key signs when an agreement is executed."""
    lines = [
        RECEIPT_PURPOSE,
        receipt.office_id.encode(),
        agreement_id.encode(),
        receipt.content_hash.encode(),
        receipt.signatures_hash.encode(),
        str(epoch_ms(receipt.executed_at)).encode(),
        str(receipt.seq).encode(),
    ]
    return b"\n".join(lines)


def is_complete(agreement_id: str, agreement: Agreement) -> bool:
    """Whether every required signer has signed the current content and not withdrawn.

    A signature over other content (the terms changed concurrently) does not
    count. A withdrawal is final for this version of the agreement: going on
    means a new version that supersedes it.
    """
    current = content_hash(agreement_id, agreement)
    withdrawn = {w.signer for w in agreement.withdrawals}
    signed = {s.signer for s in agreement.signatures if s.content_hash == current} - withdrawn
    return bool(agreement.required_signers) and signed >= set(agreement.required_signers)


class SigningDevice(msgspec.Struct, frozen=True, kw_only=True):
    """A device key that made a signature, as the office knew it."""

    device_id: str
    user_id: str
    signing_key: bytes


BUNDLE_FORMAT = "lianxin agreement bundle v1"


class Bundle(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A self-contained, offline-verifiable export of one agreement."""

    format: str = BUNDLE_FORMAT
    agreement_id: str
    agreement: Agreement
    devices: list[SigningDevice]
    office_id: str
    office_key: bytes


def export_bundle(bundle: Bundle) -> bytes:
    """The bundle file's bytes: indented JSON, the one form `verify_file` accepts."""
    return msgspec.json.format(msgspec.json.encode(bundle))


def verify_file(data: bytes, office_key: bytes) -> list[str]:
    """Every problem of an exported bundle file, down to a changed byte.

    `office_key` is the office's public signing key as the office publishes it, not
    as the bundle names it: whoever forges a bundle can name a key of their own.
    """
    try:
        bundle = msgspec.json.decode(data, type=Bundle)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        return [f"not an agreement bundle: {error}"]
    problems = verify_bundle(bundle)
    if not hmac.compare_digest(bundle.office_key, office_key):
        problems.insert(
            0, f"countersigned by office key {bundle.office_key.hex()}, not the one given"
        )
    if export_bundle(bundle) != data:
        # Same meaning, other bytes (a non-canonical base64 digit, say): still a change.
        problems.append("the file differs from its canonical form: changed after export")
    return problems


def verify_bundle(bundle: Bundle) -> list[str]:
    """Every problem found in `bundle`; an empty list means it verifies.

    A signature that does not count (made before its signer left the list, or
    over terms changed concurrently) is no problem if its device made it: the
    agreement keeps it, and the receipt seals it with the others.
    """
    problems = []
    if bundle.format != BUNDLE_FORMAT:
        problems.append(f"unknown bundle format {bundle.format!r}")
    agreement = bundle.agreement
    if agreement.status not in ("executed", "superseded"):
        problems.append(f"the agreement is {agreement.status}, not executed")
    devices = {d.device_id: d for d in bundle.devices}
    counting = set()
    for signature in agreement.signatures:
        device = devices.get(signature.device_id or "")
        key, user = (device.signing_key, device.user_id) if device else (None, None)
        refused = check_signature(bundle.agreement_id, agreement, signature, key, user)
        if refused is None:
            counting.add(signature.signer)
        elif refused[0] not in NOT_COUNTING or not _made_by(key, bundle.agreement_id, signature):
            problems.append(f"signature of {signature.signer}: {refused[0]}: {refused[1]}")
    withdrawn = {w.signer for w in agreement.withdrawals}
    missing = set(agreement.required_signers) - (counting - withdrawn)
    if missing:
        problems.append(f"not signed by {', '.join(sorted(missing))}")
    problems += receipt_problems(
        bundle.agreement_id, agreement, bundle.office_id, bundle.office_key
    )
    return problems


def receipt_problems(
    agreement_id: str, agreement: Agreement, office_id: str, office_key: bytes
) -> list[str]:
    """Every problem of the agreement's receipt, checked with the office's signing key."""
    receipt = agreement.receipt
    if receipt is None:
        return ["no office receipt: the agreement was not executed"]
    problems = []
    if receipt.office_id != office_id:
        problems.append(f"the receipt is from {receipt.office_id}, not {office_id}")
    if receipt.content_hash != content_hash(agreement_id, agreement):
        problems.append("the receipt is for other content than the agreement's")
    if receipt.signatures_hash != signatures_hash(agreement_id, agreement.signatures):
        problems.append("the receipt seals another set of signatures")
    try:
        signing.verify(
            office_key, receipt.signature, receipt_message(agreement_id, receipt), "office receipt"
        )
    except BadSignature as error:
        problems.append(error.detail)
    return problems
