"""Agreements as signed documents: content hash, signatures, receipts, offline bundles."""

from datetime import UTC, datetime

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import Agreement, Reason, Receipt, Signature
from sync import agreements
from sync.agreements import Bundle, SigningDevice

AT = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
TERMS = Agreement(
    case="k-grease",
    terms="The owner installs a grease trap within 14 days.",
    required_signers=["p-owner", "p-household-01", "p-household-02"],
    status="collecting",
)


class Key:
    def __init__(self, device_id, user_id):
        self.private = Ed25519PrivateKey.generate()
        self.device = SigningDevice(
            device_id=device_id,
            user_id=user_id,
            signing_key=self.private.public_key().public_bytes_raw(),
        )

    def sign(self, agreement, signer, witness=None, content=None):
        unsigned = Signature(
            signer=signer,
            signed_at=AT,
            content_hash=content or agreements.content_hash("a-1", agreement),
            signature=b"",
            witness=witness,
            handwriting_hash="ab" * 32 if witness else None,
            device_id=self.device.device_id,
        )
        message = agreements.signature_message("a-1", unsigned)
        return msgspec.structs.replace(unsigned, signature=self.private.sign(message))


OWNER = Key("dev-owner", "p-owner")  # the owner has the app: signs with their own key
MEDIATOR = Key("dev-sun", "u-sun")  # households sign on the mediator's phone


def check(signature, key=MEDIATOR, agreement=TERMS):
    return agreements.check_signature(
        "a-1", agreement, signature, key.device.signing_key, key.device.user_id
    )


def test_content_hash_ignores_signer_order_and_signatures_but_not_terms():
    reordered = msgspec.structs.replace(
        TERMS, required_signers=list(reversed(TERMS.required_signers))
    )
    signed = msgspec.structs.replace(TERMS, signatures=[OWNER.sign(TERMS, "p-owner")])
    assert agreements.content_hash("a-1", reordered) == agreements.content_hash("a-1", TERMS)
    assert agreements.content_hash("a-1", signed) == agreements.content_hash("a-1", TERMS)
    other = msgspec.structs.replace(TERMS, terms=TERMS.terms + " ")
    assert agreements.content_hash("a-1", other) != agreements.content_hash("a-1", TERMS)
    assert agreements.content_hash("a-2", TERMS) != agreements.content_hash("a-1", TERMS)


def test_own_and_attested_signatures_verify():
    assert check(OWNER.sign(TERMS, "p-owner"), OWNER) is None
    assert check(MEDIATOR.sign(TERMS, "p-household-01", witness="u-sun")) is None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: MEDIATOR.sign(TERMS, "p-stranger", witness="u-sun"), Reason.SIGNER_NOT_REQUIRED),
        (
            lambda: MEDIATOR.sign(TERMS, "p-household-01", witness="u-sun", content="cd" * 32),
            Reason.CONTENT_MISMATCH,
        ),
        (  # a forged signature: the right fields, another key
            lambda: msgspec.structs.replace(
                MEDIATOR.sign(TERMS, "p-household-01", witness="u-sun"),
                signature=Key("x", "y").sign(TERMS, "p-household-01", "u-sun").signature,
            ),
            Reason.SIGNATURE_INVALID,
        ),
        # "own" signature for a household, made on the mediator's phone
        (lambda: MEDIATOR.sign(TERMS, "p-household-01"), Reason.SIGNATURE_INVALID),
        # attested, but naming another witness than the device's user
        (lambda: MEDIATOR.sign(TERMS, "p-household-01", witness="u-li"), Reason.SIGNATURE_INVALID),
    ],
    ids=["not-required", "other-content", "forged", "own-from-other-device", "wrong-witness"],
)
def test_refused_signatures_say_why(make, reason):
    refused = check(make())
    assert refused is not None and refused[0] == reason


def test_an_unknown_or_revoked_device_key_never_verifies():
    signature = MEDIATOR.sign(TERMS, "p-household-01", witness="u-sun")
    refused = agreements.check_signature("a-1", TERMS, signature, None, None)
    assert refused is not None and refused[0] == Reason.SIGNATURE_INVALID


def test_signature_and_receipt_messages_are_bound_to_their_purpose():
    signature = OWNER.sign(TERMS, "p-owner")
    assert agreements.signature_message("a-1", signature).startswith(b"lianxin agreement v1\n")
    receipt = Receipt(
        office_id="office-1",
        content_hash="ab" * 32,
        signatures_hash="cd" * 32,
        executed_at=AT,
        seq=9,
        signature=b"",
    )
    assert agreements.receipt_message("a-1", receipt).startswith(b"lianxin receipt v1\n")


