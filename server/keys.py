"""The office's own keys: Ed25519 for receipts and checkpoints, X25519 for sealed sync.

Kept in one key file in the data folder, readable by the server's user only.
(Encrypting the key file under a passphrase is the confidentiality issue's.)
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class KeyFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int = 1
    office_id: str
    signing_key: bytes
    kem_key: bytes
    cursor_secret: bytes


class OfficeKeys:
    """The office's private keys, loaded once at start-up."""

    def __init__(self, file: KeyFile) -> None:
        self.office_id = file.office_id
        self.signing = Ed25519PrivateKey.from_private_bytes(file.signing_key)
        self.kem = X25519PrivateKey.from_private_bytes(file.kem_key)
        self.cursor_secret = file.cursor_secret
        self.signing_public = self.signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kem_public = self.kem.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        # Named in every envelope sealed to this key; a rotated key gets the next number.
        self.kem_key_id = f"{self.office_id}.kem1"

    @classmethod
    def generate(cls) -> OfficeKeys:
        return cls(
            KeyFile(
                office_id=f"office-{uuid.uuid4().hex[:12]}",
                signing_key=secrets.token_bytes(32),
                kem_key=secrets.token_bytes(32),
                cursor_secret=secrets.token_bytes(32),
            )
        )

    def save(self, path: Path) -> None:
        """Write the key file, creating it readable by this user only."""
        file = KeyFile(
            office_id=self.office_id,
            signing_key=self.signing.private_bytes_raw(),
            kem_key=self.kem.private_bytes_raw(),
            cursor_secret=self.cursor_secret,
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(msgspec.json.encode(file))

    @classmethod
    def load(cls, path: Path) -> OfficeKeys:
        return cls(msgspec.json.decode(path.read_bytes(), type=KeyFile))
