"""Signatures over exact bytes, each bound to a purpose string.

Every signed message starts with its purpose (`lianxin request v1`, ...), so a
signature made for one thing can never be replayed as another. Inputs are
built from the exact bytes sent, never from a re-encoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.wire import Pushed, SignedPull, SignedPush
from sync.errors import BadSignature, WeakKey

REQUEST_PURPOSE = b"lianxin request v1"
BATCH_PURPOSE = b"lianxin batch v1"
PUSH_PURPOSE = b"lianxin push v2"
PULL_PURPOSE = b"lianxin pull v2"
ENROLL_PURPOSE = b"lianxin enroll v1"
OFFICE_KEY_PURPOSE = b"lianxin office key v1"

_P = 2**255 - 19
# The y coordinates of Ed25519's eight points of small order: the identity (1), order 2
# (p - 1), order 4 (0, with x = ±sqrt(-1)) and order 8 (these two, each with both x).
_SMALL_ORDER_Y = frozenset(
    [0, 1, _P - 1]
    + [
        int.from_bytes(bytes.fromhex(y), "little")
        for y in (
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        )
    ]
)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def request_message(
    method: str, path: str, timestamp: int, nonce: str, device_id: str, body: bytes
) -> bytes:
    """What a device signs for one HTTP request (PROTOCOL.md, "Signed requests")."""
    lines = [
        REQUEST_PURPOSE,
        method.upper().encode(),
        path.encode(),
        str(timestamp).encode(),
        nonce.encode(),
        device_id.encode(),
        digest(body).hex().encode(),
    ]
    return b"\n".join(lines)


def batch_message(device_id: str, batch_id: str, changes: Iterable[bytes]) -> bytes:
    """What a device signs for a push batch: its manifest of change hashes."""
    head = b"\n".join([BATCH_PURPOSE, device_id.encode(), batch_id.encode()]) + b"\n"
    return head + b"".join(digest(change) for change in changes)


def push_message(
    device_id: str, batch_id: str, timestamp_ms: int, changes: Iterable[bytes]
) -> bytes:
    """What a device signs for a version 2 push: the request and its batch's manifest at once."""
    head = b"\n".join(
        [PUSH_PURPOSE, device_id.encode(), batch_id.encode(), str(timestamp_ms).encode()]
    )
    return head + b"\n" + b"".join(digest(change) for change in changes)


def signed_push(
    key: Ed25519PrivateKey, device_id: str, batch_id: str, timestamp_ms: int, changes: list[bytes]
) -> SignedPush:
    """A version 2 push of `changes`, signed by the device's `key` at `timestamp_ms`."""
    message = push_message(device_id, batch_id, timestamp_ms, changes)
    return SignedPush(
        device_id=device_id,
        batch_id=batch_id,
        timestamp_ms=timestamp_ms,
        changes=changes,
        signature=key.sign(message),
    )


def pull_message(
    device_id: str,
    request_id: str,
    timestamp_ms: int,
    cursor: str | None,
    limit: int,
    pushed: Sequence[Pushed] = (),
) -> bytes:
    """What a device signs for a version 2 pull; the cursor goes last, as it may hold
    anything, and an empty one means none.

    `pushed` adds a line before the limit; it holds spaces, which a limit's digits
    never do, so no pull's message is another's.
    """
    fields = [device_id, request_id, str(timestamp_ms), str(limit), cursor or ""]
    if pushed:
        fields.insert(3, " ".join(f"{p.seq} {p.change_id}" for p in pushed))
    return PULL_PURPOSE + b"\n" + "\n".join(fields).encode()


def signed_pull(
    key: Ed25519PrivateKey,
    device_id: str,
    request_id: str,
    timestamp_ms: int,
    cursor: str | None,
    limit: int,
    pushed: Sequence[Pushed] = (),
) -> SignedPull:
    """A version 2 pull from `cursor`, signed by the device's `key` at `timestamp_ms`."""
    message = pull_message(device_id, request_id, timestamp_ms, cursor, limit, pushed)
    return SignedPull(
        device_id=device_id,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        cursor=cursor,
        limit=limit,
        signature=key.sign(message),
        pushed=list(pushed),
    )


def encode_pull(pull: SignedPull) -> bytes:
    """A version 2 pull's plaintext; without `pushed`, the six-element array offices from
    before it read (msgspec writes every field of an array-like struct, defaults too)."""
    if not pull.pushed:
        return msgspec.msgpack.encode(msgspec.structs.astuple(pull)[:-1])
    return msgspec.msgpack.encode(pull)


def signed_digests(manifest: bytes, device_id: str, batch_id: str) -> list[bytes] | None:
    """The change digests a stored batch or push message signs, in order.

    None unless `manifest` is a message of either kind for this device and
    batch, so a retry of a batch compares by its changes alone, whatever
    moment it was signed at.
    """
    v1_head = batch_message(device_id, batch_id, [])
    v2_head = b"\n".join([PUSH_PURPOSE, device_id.encode(), batch_id.encode(), b""])
    if manifest.startswith(v1_head):
        digests = manifest[len(v1_head) :]
    elif manifest.startswith(v2_head):
        timestamp, newline, digests = manifest[len(v2_head) :].partition(b"\n")
        if not (newline and timestamp.isdigit()):
            return None
    else:
        return None
    if len(digests) % 32:
        return None
    return [digests[i : i + 32] for i in range(0, len(digests), 32)]


def enroll_message(code: str, signing_key: bytes, kem_key: bytes) -> bytes:
    """What a device signs to prove it holds the key it enrols."""
    return b"\n".join(
        [ENROLL_PURPOSE, code.encode(), signing_key.hex().encode(), kem_key.hex().encode()]
    )


def office_key_message(office_id: str, kem_key_id: str, since_ms: int, kem_key: bytes) -> bytes:
    """What an office signs to vouch for its KEM key, current since `since_ms`
    (`OfficeInfo.kem_key_signature`); the time lets a device refuse an older statement."""
    fields = [office_id, kem_key_id, str(since_ms), kem_key.hex()]
    return OFFICE_KEY_PURPOSE + b"\n" + "\n".join(fields).encode()


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def check_signing_key(public_key: bytes) -> None:
    """Raise `WeakKey` for an Ed25519 public key of small order or not canonically encoded.

    OpenSSL verifies signatures for such keys, and for a small-order key one
    signature, made without any private key, verifies for every message.
    """
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)  # the top bit is x's sign
    if y >= _P or y in _SMALL_ORDER_Y:
        raise WeakKey("the signing key is a point of small order or not canonically encoded")


def verify(public_key: bytes, signature: bytes, message: bytes, what: str) -> None:
    """Raise `BadSignature` naming `what` unless `signature` verifies under a sound key."""
    try:
        check_signing_key(public_key)
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError, WeakKey):
        raise BadSignature(f"the {what} signature does not verify") from None