OFFICE = Ed25519PrivateKey.generate()


def executed_bundle(*more):
    """The agreement executed with every required signature, and `more` kept beside them."""
    signatures = [
        OWNER.sign(TERMS, "p-owner"),
        MEDIATOR.sign(TERMS, "p-household-01", witness="u-sun"),
        MEDIATOR.sign(TERMS, "p-household-02", witness="u-sun"),
        *more,
    ]
    unsigned = Receipt(
        office_id="office-1",
        content_hash=agreements.content_hash("a-1", TERMS),
        signatures_hash=agreements.signatures_hash("a-1", signatures),
        executed_at=AT,
        seq=42,
        signature=b"",
    )
    receipt = msgspec.structs.replace(
        unsigned, signature=OFFICE.sign(agreements.receipt_message("a-1", unsigned))
    )
    agreement = msgspec.structs.replace(
        TERMS, signatures=signatures, status="executed", receipt=receipt
    )
    return Bundle(
        agreement_id="a-1",
        agreement=agreement,
        devices=[OWNER.device, MEDIATOR.device],
        office_id="office-1",
        office_key=OFFICE.public_key().public_bytes_raw(),
    )


def test_an_executed_bundle_verifies_offline():
    assert agreements.verify_bundle(executed_bundle()) == []


def test_a_signature_that_does_not_count_is_no_problem_if_its_device_made_it():
    # Signed before the list was cut, or over terms changed concurrently: kept, sealed.
    earlier = Agreement(case="k-grease", terms="Another trap.", required_signers=["p-gone"])
    kept = [
        MEDIATOR.sign(TERMS, "p-gone", witness="u-sun"),
        MEDIATOR.sign(earlier, "p-household-01", witness="u-sun"),
    ]
    assert agreements.verify_bundle(executed_bundle(*kept)) == []
    forged = msgspec.structs.replace(kept[0], signature=bytes(64))
    (problem,) = agreements.verify_bundle(executed_bundle(forged))
    assert problem.startswith("signature of p-gone: signer_not_required")


def test_a_required_signer_who_signed_only_other_terms_has_not_signed():
    earlier = msgspec.structs.replace(TERMS, terms="Another trap.")
    bundle = executed_bundle()
    only_earlier = [
        *bundle.agreement.signatures[:2],
        MEDIATOR.sign(earlier, "p-household-02", witness="u-sun"),
    ]
    agreement = msgspec.structs.replace(bundle.agreement, signatures=only_earlier)
    problems = agreements.verify_bundle(msgspec.structs.replace(bundle, agreement=agreement))
    assert "not signed by p-household-02" in problems


def test_a_bundle_missing_a_signature_or_receipt_says_so():
    bundle = executed_bundle()
    partial = msgspec.structs.replace(
        bundle.agreement, signatures=bundle.agreement.signatures[:2], receipt=None
    )
    problems = agreements.verify_bundle(msgspec.structs.replace(bundle, agreement=partial))
    assert any("not signed by p-household-02" in p for p in problems)
    assert any("no office receipt" in p for p in problems)


OFFICE_KEY = OFFICE.public_key().public_bytes_raw()  # as the office publishes it


def test_every_flipped_bit_of_an_exported_bundle_file_is_caught():
    exported = agreements.export_bundle(executed_bundle())
    assert agreements.verify_file(exported, OFFICE_KEY) == []
    for position in range(len(exported)):
        tampered = bytearray(exported)
        tampered[position] ^= 0x01
        caught = agreements.verify_file(bytes(tampered), OFFICE_KEY)
        assert caught, f"a flip at byte {position} went unnoticed"


def test_a_bundle_forged_whole_under_a_key_of_its_own_is_refused():
    # A forger signs the receipt with their own key and names it as the office's.
    forger = Ed25519PrivateKey.generate()
    bundle = executed_bundle()
    receipt = bundle.agreement.receipt
    assert receipt is not None
    forged_receipt = msgspec.structs.replace(
        receipt, signature=forger.sign(agreements.receipt_message("a-1", receipt))
    )
    forged = msgspec.structs.replace(
        bundle,
        agreement=msgspec.structs.replace(bundle.agreement, receipt=forged_receipt),
        office_key=forger.public_key().public_bytes_raw(),
    )
    assert agreements.verify_bundle(forged) == []  # consistent in itself
    (problem,) = agreements.verify_file(agreements.export_bundle(forged), OFFICE_KEY)
    assert problem.startswith("countersigned by office key") and "not the one given" in problem
