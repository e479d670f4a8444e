"""Field devices: the reference client on a device file, a faulty network, a skewed clock.

Each `FieldDevice` is a `DeviceClient` whose wall clock is the simulation's
calendar plus the device's own skew, and whose HTTP goes through a
`FaultyTransport`. `work()` makes the edits a person in that role makes in
one part of a day, from what the device shows; `sync()` retries as a phone
does when the signal comes and goes.

Every choice a device makes is drawn from its own seeded `random.Random`,
over lists kept in the order things were made, never over sets or over
anything sorted by the ids the office issues (those differ from run to run).
Each device writes what it did to `actions`, which a seed replays.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from schemas.changes import Add, Append, Op, Remove
from server.fleet.faults import Faults, FaultyTransport
from sync.atrest import KdfParams
from sync.client import DeviceClient
from sync.errors import LianxinError
from sync.merge import Rejected

CITY = "Hangzhou"
DISTRICTS = ("Gongshu", "Xihu", "Binjiang")
STREETS = ("Mishixiang", "Beishan", "Changhe", "Wenhui")
CASE_CATEGORIES = ("neighbours", "family", "property", "labour", "environment", "infrastructure")
# What a case made from a warning is filed under, by the warning's category.
WARNING_CASES = {
    "drains": "infrastructure",
    "noise": "neighbours",
    "wages": "labour",
    "parking": "neighbours",
}
PIN = "246810"
# Device files of simulated phones are thrown away: a cheap scrypt cost keeps
# 200 of them from spending the run deriving keys.
CHEAP_KDF_N = 2**4
# Concurrent edits go to each district's first cases, which many devices hold.
HOT_CASES = 4


class SimClock:
    """The simulation's calendar in milliseconds, moved by hand, never by sleeping."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: float) -> None:
        self.ms += max(int(ms), 0)

    def sleep(self, seconds: float) -> None:
        """What the faulty network's delays call: time passes for everyone."""
        self.advance(seconds * 1000)


@dataclass
class Registry:
    """The ids the fleet has made, by district: where devices look for work."""

    cases: dict[str, list[str]] = field(default_factory=lambda: {d: [] for d in DISTRICTS})
    warnings: dict[str, list[str]] = field(default_factory=lambda: {d: [] for d in DISTRICTS})
    mediators: dict[str, list[str]] = field(default_factory=lambda: {d: [] for d in DISTRICTS})
    # Who made each case: its maker keeps seeing it whoever is assigned.
    makers: dict[str, str] = field(default_factory=dict)
    # The cases each mediator was ever given: where a mediator looks for its work.
    given: dict[str, list[str]] = field(default_factory=dict)

    def new_case(self, district: str, case_id: str, maker: str, mediators: list[str]) -> None:
        self.cases[district].append(case_id)
        self.makers[case_id] = maker
        for mediator in mediators:
            self.give(mediator, case_id)

    def give(self, mediator: str, case_id: str) -> None:
        self.given.setdefault(mediator, []).append(case_id)


