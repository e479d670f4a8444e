"""What a push costs when its cases link a party that many cases already link.

    uv run python -m bench.popular_party
    uv run python -m bench.popular_party --linked 20000

A city has parties in many disputes: a property company, a landlord, a
street's market. Every case a push touches has its linked records' readers
worked out again, and a party is seen by whoever sees a case linking it.

Built first, untimed: an office, one mediator phone, and `--linked` cases
that all name one party, pushed through `SyncService.push` in batches of
500. Measured, alternating: batches of 500 new cases that also name that
party, against batches of 500 new cases that each name a party of their
own (the baseline, same office, same run). Printed: the median batch of
each and their ratio; a ratio near 1 means the crowded party costs a push
nothing much.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import Add, Change, PushRequest
from server.keys import OfficeKeys
from server.service import SyncService
from server.settings import Settings
from server.storage.sqlite import SqliteStore
from server.storage.vault import Vault
from sync import signing
from sync.atrest import KdfParams
from sync.clock import Clock, pack

WALL_MS = 1_795_000_000_000
BATCH = 500
PARTY = "p-harbour-property"
XIHU = {"city": "Hangzhou", "district": "Xihu", "street": "Beishan"}


class Phone:
    """A mediator's phone making new cases, each pushed as one signed change."""

    def __init__(self, service: SyncService) -> None:
        self.key = Ed25519PrivateKey.generate()
        directory = service.directory
        user = directory.add_user("sun", "mediator", ["Hangzhou/Xihu"], WALL_MS)
        code = directory.issue_code(user.user_id, WALL_MS, 60_000)
        public = self.key.public_key().public_bytes_raw()
        self.device = directory.enroll(code, public, public, "sun", WALL_MS)
        self.service = service
        self.made = 0

    def change(self, record_type: str, record_id: str, fields: dict, ops: list) -> Change:
        self.made += 1
        return Change(
            change_id=f"c-{self.made}",
            record_type=record_type,
            record_id=record_id,
            device_id=self.device.device_id,
            hlc=pack(WALL_MS, self.made),
            set=fields,
            ops=ops,
        )

    def case(self, parties: list[str]) -> Change:
        ops = [Add(field="mediators", value=self.device.user.user_id)]
        ops += [Add(field="parties", value=party) for party in parties]
        fields = {"title": f"dispute {self.made}", "location": XIHU}
        return self.change("case", f"k-{self.made:07d}", fields, ops)

    def push(self, changes: list[Change]) -> float:
        """Push one signed batch; seconds the office took."""
        raws = [msgspec.msgpack.encode(c) for c in changes]
        batch_id = f"b-{self.made}"
        signature = self.key.sign(signing.batch_message(self.device.device_id, batch_id, raws))
        began = time.perf_counter()
        answer = self.service.push(
            self.device, PushRequest(batch_id=batch_id, changes=raws, signature=signature)
        )
        elapsed = time.perf_counter() - began
        if {r.status for r in answer.results} != {"applied"}:
            raise RuntimeError(f"a change was not applied: {answer.results[:3]}")
        return elapsed

    def own_parties(self) -> list[list[str]]:
        """A batch's worth of party ids no case names yet, one a case."""
        return [[f"p-own-{self.made}-{n}"] for n in range(BATCH)]


def run(folder: Path, linked: int, rounds: int) -> tuple[list[float], list[float], int]:
    """Batch seconds naming the crowded party, and naming parties of their own."""
    keys = OfficeKeys.generate("bench passphrase", KdfParams.new(n=2**10))
    store = SqliteStore(folder / "lianxin.db", Vault(folder / "data-keys.db", keys))
    service = SyncService(
        Settings(data_dir=folder), store, keys, Clock(lambda: WALL_MS), lambda: WALL_MS
    )
    phone = Phone(service)
    company = {"kind": "organisation", "name": "Harbour Property Management"}
    phone.push([phone.change("party", PARTY, company, [])])
    for start in range(0, linked, BATCH):
        phone.push([phone.case([PARTY]) for _ in range(min(BATCH, linked - start))])
    crowded, alone = [], []
    for _ in range(rounds):
        crowded.append(phone.push([phone.case([PARTY, *own]) for own in phone.own_parties()]))
        alone.append(phone.push([phone.case(own) for own in phone.own_parties()]))
    (readers,) = store.db.execute(
        "SELECT count(*) FROM access WHERE record_type = 'party' AND record_id = ?", [PARTY]
    ).fetchone()
    (linking,) = store.db.execute(
        "SELECT count(*) FROM links WHERE record_type = 'party' AND record_id = ?", [PARTY]
    ).fetchone()
    store.close()
    if readers != 1:  # the mediator, who sees every case naming it
        raise RuntimeError(f"the party has {readers} readers, not its mediator alone")
    return crowded, alone, linking


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--linked", type=int, default=10_000, help="cases naming the party first")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lianxin-popular-party-") as folder:
        crowded, alone, linking = run(Path(folder), args.linked, args.rounds)
    many, few = statistics.median(crowded) * 1000, statistics.median(alone) * 1000
    print(f"a push of {BATCH} new cases, median of {args.rounds}; the party ends in {linking:,}")
    print(f"  each also naming the party of {args.linked:,}+ cases  {many:8.1f} ms")
    print(f"  each naming a party of its own (baseline)      {few:8.1f} ms")
    print(f"  ratio                                          {many / few:8.2f}x")


if __name__ == "__main__":
    main()
