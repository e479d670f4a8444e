"""How long the office takes to merge scenario 2's 67 signatures (aim: under 50 ms in total).

    uv run python -m bench.agreements

Two mediator phones push 34 and 33 attested signatures of one agreement
(in batches of 10, as phones coming into coverage would), through
`SyncService.push`: batch signature, decoding, authorisation, merge,
signature checks, access, and the execution with its office receipt.
Baseline, same run: the same pushes to an office whose signature check is
switched off. Each figure is the median of several fresh offices.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import Add, Append, Change, PushRequest, Signature
from schemas.records import Agreement
from server.keys import OfficeKeys
from server.service import SyncService
from server.settings import Settings
from server.storage.directory import Device
from server.storage.sqlite import SqliteStore
from server.storage.vault import Vault
from sync import agreements, signing
from sync.atrest import KdfParams
from sync.clock import Clock, pack

WALL_MS = 1_795_000_000_000
SIGNERS = [*(f"p-household-{n:02d}" for n in range(1, 67)), "p-owner"]
TERMS = "The owner installs a grease trap within 14 days."
BAIDI = {"city": "Hangzhou", "district": "Xihu", "street": "Beishan"}


class Phone:
    def __init__(self, service: SyncService, role: str, name: str) -> None:
        self.key = Ed25519PrivateKey.generate()
        directory = service.directory
        user = directory.add_user(name, role, ["Hangzhou/Xihu"], WALL_MS)
        code = directory.issue_code(user.user_id, WALL_MS, 60_000)
        public = self.key.public_key().public_bytes_raw()
        self.device: Device = directory.enroll(code, public, public, name, WALL_MS)[0]
        self.stamp = 0
        self.batches = 0

    def change(self, record_type: str, record_id: str, fields=None, ops=()) -> Change:
        self.stamp += 1
        return Change(
            change_id=f"{self.device.device_id}-{self.stamp}",
            record_type=record_type,
            record_id=record_id,
            device_id=self.device.device_id,
            hlc=pack(WALL_MS, self.stamp),
            set=fields or {},
            ops=list(ops),
        )

    def batch(self, changes: list[Change]) -> PushRequest:
        self.batches += 1
        batch_id = f"b-{self.batches}"
        raws = [msgspec.msgpack.encode(c) for c in changes]
        manifest = signing.batch_message(self.device.device_id, batch_id, raws)
        return PushRequest(batch_id=batch_id, changes=raws, signature=self.key.sign(manifest))

    def signature(self, content_hash: str, signer: str) -> dict:
        unsigned = Signature(
            signer=signer,
            signed_at=agreements.moment(WALL_MS),
            content_hash=content_hash,
            signature=b"",
            witness=self.device.user.user_id,
            handwriting_hash="ab" * 32,
            device_id=self.device.device_id,
        )
        message = agreements.signature_message("a-grease", unsigned)
        signed = msgspec.structs.replace(unsigned, signature=self.key.sign(message))
        return msgspec.to_builtins(signed)


def one_run(folder: Path, check_signatures: bool) -> float:
    """Seconds the office spends on the signature pushes of one fresh office."""
    keys = OfficeKeys.generate("bench passphrase", KdfParams.new(n=2**10))
    store = SqliteStore(folder / "lianxin.db", Vault(folder / "data-keys.db", keys))
    service = SyncService(
        Settings(data_dir=folder),
        store,
        keys,
        Clock(lambda: WALL_MS),
        lambda: WALL_MS,
    )
    if not check_signatures:
        service.signatures = lambda change, before, after: None
    chen = Phone(service, "supervisor", "chen")
    sun, li = Phone(service, "mediator", "sun"), Phone(service, "mediator", "li")
    links = [Add(field="mediators", value=p.device.user.user_id) for p in (sun, li)]
    links.append(Add(field="agreements", value="a-grease"))
    chen_batch = chen.batch(
        [
            chen.change("case", "k-grease", {"title": "Grease", "location": BAIDI}, links),
            chen.change(
                "agreement",
                "a-grease",
                {
                    "case": "k-grease",
                    "terms": TERMS,
                    "required_signers": SIGNERS,
                    "status": "draft",
                },
            ),
        ]
    )
    service.push(chen.device, chen_batch)
    content = agreements.content_hash(
        "a-grease", Agreement(case="k-grease", terms=TERMS, required_signers=SIGNERS)
    )
    pushes = []
    for phone, signers in ((sun, SIGNERS[:34]), (li, SIGNERS[34:])):
        for start in range(0, len(signers), 10):
            changes = [
                phone.change(
                    "agreement",
                    "a-grease",
                    ops=[Append(field="signatures", entry=phone.signature(content, signer))],
                )
                for signer in signers[start : start + 10]
            ]
            pushes.append((phone.device, phone.batch(changes)))
    began = time.perf_counter()
    for device, request in pushes:
        service.push(device, request)
    elapsed = time.perf_counter() - began
    status = store.db.execute(
        "SELECT count(*) FROM changes WHERE device_id = ?", [service.keys.office_id]
    ).fetchone()[0]
    assert status == 2, "the agreement should have gone to collecting, then executed"
    store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    figures = {}
    for checked in (True, False):
        times = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                times.append(one_run(Path(folder), checked))
        figures[checked] = statistics.median(times) * 1000
    print("merging 67 signatures of one agreement (7 pushes), median of", args.runs, "offices")
    print(f"  with signature checks     {figures[True]:7.1f} ms   (aim: under 50 ms)")
    print(f"  checks switched off       {figures[False]:7.1f} ms")
    print(f"  ratio checked / unchecked {figures[True] / figures[False]:7.2f}x")


if __name__ == "__main__":
    main()
