"""The supervisor console: server-rendered pages under /console and their JSON twins under /api.

Each module holds one area's handlers and exports them as `ROUTES`; the API
types of an area are in `schemas.console.<area>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler


def routes() -> list[HTTPRouteHandler]:
    """Every console handler, writes before reads.

    Litestar 2.25 wraps a `sync_to_thread` handler again each time another
    handler joins its path, and a twice-wrapped one answers 500; registered
    after the writes that share their paths, the (sync) pages are wrapped once.
    Imported here, so that `lianxin` commands using `server.console.signin` do
    not load the web framework.
    """
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

    handlers: list[HTTPRouteHandler] = [
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
    return sorted(handlers, key=lambda handler: "GET" in handler.http_methods)
