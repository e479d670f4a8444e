"""Signatures refuse keys of small order (sync/signing.py)."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sync import signing
from sync.errors import BadSignature, WeakKey

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P


def _sqrt(a: int) -> int | None:
    """A square root mod p (p = 5 mod 8), or None."""
    root = pow(a, (P + 3) // 8, P)
    if root * root % P != a % P:
        root = root * pow(2, (P - 1) // 4, P) % P
    return root if root * root % P == a % P else None


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P


def small_order_points() -> list[tuple[int, int]]:
    """Every point of edwards25519 whose order divides 8, found by its equation: doubling
    one of order 8 gives y = 0, so x^2 = -y^2 and d y^4 + 2 y^2 - 1 = 0."""
    points = [(0, 1), (0, P - 1), (_sqrt(P - 1), 0), (P - _sqrt(P - 1), 0)]
    for sign in (1, -1):
        root = _sqrt((-1 + sign * _sqrt(1 + D)) * pow(D, -1, P) % P)
        if root is None:
            continue
        for y in (root, P - root):
            x = _sqrt((y * y - 1) * pow(D * y * y + 1, -1, P) % P)
            points += [(x, y), (P - x, y)]
    return points


def encodings(point: tuple[int, int]) -> list[bytes]:
    """A point's encoding with either sign bit (x = 0 has a non-canonical one)."""
    y = point[1].to_bytes(32, "little")
    return [y, y[:31] + bytes([y[31] | 0x80])]


def test_the_small_order_points_are_the_eight_points_of_the_torsion_group():
    points = small_order_points()
    assert len(set(points)) == 8
    for point in points:
        multiple = point
        for _ in range(7):
            multiple = _add(multiple, point)
        assert multiple == (0, 1)  # 8 times the point is the identity


# R = the identity and S = 0: "verifies" for every message under a key of small order.
ANY_MESSAGE_SIGNATURE = (1).to_bytes(32, "little") + bytes(32)


@pytest.mark.parametrize(
    "key",
    [e for point in small_order_points() for e in encodings(point)]
    # y + p for y = 0 and 1: the non-canonical encodings of small-order points.
    + [(P).to_bytes(32, "little"), (P + 1).to_bytes(32, "little")],
)
def test_a_key_of_small_order_or_not_canonical_is_refused(key):
    with pytest.raises(WeakKey):
        signing.check_signing_key(key)
    with pytest.raises(BadSignature):
        signing.verify(key, ANY_MESSAGE_SIGNATURE, b"anything at all", "test")


def test_openssl_alone_accepts_a_signature_made_without_a_private_key():
    # Why the check exists: this must keep raising nothing, or it would be dead weight.
    identity = (1).to_bytes(32, "little")
    Ed25519PublicKey.from_public_bytes(identity).verify(ANY_MESSAGE_SIGNATURE, b"a message")


def test_a_sound_key_verifies_its_signatures_only():
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    signing.check_signing_key(public)
    signing.verify(public, key.sign(b"message"), b"message", "test")
    with pytest.raises(BadSignature):
        signing.verify(public, key.sign(b"message"), b"another", "test")
