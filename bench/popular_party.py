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

from bench.agreements import WALL_MS, Phone
from schemas import Add, Change
from server.keys import OfficeKeys
from server.service import SyncService
from server.settings import Settings
from server.storage.sqlite import SqliteStore
from server.storage.vault import Vault
from sync.atrest import KdfParams
from sync.clock import Clock

BATCH = 500
PARTY = "p-harbour-property"
XIHU = {"city": "Hangzhou", "district": "Xihu", "street": "Beishan"}


def case(phone: Phone, parties: list[str]) -> Change:
    """A new case of `phone`'s mediator naming `parties`."""
    ops = [Add(field="mediators", value=phone.device.user.user_id)]
    ops += [Add(field="parties", value=party) for party in parties]
    number = phone.stamp + 1
    return phone.change(
        "case", f"k-{number:07d}", {"title": f"dispute {number}", "location": XIHU}, ops
    )


def own_parties(phone: Phone) -> list[list[str]]:
    """A batch's worth of party ids no case names yet, one a case."""
    return [[f"p-own-{phone.stamp}-{n}"] for n in range(BATCH)]


def push(service: SyncService, phone: Phone, changes: list[Change]) -> float:
    """Push one signed batch; seconds the office took."""
    request = phone.batch(changes)
    began = time.perf_counter()
    answer = service.push(phone.device, request)
    elapsed = time.perf_counter() - began
    if {r.status for r in answer.results} != {"applied"}:
        raise RuntimeError(f"a change was not applied: {answer.results[:3]}")
    return elapsed


def run(folder: Path, linked: int, rounds: int) -> tuple[list[float], list[float], int]:
    """Batch seconds naming the crowded party, and naming parties of their own."""
    keys = OfficeKeys.generate("bench passphrase", KdfParams.new(n=2**10))
    store = SqliteStore(folder / "lianxin.db", Vault(folder / "data-keys.db", keys))
    service = SyncService(
        Settings(data_dir=folder), store, keys, Clock(lambda: WALL_MS), lambda: WALL_MS
    )
    phone = Phone(service, "mediator", "sun")
    company = {"kind": "organisation", "name": "Harbour Property Management"}
    push(service, phone, [phone.change("party", PARTY, company)])
    for start in range(0, linked, BATCH):
        push(service, phone, [case(phone, [PARTY]) for _ in range(min(BATCH, linked - start))])
    crowded, alone = [], []
    for _ in range(rounds):
        crowded.append(push(service, phone, [case(phone, [PARTY, *o]) for o in own_parties(phone)]))
        alone.append(push(service, phone, [case(phone, o) for o in own_parties(phone)]))
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
