"""Encryption at rest: AES-256-GCM under a key, with what the bytes belong to bound in.

    sealed = seal(aead, plaintext, bind)      # b"\\x01" + 12-byte nonce + ciphertext + tag
    plaintext = open_sealed(aead, sealed, bind)

`bind` is the associated data: the record, table and row a value belongs to,
so a blob copied onto another row (or another record) does not open. Keys
made from a passphrase go through scrypt with the salt and cost stored beside
them (`KdfParams`), so the cost can be raised later without breaking old files.
Used by the server's store (per-record data keys under a master key) and by
the reference device's replica (a replica key under the holder's PIN).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from sync.errors import Unreadable

FORMAT = b"\x01"
NONCE_BYTES = 12
KEY_BYTES = 32


class KdfParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """scrypt's salt and cost; stored with whatever the derived key protects.

    The default cost (n = 2**15, r = 8: 32 MiB, about 0.1 s) follows the
    scrypt paper's interactive-login figure and OWASP's minimum.
    """

    salt: bytes
    n: int = 2**15
    r: int = 8
    p: int = 1

    @classmethod
    def new(cls, n: int = 2**15) -> KdfParams:
        return cls(salt=secrets.token_bytes(16), n=n)


def create_private(path: Path) -> None:
    """Make the SQLite file `path`, readable by its owner alone, if it does not exist yet
    (SQLite gives its -wal and -shm files the same mode).

    Never opens a file that exists: closing any descriptor of a SQLite file drops every
    lock this process holds on it, and another process may then delete a live WAL. The
    path is resolved, so a link to a file not yet made is followed.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path.resolve(), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def derive_key(passphrase: str, params: KdfParams) -> bytes:
    """A 32-byte key from a passphrase (NFC-normalised by the caller if it needs that)."""
    kdf = Scrypt(salt=params.salt, length=KEY_BYTES, n=params.n, r=params.r, p=params.p)
    return kdf.derive(passphrase.encode())


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def seal(aead: AESGCM, plaintext: bytes, bind: bytes) -> bytes:
    """Encrypt `plaintext` with a fresh random nonce, bound to `bind`."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return FORMAT + nonce + aead.encrypt(nonce, plaintext, bind)


def open_sealed(aead: AESGCM, sealed: bytes, bind: bytes) -> bytes:
    """The plaintext of `seal`'s output; `Unreadable` if the key, bytes or binding differ."""
    if sealed[:1] != FORMAT or len(sealed) < 1 + NONCE_BYTES + 16:
        raise Unreadable("not a sealed value")
    try:
        return aead.decrypt(sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :], bind)
    except InvalidTag:
        raise Unreadable("does not open: wrong key, changed bytes or another row's") from None
