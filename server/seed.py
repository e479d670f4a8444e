"""The DESIGN.md scenarios as demo data, made by simulated devices.

Each scenario is a short story told by `Replica`s with fixed clocks and
deterministic change ids, so loading it twice is answered with duplicates
and writes nothing twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from schemas.changes import Add, Append, Change
from sync.clock import Clock
from sync.device import Replica

START = datetime(2026, 10, 5, 8, 30, tzinfo=UTC)
DRAIN_STREET = {
    "city": "Hangzhou",
    "district": "Gongshu",
    "street": "Mishixiang",
    "community": "Daguan",
}
GREASE_STREET = {"city": "Hangzhou", "district": "Xihu", "street": "Beishan", "community": "Baidi"}


class Scenario(NamedTuple):
    name: str
    changes: list[Change]


class Fleet:
    """Devices sharing one simulated calendar and one office that relays changes.

    `pushed` is every change in the order devices pushed it, which respects
    causality: a device only ever saw changes pushed before.
    """

    def __init__(self) -> None:
        self.now = START
        self.pushed: list[Change] = []
        self._told = 0

    def device(self, device_id: str, skew: timedelta = timedelta()) -> Replica:
        def wall_ms() -> int:
            return int((self.now + skew).timestamp() * 1000)

        counter = itertools.count(1)
        return Replica(device_id, Clock(wall_ms), new_id=lambda: f"{device_id}-{next(counter)}")

    def at(self, days: float) -> datetime:
        """Move the calendar to `days` after the start."""
        self.now = START + timedelta(days=days)
        return self.now

    def sync(self, *devices: Replica) -> None:
        """Each device pushes its outbox, then pulls everything pushed so far."""
        for device in devices:
            self.pushed.extend(device.outbox)
            device.outbox.clear()
        for device in devices:
            for change in self.pushed:
                device.receive(change)

    def scenario(self, name: str, *devices: Replica) -> Scenario:
        """Sync `devices` and name everything pushed since the last scenario."""
        self.sync(*devices)
        told, self._told = self._told, len(self.pushed)
        return Scenario(name, self.pushed[told:])


def drain_warning(fleet: Fleet) -> Scenario:
    """Scenario 1: a drain warning becomes a case, is fixed in a month and answered."""
    informant = fleet.device("dev-informant-liu")
    supervisor = fleet.device("dev-supervisor-wang")
    mediator = fleet.device("dev-mediator-zhao")
    informant.edit(
        "warning",
        "w-drains",
        {
            "observed_at": fleet.at(0).isoformat(),
            "location": DRAIN_STREET,
            "category": "infrastructure",
            "severity": "high",
            "description": "The drains overflow every rain; "
            "10 households plan to petition next week.",
            "people_affected": 10,
            "informant": "inf-7f3a",
            "status": "open",
        },
    )
    fleet.sync(informant, supervisor)
    fleet.at(1)
    supervisor.edit(
        "case",
        "k-drains",
        {
            "category": "infrastructure",
            "title": "Overflowing drains, Daguan community",
            "summary": "Converted from an informant's warning.",
            "location": DRAIN_STREET,
            "status": "assigned",
            "priority": "high",
            "households": 10,
            "due": (fleet.now + timedelta(days=30)).date().isoformat(),
        },
        [Add(field="warnings", value="w-drains"), Add(field="mediators", value="u-zhao")],
    )
    supervisor.edit("warning", "w-drains", {"status": "converted", "case": "k-drains"})
    fleet.sync(supervisor, mediator)
    for day, text in [
        (3, "Met the 10 households; the outflow is blocked by the new car park."),
        (12, "Street office and car park owner agree to clear the culvert."),
        (27, "Culvert cleared; no overflow in the last two rains."),
    ]:
        fleet.at(day)
        mediator.edit(
            "case",
            "k-drains",
            ops=[
                Append(
                    field="visits",
                    entry={
                        "entry_id": f"v-drains-{day}",
                        "at": fleet.now.isoformat(),
                        "by": "u-zhao",
                        "summary": text,
                    },
                )
            ],
        )
    mediator.edit("case", "k-drains", {"status": "in_mediation"})
    mediator.edit("case", "k-drains", {"status": "resolved"})
    fleet.sync(mediator, supervisor)
    fleet.at(29)
    supervisor.edit("case", "k-drains", {"status": "closed"})
    supervisor.edit(
        "warning", "w-drains", {"response": "Fixed: the culvert was cleared on day 27."}
    )
    return fleet.scenario(
        "drain warning → case → fixed in a month", informant, supervisor, mediator
    )


def grease_group_case(fleet: Fleet) -> Scenario:
    """Scenario 2: 66 households and one restaurant owner, one agreement to sign."""
    supervisor = fleet.device("dev-supervisor-chen")
    fleet.at(2)
    households = [f"p-household-{n:02d}" for n in range(1, 67)]
    for n, party in enumerate(households, start=1):
        supervisor.edit(
            "party",
            party,
            {
                "kind": "household",
                "name": f"Household {n}",
                "address": f"Baidi Lane {n}",
                "role": "petitioner",
            },
        )
    supervisor.edit(
        "party",
        "p-owner",
        {"kind": "organisation", "name": "Beishan Noodle House", "role": "respondent"},
    )
    supervisor.edit(
        "case",
        "k-grease",
        {
            "category": "environment",
            "title": "Restaurant grease fouls the Baidi block",
            "location": GREASE_STREET,
            "status": "assigned",
            "households": 66,
        },
        [
            *(Add(field="parties", value=p) for p in [*households, "p-owner"]),
            Add(field="mediators", value="u-sun"),
            Add(field="mediators", value="u-li"),
            Add(field="agreements", value="a-grease-1"),
            Add(field="tags", value="group-case"),
        ],
    )
    supervisor.edit(
        "agreement",
        "a-grease-1",
        {
            "case": "k-grease",
            "terms": "The owner installs a grease trap within 14 days and pays for one drain "
            "cleaning a quarter; the households withdraw their petition.",
            "required_signers": [*households, "p-owner"],
            "status": "draft",
        },
    )
    supervisor.edit("agreement", "a-grease-1", {"status": "collecting"})
    return fleet.scenario(
        "66 households and one restaurant (agreement collecting signatures)", supervisor
    )


def two_mediators_no_signal(fleet: Fleet) -> Scenario:
    """Scenario 3: two mediators edit one case offline; one field collides."""
    supervisor = fleet.device("dev-supervisor-wang-2")
    sun = fleet.device("dev-mediator-sun")
    li = fleet.device("dev-mediator-li", skew=timedelta(hours=-5))
    fleet.at(4)
    supervisor.edit(
        "case",
        "k-noise",
        {
            "category": "neighbours",
            "title": "Late-night mahjong noise",
            "location": DRAIN_STREET,
            "status": "assigned",
        },
        [Add(field="mediators", value="u-sun"), Add(field="mediators", value="u-li")],
    )
    fleet.sync(supervisor, sun, li)
    fleet.at(5)
    sun.edit(
        "case",
        "k-noise",
        {"priority": "high", "summary": "Players agree to stop at 22:00 on weekdays."},
    )
    li.edit(
        "case",
        "k-noise",
        {"summary": "Players agree to move the table indoors."},
        [Add(field="tags", value="noise")],
    )
    return fleet.scenario(
        "two mediators, one case, no signal (a conflict to settle)", supervisor, sun, li
    )


def repeat_petitioner(fleet: Fleet) -> Scenario:
    """Scenario 5: the same household returns through a different mediator."""
    zhao = fleet.device("dev-mediator-zhao-2")
    sun = fleet.device("dev-mediator-sun-2")
    fleet.at(6)
    zhao.edit(
        "party",
        "p-he",
        {"name": "He Jianguo", "phone": "+86 138 0000 1234", "address": "Daguan 3-401"},
    )
    zhao.edit(
        "case",
        "k-he-1",
        {
            "category": "property",
            "title": "Water leak from the flat above",
            "location": DRAIN_STREET,
            "status": "assigned",
        },
        [Add(field="parties", value="p-he")],
    )
    fleet.at(40)
    sun.edit(
        "party",
        "p-he-again",
        {"name": "HE Jianguo", "phone": "13800001234", "address": "Daguan 3-401"},
    )
    sun.edit(
        "case",
        "k-he-2",
        {
            "category": "property",
            "title": "Leak again, ceiling damaged",
            "location": DRAIN_STREET,
            "status": "assigned",
        },
        [Add(field="parties", value="p-he-again")],
    )
    return fleet.scenario("repeat petitioner (same household, another mediator)", zhao, sun)


SCENARIOS: list[Callable[[Fleet], Scenario]] = [
    drain_warning,
    grease_group_case,
    two_mediators_no_signal,
    repeat_petitioner,
]


def scenarios() -> Iterator[Scenario]:
    """Every seed scenario, made afresh (same ids and stamps each time)."""
    fleet = Fleet()
    for make in SCENARIOS:
        yield make(fleet)
