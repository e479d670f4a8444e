"""An office served in-process by the real app, and devices that speak the protocol by hand.

These devices build every request from PROTOCOL.md directly (not through
`sync.client`), so server tests do not depend on the reference client.
"""

import base64
import hashlib
import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from litestar.testing import TestClient

from schemas import (
    Change,
    Enrollment,
    EnrollRequest,
    PullRequest,
    PushRequest,
    SignedPull,
    SignedPush,
)
from server.app import create_app
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.directory import Directory
from sync import signing
from sync.changes import encode_change
from sync.clock import Clock, pack
from sync.envelope import PULL_ENVELOPE, PUSH_ENVELOPE, open_v2_answer, seal_v2
from tests.conftest import Wall, make_store, office_keys

MSGPACK = {"content-type": "application/msgpack"}
PUSH_V2 = {"content-type": PUSH_ENVELOPE}
PULL_V2 = {"content-type": PULL_ENVELOPE}


def enrolment(code):
    """New device keys, and the body of an enrolment with `code` that proves them."""
    key, kem_key = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    public, kem = key.public_key().public_bytes_raw(), kem_key.public_key().public_bytes_raw()
    proof = key.sign(signing.enroll_message(code, public, kem))
    body = EnrollRequest(code=code, signing_key=public, kem_key=kem, label="t", proof=proof)
    return key, kem_key, msgspec.msgpack.encode(body)


@dataclass
class Phone:
    """A device that signs its requests exactly as PROTOCOL.md says."""

    http: TestClient
    key: Ed25519PrivateKey
    enrollment: Enrollment
    wall: Wall
    kem: X25519PrivateKey
    nonces: itertools.count = field(default_factory=lambda: itertools.count(1))
    stamps: itertools.count = field(default_factory=lambda: itertools.count(1))
    # The version 2 push and pull built last, to open their answers.
    last_push: SignedPush | None = None
    last_pull: SignedPull | None = None

    @property
    def device_id(self) -> str:
        return self.enrollment.device_id

    def headers(self, path, body, *, timestamp=None, nonce=None, key=None):
        timestamp = self.wall.ms // 1000 if timestamp is None else timestamp
        nonce = nonce or f"nonce-{self.device_id[-8:]}-{next(self.nonces):08d}"
        message = signing.request_message("POST", path, timestamp, nonce, self.device_id, body)
        signature = (key or self.key).sign(message)
        return {
            **MSGPACK,
            "lianxin-device": self.device_id,
            "lianxin-timestamp": str(timestamp),
            "lianxin-nonce": nonce,
            "lianxin-signature": base64.b64encode(signature).decode(),
        }

    def post(self, path, body, **signing_options):
        return self.http.post(
            path, content=body, headers=self.headers(path, body, **signing_options)
        )

    def change(self, record_type, record_id, set=None, ops=(), seen=None):
        n = next(self.stamps)
        return Change(
            change_id=f"{self.device_id}-{n}",
            record_type=record_type,
            record_id=record_id,
            device_id=self.device_id,
            hlc=pack(self.wall.ms, n),
            seen=seen or {},
            set=set or {},
            ops=list(ops),
        )

    def push_body(self, changes, batch_id="b-1", raw=None):
        raws = raw if raw is not None else [msgspec.msgpack.encode(c) for c in changes]
        manifest = signing.batch_message(self.device_id, batch_id, raws)
        request = PushRequest(batch_id=batch_id, changes=raws, signature=self.key.sign(manifest))
        return msgspec.msgpack.encode(request)

    def push(self, changes, batch_id="b-1"):
        return self.post("/v1/sync/push", self.push_body(changes, batch_id))

    def push_v2_body(self, raws, batch_id="b-1", *, timestamp_ms=None, key=None, key_id=None):
        """A version 2 push of `raws` (changes' bytes), signed and sealed by hand."""
        timestamp_ms = self.wall.ms if timestamp_ms is None else timestamp_ms
        push = signing.signed_push(key or self.key, self.device_id, batch_id, timestamp_ms, raws)
        self.last_push = push
        return self.sealed_v2("push", push, key_id)

    def pull_v2_body(
        self,
        cursor=None,
        limit=1000,
        *,
        pushed=(),
        timestamp_ms=None,
        request_id=None,
        key=None,
        key_id=None,
    ):
        """A version 2 pull from `cursor`, signed and sealed by hand."""
        timestamp_ms = self.wall.ms if timestamp_ms is None else timestamp_ms
        request_id = request_id or f"pull-{self.device_id[-8:]}-{next(self.nonces):08d}"
        pull = signing.signed_pull(
            key or self.key, self.device_id, request_id, timestamp_ms, cursor, limit, pushed
        )
        self.last_pull = pull
        return self.sealed_v2("pull", pull, key_id)

    def sealed_v2(self, purpose, signed, key_id=None):
        office = self.enrollment.office
        return seal_v2(
            purpose,
            signing.encode_pull(signed)
            if isinstance(signed, SignedPull)
            else msgspec.msgpack.encode(signed),
            key_id or office.kem_key_id,
            X25519PublicKey.from_public_bytes(office.kem_key),
        )

    def push_v2(self, body):
        return self.http.post("/v2/sync/push", content=body, headers=PUSH_V2)

    def pull_v2(self, body):
        return self.http.post("/v2/sync/pull", content=body, headers=PULL_V2)

    def push_v2_answer(self, answer):
        """The plaintext of the sealed answer to the version 2 push built last."""
        return self._v2_answer("push", PUSH_ENVELOPE, self.last_push, answer)

    def pull_v2_answer(self, answer):
        """The plaintext of the sealed answer to the version 2 pull built last."""
        return self._v2_answer("pull", PULL_ENVELOPE, self.last_pull, answer)

    def _v2_answer(self, purpose, media_type, signed, answer):
        assert answer.status_code == 200, answer.content
        assert answer.headers["content-type"].startswith(media_type)
        return open_v2_answer(purpose, answer.content, 1, signed.signature, self.kem)

    def pushed(self, changes, batch_id="b-1", version=1):
        """The decoded answer to a push of `changes` by protocol `version` (1 or 2)."""
        if version == 1:
            return msgspec.msgpack.decode(self.push(changes, batch_id).content)
        answer = self.push_v2(self.push_v2_body([encode_change(c) for c in changes], batch_id))
        return msgspec.msgpack.decode(self.push_v2_answer(answer))

    def pull(self, cursor=None, limit=1000):
        body = msgspec.msgpack.encode(PullRequest(cursor=cursor, limit=limit))
        return self.post("/v1/sync/pull", body)

    def pulled(self, cursor=None, version=1):
        """The decoded page a pull from `cursor` by protocol `version` (1 or 2) gets."""
        if version == 1:
            return msgspec.msgpack.decode(self.pull(cursor).content)
        return msgspec.msgpack.decode(self.pull_v2_answer(self.pull_v2(self.pull_v2_body(cursor))))

    def pull_all(self, version=1):
        """Every item this device may see, following cursors to the end."""
        items, cursor = [], None
        while True:
            page = self.pulled(cursor, version)
            items += page["items"]
            cursor = page["cursor"]
            if not page["has_more"]:
                return items, cursor


