"""The knobs of a fleet simulation, and its command-line options.

Apart from `server.fleet.simulate` so that `lianxin` can describe them without
importing the simulator (rich, httpx, the reference client) on every command.
"""

from __future__ import annotations

import argparse

import msgspec


class Options(msgspec.Struct, frozen=True, kw_only=True):
    devices: int = 30
    days: int = 3
    seed: int = 1
    loss: float = 0.3
    duplicate: float = 0.05
    latency_ms: float = 80.0
    skew_hours: float = 6.0
    offline: float = 0.2
    concurrent: float = 0.2
    parts_of_day: int = 2  # work-then-sync rounds per simulated day

    def problems(self) -> list[str]:
        """Why these knobs make no simulation (a run that checks nothing must not pass)."""
        found = []
        if self.devices < 12:
            found.append("--devices: a fleet needs at least 12 devices (3 districts of 4)")
        if self.days < 1:
            found.append("--days: at least 1")
        for name in ("loss", "duplicate", "offline", "concurrent"):
            if not 0 <= getattr(self, name) <= 1:
                found.append(f"--{name}: a share from 0 to 1")
        if self.loss + self.duplicate > 1:
            found.append("--loss and --duplicate: together at most 1")
        if self.latency_ms < 0:
            found.append("--latency-ms: not negative")
        if not 0 <= self.skew_hours <= 24 * 365:
            found.append("--skew-hours: from 0 to a year")
        return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Options()
    parser.add_argument("--devices", type=int, default=defaults.devices)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--loss", type=float, default=defaults.loss, help="share of requests lost")
    parser.add_argument("--duplicate", type=float, default=defaults.duplicate)
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--skew-hours", type=float, default=defaults.skew_hours)
    parser.add_argument(
        "--offline", type=float, default=defaults.offline, help="daily chance of going offline"
    )
    parser.add_argument("--concurrent", type=float, default=defaults.concurrent)
    parser.add_argument(
        "--server", help="a running office's URL (its folder is --data); default: start one"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary office folder")