@dataclass
class FieldDevice:
    """One simulated phone: its client and network, what it made, and how its syncs went."""

    name: str
    role: str
    user_id: str
    district: str
    client: DeviceClient
    transport: FaultyTransport
    http: httpx.Client
    path: Path
    skew_ms: int
    rng: random.Random
    tag: str  # the run's, in every id the device makes (see `open`)
    offline_until_day: int = 0
    made: list[str] = field(default_factory=list)
    # The warnings this device reported, in order: an informant updates its own.
    reported: list[str] = field(default_factory=list)
    # What it did, a line per edit and per sync try (see `fleet_words`).
    actions: list[str] = field(default_factory=list)
    refused_locally: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    evicted: int = 0
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def open(
        cls,
        folder: Path,
        name: str,
        role: str,
        user_id: str,
        district: str,
        *,
        url: str,
        clock: SimClock,
        skew_ms: int,
        seed: int,
        tag: str,
    ) -> FieldDevice:
        """A device file in `folder`, not yet enrolled. `tag` goes into every id it makes,
        so that a second run against one office never repeats the first's ids (the office
        would answer them `duplicate`); it is the run's, and no draw from the seed."""
        rng = random.Random(seed)
        transport = FaultyTransport(
            httpx.HTTPTransport(), Faults(), random.Random(seed + 1), sleep=clock.sleep
        )
        http = httpx.Client(base_url=url, transport=transport, timeout=60)
        counter = itertools.count(1)
        path = folder / f"{name}.db"
        client = DeviceClient(
            path,
            http,
            passphrase=PIN,
            kdf=KdfParams.new(n=CHEAP_KDF_N),
            wall_ms=lambda: clock() + skew_ms,
            new_id=lambda: f"{name}.{tag}-{next(counter)}",
        )
        return cls(name, role, user_id, district, client, transport, http, path, skew_ms, rng, tag)

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def sync(self, attempts: int, clock: SimClock) -> bool:
        """Push and pull until done, retrying after a failure; False if every try failed."""
        for _ in range(attempts):
            try:
                report = self.client.sync()
            except (httpx.TransportError, LianxinError) as error:
                self.errors[type(error).__name__] += 1
                self.actions.append(f"sync failed: {type(error).__name__}")
                clock.advance(self.rng.uniform(5_000, 120_000))  # wait for a better signal
                continue
            pulled = report.pulled
            self.evicted += pulled.evicted
            self.actions.append(
                f"sync: pushed {len(report.pushed)}, pulled {pulled.applied} and"
                f" {pulled.states} whole, evicted {pulled.evicted}"
            )
            return True
        return False

    # -- work ---------------------------------------------------------------------------

    def edit(self, record_type: str, record_id: str, set: dict[str, Any], ops: list[Op]) -> None:
        wanted = msgspec.json.encode([set, ops]).decode()
        self.actions.append(f"edit {record_type} {record_id} {wanted}")
        try:
            change = self.client.edit(record_type, record_id, set=set, ops=ops)
        except Rejected as refused:
            # The device's own merge refuses it (say, a status this record has passed):
            # the phone tells its holder at once, and nothing is queued.
            self.refused_locally[refused.reason] += 1
            self.actions.append(f"refused: {refused.reason}")
            return
        self.made.append(change.change_id)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.name}.{self.tag}-{next(self.ids)}"

    def held(self, record_type: str, candidates: list[str], tries: int = 6) -> str | None:
        """One of `candidates` that this device shows, picked at random."""
        for record_id in self.rng.sample(candidates, min(tries, len(candidates))):
            if self.client.record(record_type, record_id) is not None:
                return record_id
        return None

    def work(self, registry: Registry, now: datetime, concurrent: float) -> None:
        """One part of a day's work for this device's role."""
        match self.role:
            case "informant":
                self._inform(registry, now)
            case "mediator":
                self._mediate(registry, now, concurrent)
            case "supervisor":
                self._supervise(registry, concurrent)

    def _location(self) -> dict[str, str]:
        street = self.rng.choice(STREETS)
        return {"city": CITY, "district": self.district, "street": street}

    def _inform(self, registry: Registry, now: datetime) -> None:
        roll = self.rng.random()
        if roll < 0.3:
            warning_id = self.new_id("w")
            registry.warnings[self.district].append(warning_id)
            self.reported.append(warning_id)
            self.edit(
                "warning",
                warning_id,
                {
                    "observed_at": now.isoformat(),
                    "location": self._location(),
                    "category": self.rng.choice(["drains", "noise", "wages", "parking"]),
                    "severity": self.rng.choice(["low", "medium", "high"]),
                    "description": f"Seen on {now:%d %b}: households worried.",
                    "people_affected": self.rng.randint(1, 60),
                    "status": "open",
                },
                [],
            )
        elif roll < 0.45:
            own = self.held("warning", self.reported)
            if own is not None:
                count = self.rng.randint(1, 80)
                self.edit("warning", own, {"people_affected": count}, [])

    def _mediate(self, registry: Registry, now: datetime, concurrent: float) -> None:
        cases = registry.cases[self.district]
        case_id = self.held("case", registry.given.get(self.user_id, [])[-10:])
        if case_id is None or self.rng.random() < 0.05:
            case_id = self.new_id("k")
            registry.new_case(self.district, case_id, self.user_id, [self.user_id])
            title = f"Dispute raised at a door visit, {now:%d %b}"
            self.edit(
                "case",
                case_id,
                {
                    "title": title,
                    "category": self.rng.choice(CASE_CATEGORIES),
                    "location": self._location(),
                    "status": "assigned",
                },
                [Add(field="mediators", value=self.user_id)],
            )
            return
        roll = self.rng.random()
        if roll < concurrent:
            # The same field of one of the district's first cases, which others edit too.
            case_id = self.held("case", cases[:HOT_CASES]) or case_id
            self.edit("case", case_id, {"summary": f"{self.name} at {now:%d %b %H:%M}"}, [])
        elif roll < concurrent + 0.35:
            entry = {
                "entry_id": self.new_id("v"),
                "at": now.isoformat(),
                "by": self.user_id,
                "summary": "Visited both households; they agree to meet.",
            }
            self.edit("case", case_id, {}, [Append(field="visits", entry=entry)])
        elif roll < concurrent + 0.5:
            entry = {"entry_id": self.new_id("n"), "at": now.isoformat(), "by": self.user_id}
            self.edit("case", case_id, {}, [Append(field="notes", entry=entry | {"text": "ok"})])
        elif roll < concurrent + 0.7:
            households = self.rng.randint(1, 70)
            self.edit("case", case_id, {"households": households}, [Add(field="tags", value="d")])
        else:
            record = self.client.record("case", case_id)
            status = getattr(record, "status", "new")
            following = {"assigned": "in_mediation", "in_mediation": "resolved"}
            if status in following:
                self.edit("case", case_id, {"status": following[status]}, [])

    def _supervise(self, registry: Registry, concurrent: float) -> None:
        roll = self.rng.random()
        mediators = registry.mediators[self.district]
        if roll < 0.35:
            warning_id = self.held("warning", registry.warnings[self.district])
            if warning_id is None:
                return
            warning = self.client.record("warning", warning_id)
            if getattr(warning, "status", None) != "open":
                return
            if self.rng.random() < 0.5:
                self.edit("warning", warning_id, {"status": "triaged", "response": "Seen."}, [])
                return
            # Triage into a case and assign a mediator: scenario 1.
            case_id = self.new_id("k")
            chosen = self.rng.sample(mediators, min(2, len(mediators)))
            registry.new_case(self.district, case_id, self.user_id, chosen)
            ops: list[Op] = [Add(field="warnings", value=warning_id)]
            ops += [Add(field="mediators", value=m) for m in chosen]
            location = getattr(warning, "location", None)
            where = self._location() if location is None else _builtins(location)
            category = WARNING_CASES.get(getattr(warning, "category", ""), "neighbours")
            fields = {"title": "From a warning", "category": category, "location": where}
            self.edit("case", case_id, fields, ops)
            self.edit("warning", warning_id, {"status": "converted", "case": case_id}, [])
        elif roll < 0.55:
            case_id = self.new_id("k")
            chosen = self.rng.sample(mediators, min(2, len(mediators)))
            registry.new_case(self.district, case_id, self.user_id, chosen)
            ops = [Add(field="mediators", value=m) for m in chosen]
            fields = {
                "title": "Walk-in petition",
                "category": self.rng.choice(CASE_CATEGORIES),
                "location": self._location(),
            }
            self.edit("case", case_id, fields | {"status": "assigned"}, ops)
        else:
            cases = registry.cases[self.district]
            hot = roll < 0.55 + concurrent
            held = self.held("case", cases[:HOT_CASES] if hot else cases)
            if held is None:
                return
            case_id = held
            if hot:
                priority = self.rng.choice(["low", "normal", "high", "urgent"])
                self.edit("case", case_id, {"priority": priority, "summary": self.name}, [])
            elif roll < 0.9:
                # Reassign: one mediator off the case, one on. The one taken off loses
                # sight of it (an eviction) unless they made it; if they edit it offline
                # meanwhile, the server refuses and quarantines that change.
                record = self.client.record("case", case_id)
                maker = registry.makers.get(case_id)
                # In the fleet's order: a record lists them sorted by the ids the office
                # issued, which would make the choice below differ from run to run.
                on_case = set(getattr(record, "mediators", []))
                assigned = [m for m in mediators if m in on_case and m != maker]
                if not assigned:
                    return
                off, on = self.rng.choice(assigned), self.rng.choice(mediators)
                registry.give(on, case_id)
                ops = [Remove(field="mediators", value=off), Add(field="mediators", value=on)]
                self.edit("case", case_id, {}, ops)
            else:
                self.edit("case", case_id, {"due": "2027-01-31"}, [])


def _builtins(value: object) -> Any:
    return msgspec.to_builtins(value)


def moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def fleet_words(actions: list[str], names: Mapping[str, str], tag: str) -> list[str]:
    """`actions` with each user id the office issued put as its device's name (`names`),
    and the run's `tag` taken out of the ids: the words two runs of one seed share."""
    if not names:
        return actions
    user_ids = re.compile("|".join(map(re.escape, names)))
    return [
        user_ids.sub(lambda found: names[found[0]], action).replace(f".{tag}-", "-")
        for action in actions
    ]
