"""Sealed envelopes: open only for their key, with their header, untouched."""

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sync.envelope import Envelope, Header, check_kem_key, open_envelope, seal
from sync.errors import (
    BadEnvelope,
    EnvelopeError,
    Unsealable,
    UnsupportedSuite,
    WeakKey,
    WrongKey,
)

OFFICE = X25519PrivateKey.generate()
KEYS = {"office-1.k1": OFFICE}
HEADER = Header(suite=1, key_id="office-1.k1", device_id="dev-a", batch_id="b-1", purpose="push")
BATCH = b"the exact bytes of a push batch"


def test_an_envelope_opens_for_its_key_with_its_header():
    header, plaintext = open_envelope(seal(BATCH, HEADER, OFFICE.public_key()), KEYS)
    assert (header, plaintext) == (HEADER, BATCH)


def test_every_flipped_bit_is_refused():
    sealed = seal(BATCH, HEADER, OFFICE.public_key())
    for position in range(len(sealed)):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[position] ^= bit
            with pytest.raises(EnvelopeError):
                open_envelope(bytes(tampered), KEYS)


def test_sealed_to_another_office_does_not_open():
    other = X25519PrivateKey.generate()
    with pytest.raises(Unsealable):
        open_envelope(seal(BATCH, HEADER, other.public_key()), KEYS)
    elsewhere = msgspec.structs.replace(HEADER, key_id="office-2.k1")
    with pytest.raises(WrongKey):
        open_envelope(seal(BATCH, elsewhere, other.public_key()), KEYS)


def test_a_header_swapped_onto_another_ciphertext_does_not_open():
    first = msgspec.msgpack.decode(seal(BATCH, HEADER, OFFICE.public_key()), type=Envelope)
    other_header = msgspec.structs.replace(HEADER, batch_id="b-2", device_id="dev-b")
    second = msgspec.msgpack.decode(
        seal(b"another batch", other_header, OFFICE.public_key()), type=Envelope
    )
    swapped = msgspec.msgpack.encode(Envelope(header=second.header, sealed=first.sealed))
    with pytest.raises(Unsealable):
        open_envelope(swapped, KEYS)


def test_a_downgraded_or_unknown_suite_is_refused():
    envelope = msgspec.msgpack.decode(seal(BATCH, HEADER, OFFICE.public_key()), type=Envelope)
    downgraded = msgspec.msgpack.encode(msgspec.structs.replace(HEADER, suite=0))
    forged = msgspec.msgpack.encode(Envelope(header=downgraded, sealed=envelope.sealed))
    with pytest.raises(UnsupportedSuite):
        open_envelope(forged, KEYS)
    with pytest.raises(UnsupportedSuite):
        open_envelope(seal(BATCH, HEADER, OFFICE.public_key()), KEYS, suites=(2,))
    with pytest.raises(UnsupportedSuite):
        seal(BATCH, msgspec.structs.replace(HEADER, suite=9), OFFICE.public_key())


@pytest.mark.parametrize("garbage", [b"", b"\x80", b"\x81\xa6header\xc4\x01x", b"\xc1"])
def test_garbage_is_a_bad_envelope(garbage):
    with pytest.raises(BadEnvelope):
        open_envelope(garbage, KEYS)


@pytest.mark.parametrize(
    "u",
    [
        0,
        1,
        # the points of order 8 (RFC 7748's list of low-order inputs)
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        2**255 - 20,  # p - 1
        2**255 - 19,  # p, as 0
        2**255 - 18,  # p + 1, as 1
    ],
)
def test_a_kem_key_of_low_order_is_refused(u):
    with pytest.raises(WeakKey):
        check_kem_key(u.to_bytes(32, "little"))


def test_a_fresh_kem_key_is_sound():
    check_kem_key(X25519PrivateKey.generate().public_key().public_bytes_raw())
