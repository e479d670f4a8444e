"""The supervisor console: server-rendered pages under /console and their JSON twins under /api.

Each module holds one area's handlers and exports them as `ROUTES`; the API
types of an area are in `schemas.console.<area>`.
"""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from server.console import (
    account,
    admin,
    agreements,
    assignment,
    cases,
    conflicts,
    export,
    quarantine,
    stats,
    triage,
)


def routes() -> list[ControllerRouterHandler]:
    return [
        *account.ROUTES,
        *cases.ROUTES,
        *conflicts.ROUTES,
        *quarantine.ROUTES,
        *triage.ROUTES,
        *agreements.ROUTES,
        *assignment.ROUTES,
        *stats.ROUTES,
        *export.ROUTES,
        *admin.ROUTES,
    ]
