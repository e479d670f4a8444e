"""The console's agreements: who has signed, each signature checked, the office's receipt."""

from __future__ import annotations

import msgspec


class AgreementRow(msgspec.Struct, frozen=True, kw_only=True):
    agreement_id: str
    case_id: str | None
    version: int
    status: str
    signed: int  # required signers whose signature counts (current content, not withdrawn)
    required: int
    withdrawn: int
    executed_at: str | None


class AgreementList(msgspec.Struct, frozen=True, kw_only=True):
    agreements: list[AgreementRow]  # most recently changed first
    total: int
    offset: int
    limit: int


class SignerRow(msgspec.Struct, frozen=True, kw_only=True):
    signer: str  # party id
    name: str  # the party's name when the user may see the party, else ""
    signed: bool  # a signature of theirs counts
    withdrawn: bool


class SignatureCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One signature, checked again now with its device's key from the directory."""

    signer: str
    signed_at: str
    kind: str  # own / attested
    witness: str | None
    device_id: str | None
    device_label: str
    verified: bool
    counts: bool  # verified, by a required signer, over the current content, not withdrawn
    reason: str  # machine code when not verified (PROTOCOL.md reason codes, or unknown_device)
    why: str  # the reason in words
    detail: str  # the check's own words
    note: str = ""  # e.g. the device was revoked after the office accepted it


class RefusedSignature(msgspec.Struct, frozen=True, kw_only=True):
    """A signature the office refused on arrival (its change is in quarantine)."""

    change_id: str
    signer: str
    device_id: str | None
    refused_for: str  # the change's reason code
    reason: str  # this signature's own reason code
    why: str
    detail: str


class WithdrawalRow(msgspec.Struct, frozen=True, kw_only=True):
    signer: str
    withdrawn_at: str
    reason: str
    witness: str | None


class ReceiptCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The office's countersignature, verified with the office's signing key."""

    office_id: str
    executed_at: str
    seq: int
    verified: bool
    problems: list[str]


class AgreementPage(msgspec.Struct, frozen=True, kw_only=True):
    agreement_id: str
    case_id: str | None
    version: int
    status: str
    terms: str
    supersedes: str | None
    content_hash: str
    signed: int
    required: int
    signers: list[SignerRow]
    signatures: list[SignatureCheck]
    refused: list[RefusedSignature]
    withdrawals: list[WithdrawalRow]
    receipt: ReceiptCheck | None
