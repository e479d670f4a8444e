"""One hand-written example of every wire type, as of the first protocol version.

`frozen/v1.msgpack` and `frozen/v1.json` hold these encoded on the day they
were written; the tests decode those files with today's types, so a phone
that comes back after months with old-format payloads still syncs.
"""

from datetime import UTC, date, datetime

from schemas import (
    Add,
    Agreement,
    Append,
    Candidate,
    Case,
    Change,
    ChangeResult,
    Conflict,
    Delete,
    EarlyWarning,
    Gps,
    Location,
    Note,
    Party,
    Reason,
    Remove,
    Restore,
    Signature,
    Visit,
)

AT = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
PLACE = Location(
    city="Hangzhou",
    district="Gongshu",
    street="Mishixiang",
    community="Daguan",
    address="3-401",
    gps=Gps(lat=30.29, lon=120.16),
)

EXAMPLES: dict[str, object] = {
    "case": Case(
        category="infrastructure",
        title="Overflowing drains",
        summary="Ten households affected.",
        location=PLACE,
        parties=["p-1", "p-2"],
        status="assigned",
        mediators=["u-zhao"],
        priority="high",
        households=10,
        due=date(2026, 12, 26),
        visits=[Visit(entry_id="v-1", at=AT, by="u-zhao", summary="Met them.", attendees=["p-1"])],
        notes=[Note(entry_id="n-1", at=AT, by="u-zhao", text="Bring the map.")],
        tags=["drains"],
        warnings=["w-1"],
        agreements=["a-1"],
    ),
    "warning": EarlyWarning(
        observed_at=AT,
        location=PLACE,
        category="infrastructure",
        severity="high",
        description="The drains overflow every rain.",
        people_affected=10,
        status="open",
        informant="inf-7f3a",
        response="",
        case=None,
    ),
    "agreement": Agreement(
        case="k-1",
        version=2,
        terms="The owner installs a grease trap.",
        required_signers=["p-1", "p-owner"],
        supersedes="a-0",
        signatures=[
            Signature(
                signer="p-1",
                signed_at=AT,
                content_hash="ab" * 32,
                signature=bytes(range(64)),
                witness="u-sun",
                handwriting_hash="cd" * 32,
            )
        ],
        status="collecting",
    ),
    "party": Party(
        kind="household",
        name="He Jianguo",
        phone="+86 138 0000 1234",
        id_number=None,
        address="Daguan 3-401",
        role="petitioner",
    ),
    "change": Change(
        change_id="c-1",
        record_type="case",
        record_id="k-1",
        device_id="dev-a",
        hlc=(1_795_000_000_000 << 16) | 3,
        seen={"dev-b": 1_794_000_000_000 << 16},
        set={"title": "Overflowing drains", "households": 10},
        ops=[
            Add(field="tags", value="drains"),
            Remove(field="tags", value="water"),
            Append(
                field="notes",
                entry={"entry_id": "n-1", "at": AT.isoformat(), "by": "u", "text": "x"},
            ),
            Delete(),
            Restore(),
        ],
    ),
    "result": ChangeResult(
        change_id="c-1",
        status="conflict",
        seq=42,
        conflicts=[
            Conflict(
                record_type="case",
                record_id="k-1",
                field="summary",
                kind="value",
                winner="b",
                candidates=[
                    Candidate(value="a", device_id="dev-a", hlc=1, change_id="c-0"),
                    Candidate(value="b", device_id="dev-b", hlc=2, change_id="c-1"),
                ],
            )
        ],
    ),
    "rejected": ChangeResult(
        change_id="c-2",
        status="rejected",
        reason=Reason.ILLEGAL_TRANSITION,
        detail="x",
        clamped=True,
    ),
}
