"""Sealed envelopes: HPKE (RFC 9180) base mode, with the header bound through `info`.

    envelope = seal(plaintext, header, recipient_public_key)
    plaintext = open_envelope(envelope_bytes, private_keys_by_id, allowed_suites)

An envelope is a MessagePack map `{header, sealed}`: `header` is the exact
MessagePack bytes of a `Header` (version, suite, key id, device id, batch id,
purpose) and `sealed` is HPKE's output (encapsulated key, then ciphertext and
tag). HPKE's `info` is `"lianxin envelope v1\\n" + header`, so a header
swapped onto another ciphertext, or a suite id changed in transit, fails to
open. The suite id names the algorithms, so a post-quantum hybrid suite is a
new id, not a new format (PROTOCOL.md section 14).

A version 2 push or pull travels in a smaller envelope, `[suite, key_id,
sealed]` (`seal_v2`, `open_v2`): who sent it and what it asks are inside,
signed. Its answer is HPKE's output alone, bound through `info` to the
request's signature (`seal_v2_answer`, `open_v2_answer`), so an onlooker
learns neither from the request nor from the answer, and cannot forge one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from schemas.records import Id
from sync.errors import BadEnvelope, Unsealable, UnsupportedSuite, WeakKey, WrongKey

INFO_PURPOSE = b"lianxin envelope v1\n"
ENVELOPE = "application/lianxin-envelope"  # the Content-Type of a sealed body
# The Content-Types of version 2 requests and their answers.
PUSH_ENVELOPE = "application/lianxin-push"
PULL_ENVELOPE = "application/lianxin-pull"
MEDIA_TYPES = {"push": PUSH_ENVELOPE, "pull": PULL_ENVELOPE}
Purpose = Literal["push", "pull"]
# Suite ids on the wire. Only suite 1 exists today; a hybrid ML-KEM-768 + X25519
# suite would be added here with its own id, and offices choose which they accept.
SUITES = {1: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)}
ENCAPSULATED_KEY_BYTES = {1: 32}
TAG_BYTES = 16


class Header(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the envelope says about itself; bound to the ciphertext, never encrypted."""

    version: Literal[1] = 1
    suite: int
    key_id: Id
    device_id: Id
    batch_id: Id
    purpose: Purpose


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    header: Annotated[bytes, msgspec.Meta(max_length=1024)]
    sealed: bytes