@dataclass
class Office:
    store: object
    directory: Directory
    keys: OfficeKeys
    http: TestClient
    wall: Wall

    def enroll(self, role, org_units=("Hangzhou/Gongshu",), name=None):
        user = self.directory.add_user(name or role, role, list(org_units), self.wall.ms)
        code = self.directory.issue_code(user.user_id, self.wall.ms, 3600_000)
        return self.enroll_with(code)

    def enroll_with(self, code):
        key, kem_key, body = enrolment(code)
        answer = self.http.post("/v1/enroll", content=body, headers=MSGPACK)
        assert answer.status_code == 200, answer.content
        enrollment = msgspec.msgpack.decode(answer.content, type=Enrollment)
        return Phone(self.http, key, enrollment, self.wall, kem_key)

    def fingerprint(self):
        """A hash of everything stored that a refused request must not change."""
        digest = hashlib.sha256()
        for table in (
            "records",
            "changes",
            "quarantine",
            "conflicts",
            "batches",
            "access",
            "evictions",
            "devices",
            "users",
            "enrollment_codes",
        ):
            cursor = self.store.db.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
            # When a device was last seen is bookkeeping of the request itself, like its nonce.
            kept = [i for i, c in enumerate(cursor.description) if c[0] != "last_seen_ms"]
            for row in cursor:
                digest.update(repr([row[i] for i in kept]).encode())
        return digest.hexdigest()


@contextmanager
def running_office(
    folder, require_sealed=False, secure_cookies=False, admin_second_factor=False, **settings
):
    """A fresh office in `folder`, served in-process (for tests that need several).

    The hand-built phones here send plain bodies, so offices in these tests
    accept unsealed sync unless `require_sealed` (the production default).
    The test client talks plain HTTP, so console cookies are not `Secure`
    unless asked for (the production default). Admins sign in with a
    password alone unless `admin_second_factor` (the production default).
    """
    keys = office_keys()
    store = make_store(folder / "lianxin.db", keys)
    wall = Wall()
    app = create_app(
        Settings(
            data_dir=folder,
            require_sealed=require_sealed,
            secure_cookies=secure_cookies,
            admin_second_factor=admin_second_factor,
            **{"max_body_bytes": 64 * 1024, "max_batch_changes": 50, **settings},
        ),
        store=store,
        keys=keys,
        clock=Clock(wall),
        wall_ms=wall,
    )
    with TestClient(app) as http:
        yield Office(store, Directory(store), keys, http, wall)
    store.close()


@pytest.fixture
def office(tmp_path):
    with running_office(tmp_path) as running:
        yield running
