"""Sealing at rest: a sealed value opens only with its key, its bytes and its binding."""

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from sync.atrest import KdfParams, derive_key, new_key, open_sealed, seal
from sync.errors import Unreadable

KEY = AESGCM(bytes(range(32)))
CHEAP = 2**4  # scrypt cost for tests; the default costs 0.1 s a derivation


@given(plaintext=st.binary(max_size=2048), bind=st.binary(max_size=64))
def test_a_sealed_value_opens_to_its_plaintext(plaintext, bind):
    assert open_sealed(KEY, seal(KEY, plaintext, bind), bind) == plaintext


def test_sealing_is_randomised():
    assert seal(KEY, b"Wang Xiuying", b"row") != seal(KEY, b"Wang Xiuying", b"row")


def test_another_key_or_another_binding_does_not_open():
    sealed = seal(KEY, "王秀英".encode(), b"records\x00party\x00p-1")
    with pytest.raises(Unreadable):
        open_sealed(AESGCM(new_key()), sealed, b"records\x00party\x00p-1")
    with pytest.raises(Unreadable):
        open_sealed(KEY, sealed, b"records\x00party\x00p-2")


@given(
    plaintext=st.binary(max_size=256),
    bind=st.binary(max_size=32),
    bit=st.integers(min_value=0),
)
def test_any_flipped_bit_does_not_open(plaintext, bind, bit):
    sealed = bytearray(seal(KEY, plaintext, bind))
    bit %= len(sealed) * 8
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(Unreadable):
        open_sealed(KEY, bytes(sealed), bind)


@given(garbage=st.binary(max_size=40))
def test_short_or_foreign_bytes_do_not_open(garbage):
    with pytest.raises(Unreadable):
        open_sealed(KEY, garbage, b"")


def test_a_derived_key_depends_on_the_passphrase_and_the_salt_only():
    params = KdfParams.new(n=CHEAP)
    same_salt = KdfParams(salt=params.salt, n=CHEAP)
    assert derive_key("1234 六七", params) == derive_key("1234 六七", same_salt)
    assert len(derive_key("1234 六七", params)) == 32
    assert derive_key("1234 六七", params) != derive_key("1234 六八", params)
    assert derive_key("1234 六七", params) != derive_key("1234 六七", KdfParams.new(n=CHEAP))


def test_new_parameters_have_a_fresh_salt_and_the_strong_cost_by_default():
    first, second = KdfParams.new(), KdfParams.new()
    assert first.salt != second.salt and len(first.salt) == 16
    assert (first.n, first.r, first.p) == (2**15, 8, 1)