class CompactEnvelope(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A version 2 request body: the HPKE output, and which office key opens it."""

    suite: int
    key_id: Id
    sealed: bytes


_decode_header = msgspec.msgpack.Decoder(Header).decode
_decode_envelope = msgspec.msgpack.Decoder(Envelope).decode
_decode_compact = msgspec.msgpack.Decoder(CompactEnvelope).decode


def check_kem_key(public_key: bytes) -> None:
    """Raise `WeakKey` for an X25519 public key of low order: every exchange with it gives
    the all-zero secret, so nothing could be sealed to it for its holder alone (OpenSSL
    refuses the exchange)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise WeakKey("the KEM key is a point of low order") from None


def seal(plaintext: bytes, header: Header, recipient: X25519PublicKey) -> bytes:
    """The envelope bytes carrying `plaintext` to the holder of `recipient`'s key."""
    suite = SUITES.get(header.suite)
    if suite is None:
        raise UnsupportedSuite(f"suite {header.suite} is not one this code knows")
    header_bytes = msgspec.msgpack.encode(header)
    sealed = suite.encrypt(plaintext, recipient, info=INFO_PURPOSE + header_bytes)
    return msgspec.msgpack.encode(Envelope(header=header_bytes, sealed=sealed))


def _read(data: bytes) -> tuple[Header, Envelope]:
    """The envelope's header, decoded but not yet trusted (it is checked by opening)."""
    try:
        envelope = _decode_envelope(data)
        return _decode_header(envelope.header), envelope
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise BadEnvelope(str(error)) from None


def open_envelope(
    data: bytes,
    keys: Mapping[str, X25519PrivateKey],
    suites: Collection[int] = (1,),
) -> tuple[Header, bytes]:
    """The header and plaintext of an envelope sealed to one of `keys` (by key id).

    Raises `BadEnvelope` (does not decode), `UnsupportedSuite` (a suite not in
    `suites`: no downgrade), `WrongKey` (sealed to a key id not held here) or
    `Unsealable` (any changed bit in header, key, ciphertext or tag).
    """
    header, envelope = _read(data)
    info = INFO_PURPOSE + envelope.header
    return header, _open(header.suite, header.key_id, envelope.sealed, info, keys, suites)


def seal_v2(
    purpose: Purpose, plaintext: bytes, key_id: str, recipient: X25519PublicKey, suite: int = 1
) -> bytes:
    """A version 2 request body for `purpose`, carrying `plaintext` to the office key `key_id`."""
    if suite not in SUITES:
        raise UnsupportedSuite(f"suite {suite} is not one this code knows")
    sealed = SUITES[suite].encrypt(plaintext, recipient, info=_v2_info(purpose, suite, key_id))
    return msgspec.msgpack.encode(CompactEnvelope(suite=suite, key_id=key_id, sealed=sealed))


def open_v2(
    purpose: Purpose,
    data: bytes,
    keys: Mapping[str, X25519PrivateKey],
    suites: Collection[int] = (1,),
) -> tuple[int, bytes]:
    """The suite and plaintext of a version 2 request body; refused as `open_envelope` refuses."""
    try:
        envelope = _decode_compact(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise BadEnvelope(str(error)) from None
    info = _v2_info(purpose, envelope.suite, envelope.key_id)
    return envelope.suite, _open(
        envelope.suite, envelope.key_id, envelope.sealed, info, keys, suites
    )


def _v2_info(purpose: Purpose, suite: int, key_id: str) -> bytes:
    return f"lianxin {purpose} v2\n{suite}\n{key_id}".encode()


def seal_v2_answer(
    purpose: Purpose, plaintext: bytes, suite: int, signature: bytes, recipient: X25519PublicKey
) -> bytes:
    """The answer to the version 2 request signed `signature`, sealed to its device's key."""
    if suite not in SUITES:
        raise UnsupportedSuite(f"suite {suite} is not one this code knows")
    info = _answer_info(purpose, suite, signature)
    return SUITES[suite].encrypt(plaintext, recipient, info=info)


def open_v2_answer(
    purpose: Purpose, data: bytes, suite: int, signature: bytes, key: X25519PrivateKey
) -> bytes:
    """The plaintext of the answer to the request signed `signature`; `Unsealable` if it
    answers anything else."""
    if suite not in SUITES:
        raise UnsupportedSuite(f"suite {suite} is not one this code knows")
    return _decrypt(suite, key, data, _answer_info(purpose, suite, signature))


def _answer_info(purpose: Purpose, suite: int, signature: bytes) -> bytes:
    # The request's signature names this very request (device, ids, signing time, body),
    # and only the device and the office that opened it know it: no one else can seal
    # an answer that opens, nor pass off the answer to an earlier try.
    head = f"lianxin {purpose} v2 answer\n{suite}\n".encode()
    return head + hashlib.sha256(signature).digest()


def _open(
    suite: int,
    key_id: str,
    sealed: bytes,
    info: bytes,
    keys: Mapping[str, X25519PrivateKey],
    suites: Collection[int],
) -> bytes:
    if suite not in suites or suite not in SUITES:
        raise UnsupportedSuite(f"suite {suite} is not accepted here")
    key = keys.get(key_id)
    if key is None:
        raise WrongKey(f"sealed to key {key_id}, which this office does not hold")
    return _decrypt(suite, key, sealed, info)


def _decrypt(suite: int, key: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    if len(sealed) < ENCAPSULATED_KEY_BYTES[suite] + TAG_BYTES:
        raise Unsealable("the sealed part is shorter than a key and a tag")
    try:
        return SUITES[suite].decrypt(sealed, key, info=info)
    except (InvalidTag, ValueError):
        raise Unsealable("the envelope does not open: changed in transit or not for us") from None
