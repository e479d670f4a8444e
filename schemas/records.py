"""The records devices and the server agree on.

Every field is annotated with its merge policy (see `schemas.policy`) and has
a default, so a record can be materialised from any subset of its fields.
Collections are lists on the wire; set fields hold strings (ids, tags).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

from schemas.policy import LOG, LWW, SEALED, SET, Log, StatusMachine

# `$` lets a final newline through; what a device sends is held to the whole pattern at the
# edge (`sync.changes.newline_in_ids`), while states stored before still read as they are.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
ShortText = Annotated[str, msgspec.Meta(max_length=200)]
LongText = Annotated[str, msgspec.Meta(max_length=20_000)]
# Timestamps carry a time zone (RFC 3339 with Z or an offset): a naive one is refused.
Moment = Annotated[datetime, msgspec.Meta(tz=True)]


class Gps(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class Location(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Org-unit path (city/district/street/community) plus optional address and GPS."""

    city: ShortText
    district: ShortText
    street: ShortText
    community: ShortText = ""
    address: ShortText | None = None
    gps: Gps | None = None


class Visit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    entry_id: Id
    at: Moment
    by: Id
    summary: LongText
    attendees: list[Id] = []


class Note(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    entry_id: Id
    at: Moment
    by: Id
    text: LongText


class Signature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One signer's Ed25519 signature over an agreement's content hash.

    Made with the key of device `device_id`: the signer's own device, or, when
    a `witness` is named, the capturing device attesting a handwritten
    signature whose image hashes to `handwriting_hash` (PROTOCOL.md, section 13).
    """

    signer: Id
    signed_at: Moment
    content_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    signature: Annotated[bytes, msgspec.Meta(max_length=64)]
    witness: Id | None = None
    handwriting_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    # Added after v1 payloads were frozen; a signature without it never verifies.
    device_id: Id | None = None


class Withdrawal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A signer taking back their signature before execution (recorded, never erased)."""

    signer: Id
    withdrawn_at: Moment
    reason: LongText = ""
    witness: Id | None = None


class Receipt(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The office's countersignature of an executed agreement."""

    office_id: Id
    content_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    signatures_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    executed_at: Moment
    seq: Annotated[int, msgspec.Meta(ge=1)]
    signature: Annotated[bytes, msgspec.Meta(max_length=64)]


CaseStatus = Literal[
    "new", "assigned", "in_mediation", "resolved", "closed", "referred", "withdrawn"
]
CASE_STATUS = StatusMachine(
    initial=frozenset({"new", "assigned"}),
    transitions={
        "new": frozenset({"assigned", "referred", "withdrawn"}),
        "assigned": frozenset({"in_mediation", "resolved", "referred", "withdrawn"}),
        "in_mediation": frozenset({"resolved", "referred", "withdrawn"}),
        "resolved": frozenset({"in_mediation", "closed"}),
        "closed": frozenset(),
        "referred": frozenset(),
        "withdrawn": frozenset(),
    },
    rank={
        "new": 0,
        "assigned": 1,
        "in_mediation": 2,
        "resolved": 3,
        "closed": 10,
        "referred": 10,
        "withdrawn": 10,
    },
)

WarningStatus = Literal["open", "triaged", "converted", "dismissed"]
WARNING_STATUS = StatusMachine(
    initial=frozenset({"open"}),
    transitions={
        "open": frozenset({"triaged", "converted", "dismissed"}),
        "triaged": frozenset({"converted", "dismissed"}),
        "converted": frozenset(),
        "dismissed": frozenset(),
    },
    rank={"open": 0, "triaged": 1, "converted": 10, "dismissed": 10},
)

AgreementStatus = Literal["draft", "collecting", "executed", "superseded", "void"]
AGREEMENT_STATUS = StatusMachine(
    initial=frozenset({"draft"}),
    transitions={
        "draft": frozenset({"collecting", "void"}),
        "collecting": frozenset({"executed", "void"}),
        "executed": frozenset({"superseded"}),
        "superseded": frozenset(),
        "void": frozenset(),
    },
    rank={"draft": 0, "collecting": 1, "executed": 5, "superseded": 10, "void": 10},
)


class Party(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A person or organisation taking part in a case."""

    kind: Annotated[Literal["person", "household", "organisation"], LWW] = "person"
    name: Annotated[ShortText, LWW] = ""
    phone: Annotated[ShortText | None, LWW] = None
    id_number: Annotated[ShortText | None, LWW] = None
    address: Annotated[ShortText | None, LWW] = None
    role: Annotated[Literal["petitioner", "respondent", "third_party"], LWW] = "petitioner"


class Case(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A grievance being handled (案件)."""

    category: Annotated[ShortText, LWW] = ""
    title: Annotated[ShortText, LWW] = ""
    summary: Annotated[LongText, LWW] = ""
    location: Annotated[Location | None, LWW] = None
    parties: Annotated[list[Id], SET] = []
    status: Annotated[CaseStatus, CASE_STATUS] = "new"
    mediators: Annotated[list[Id], SET] = []
    priority: Annotated[Literal["low", "normal", "high", "urgent"], LWW] = "normal"
    households: Annotated[Annotated[int, msgspec.Meta(ge=0, le=1_000_000)], LWW] = 0
    due: Annotated[date | None, LWW] = None
    visits: Annotated[list[Visit], LOG] = []
    notes: Annotated[list[Note], LOG] = []
    tags: Annotated[list[ShortText], SET] = []
    warnings: Annotated[list[Id], SET] = []
    agreements: Annotated[list[Id], SET] = []


class EarlyWarning(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A report of a brewing dispute (预警) from an informant."""

    observed_at: Annotated[Moment | None, LWW] = None
    location: Annotated[Location | None, LWW] = None
    category: Annotated[ShortText, LWW] = ""
    severity: Annotated[Literal["low", "medium", "high", "critical"], LWW] = "medium"
    description: Annotated[LongText, LWW] = ""
    people_affected: Annotated[Annotated[int, msgspec.Meta(ge=0)], LWW] = 0
    status: Annotated[WarningStatus, WARNING_STATUS] = "open"
    informant: Annotated[Id | None, LWW] = None
    response: Annotated[LongText, LWW] = ""
    case: Annotated[Id | None, LWW] = None


class Agreement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A mediation agreement (人民调解协议书); its content is sealed once signed."""

    case: Annotated[Id | None, SEALED] = None
    version: Annotated[Annotated[int, msgspec.Meta(ge=1)], SEALED] = 1
    terms: Annotated[LongText, SEALED] = ""
    required_signers: Annotated[list[Id], SEALED] = []
    supersedes: Annotated[Id | None, SEALED] = None
    signatures: Annotated[list[Signature], Log(key="signer", repeats=True)] = []
    status: Annotated[AgreementStatus, AGREEMENT_STATUS] = "draft"
    receipt: Annotated[Receipt | None, LWW] = None
    withdrawals: Annotated[list[Withdrawal], Log(key="signer", repeats=True)] = []


RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    "case": Case,
    "warning": EarlyWarning,
    "agreement": Agreement,
    "party": Party,
}
