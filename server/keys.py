"""The office's own keys, in one key file locked under a passphrase.

    Ed25519 signing key   receipts and checkpoints
    X25519 KEM keys       sealed sync; a rotated key stays accepted until retired
    master keys           wrap each record's data key (server.storage.vault)
    index key             keyed blind indexes of people (server.storage.people)
    pseudonym key         informants' stable pseudonyms
    cursor secret         MACs pull cursors

On disk the file is JSON `{version, office_id, kdf, sealed}`: `sealed` is
the msgpack `KeySet` under AES-256-GCM with a key derived from the
passphrase by scrypt (`kdf` holds the salt and cost). A running server keeps
that derived key, so `reload()` can pick up a rotation made by `lianxin keys
rotate` without asking for the passphrase again.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sync import signing
from sync.atrest import KdfParams, derive_key, new_key, open_sealed, seal
from sync.errors import Unreadable

BIND = b"lianxin office key file v2"


class NamedKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key_id: str
    secret: bytes
    created_ms: int


class KeySet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    office_id: str
    signing_key: bytes
    # The last of each list is the current one; earlier ones are still accepted.
    kem_keys: list[NamedKey]
    master_keys: list[NamedKey]
    cursor_secret: bytes
    index_key: bytes
    pseudonym_key: bytes


class LockedFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int
    office_id: str
    kdf: KdfParams
    sealed: bytes


class OfficeKeys:
    """The office's private keys, unlocked once at start-up."""

    def __init__(self, keys: KeySet, lock: bytes, kdf: KdfParams, path: Path | None = None):
        self._lock = lock
        self.kdf = kdf
        self.path = path
        self._mtime = path.stat().st_mtime_ns if path and path.exists() else None
        self._use(keys)

    def _use(self, keys: KeySet) -> None:
        self.keyset = keys
        self.office_id = keys.office_id
        self.signing = Ed25519PrivateKey.from_private_bytes(keys.signing_key)
        self.signing_public = self.signing.public_key().public_bytes_raw()
        self.kems = {k.key_id: X25519PrivateKey.from_private_bytes(k.secret) for k in keys.kem_keys}
        self.kem_key_id = keys.kem_keys[-1].key_id
        self.kem = self.kems[self.kem_key_id]
        self.kem_public = self.kem.public_key().public_bytes_raw()
        since_ms = keys.kem_keys[-1].created_ms
        vouched = signing.office_key_message(
            self.office_id, self.kem_key_id, since_ms, self.kem_public
        )
        # One attribute, set at once: a request served during a reload never signs or
        # shows a mix of the old key and the new.
        self.kem_statement: dict[str, Any] = {
            "kem_key_id": self.kem_key_id,
            "kem_key": self.kem_public,
            "kem_key_since_ms": since_ms,
            "kem_key_signature": self.signing.sign(vouched),
        }
        self.masters = {k.key_id: AESGCM(k.secret) for k in keys.master_keys}
        self.master_id = keys.master_keys[-1].key_id
        self.cursor_secret = keys.cursor_secret
        self.index_key = keys.index_key
        self.pseudonym_key = keys.pseudonym_key

    @classmethod
    def generate(cls, passphrase: str, kdf: KdfParams | None = None, now_ms: int = 0) -> OfficeKeys:
        kdf = kdf or KdfParams.new()
        office_id = f"office-{uuid.uuid4().hex[:12]}"
        keys = KeySet(
            office_id=office_id,
            signing_key=secrets.token_bytes(32),
            kem_keys=[NamedKey(key_id=f"{office_id}.kem1", secret=new_key(), created_ms=now_ms)],
            master_keys=[
                NamedKey(key_id=f"{office_id}.master1", secret=new_key(), created_ms=now_ms)
            ],
            cursor_secret=new_key(),
            index_key=new_key(),
            pseudonym_key=new_key(),
        )
        return cls(keys, derive_key(passphrase, kdf), kdf)

    @classmethod
    def load(cls, path: Path, passphrase: str) -> OfficeKeys:
        """Unlock the key file; `Unreadable` on a wrong passphrase or a changed file."""
        locked = _read(path)
        lock = derive_key(passphrase, locked.kdf)
        return cls(_unlock(locked, lock), lock, locked.kdf, path)

    def save(self, path: Path, *, new: bool = False) -> None:
        """Write the key file readable by this user only: atomically, or `new` (never over one)."""
        sealed = seal(AESGCM(self._lock), msgspec.msgpack.encode(self.keyset), BIND)
        locked = LockedFile(version=2, office_id=self.office_id, kdf=self.kdf, sealed=sealed)
        target = path if new else path.with_name(path.name + ".new")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if new else os.O_TRUNC)
        descriptor = os.open(target, flags, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(msgspec.json.encode(locked))
            out.flush()
            os.fsync(out.fileno())
        if not new:
            os.replace(target, path)
        self.path = path
        self._mtime = path.stat().st_mtime_ns

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Change the keys and save them with no other writer in between: the key file is
        locked, read again, and saved when the block ends without an error.

        Two `lianxin keys rotate` run at once would otherwise each name a new key
        `master2`, and the second file would lose the key the first one wrapped under.
        """
        assert self.path is not None
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._read_again()
            yield
            self.save(self.path)
        finally:
            os.close(lock)  # and with it the lock

    def reload(self) -> bool:
        """Pick up a rotation written to the key file since it was read; True if it changed."""
        if self.path is None or self.path.stat().st_mtime_ns == self._mtime:
            return False
        self._read_again()
        return True

    def _read_again(self) -> None:
        assert self.path is not None
        self._mtime = self.path.stat().st_mtime_ns
        self._use(_unlock(_read(self.path), self._lock))

    def rotate(self, *, master: bool, kem: bool, now_ms: int) -> None:
        """Make a new current master key and/or KEM key; the old ones stay until retired."""
        keys = self.keyset
        if master:
            fresh = _next(keys.master_keys, f"{self.office_id}.master", now_ms)
            keys = msgspec.structs.replace(keys, master_keys=[*keys.master_keys, fresh])
        if kem:
            fresh = _next(keys.kem_keys, f"{self.office_id}.kem", now_ms)
            keys = msgspec.structs.replace(keys, kem_keys=[*keys.kem_keys, fresh])
        self._use(keys)

    def retire(self, key_id: str) -> None:
        """Forget an earlier master or KEM key (never the current one)."""
        keys = self.keyset
        if key_id in (self.master_id, self.kem_key_id):
            raise ValueError(f"{key_id} is current; rotate first")
        masters = [k for k in keys.master_keys if k.key_id != key_id]
        kems = [k for k in keys.kem_keys if k.key_id != key_id]
        if len(masters) + len(kems) == len(keys.master_keys) + len(keys.kem_keys):
            raise ValueError(f"no key {key_id}")
        self._use(msgspec.structs.replace(keys, master_keys=masters, kem_keys=kems))


def _next(keys: list[NamedKey], prefix: str, now_ms: int) -> NamedKey:
    number = 1 + max(int(k.key_id.removeprefix(prefix)) for k in keys)
    # Later than every key before it even on a clock that went back: devices take a KEM
    # key only if it is newer than theirs (PROTOCOL.md section 14).
    created_ms = max(now_ms, 1 + max(k.created_ms for k in keys))
    return NamedKey(key_id=f"{prefix}{number}", secret=new_key(), created_ms=created_ms)


def _read(path: Path) -> LockedFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=LockedFile)
    except msgspec.DecodeError as error:
        raise Unreadable(f"{path} is not a locked office key file: {error}") from None


def _unlock(locked: LockedFile, lock: bytes) -> KeySet:
    try:
        plain = open_sealed(AESGCM(lock), locked.sealed, BIND)
    except Unreadable:
        raise Unreadable("the office key file does not open: wrong passphrase?") from None
    return msgspec.msgpack.decode(plain, type=KeySet)
