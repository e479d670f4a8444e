"""Signing in and out, and the user's language."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie

from server.console import signin
from server.console.web import (
    COOKIE,
    LANGUAGES,
    _,
    back_to,
    form_of,
    now_ms,
    render,
    service_of,
    signed_form,
    signed_in,
)
from server.errors import client_address
from sync.errors import BadCredentials, InvalidAction, RateLimited


class Me(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    name: str
    role: str
    org_units: list[str]
    csrf: str


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not target or urlsplit(target).netloc or not target.startswith("/console/"):
        return "/console/cases"
    return target


# Async: it reads nothing, so it need not go to a worker thread.
@get("/console/login", include_in_schema=False)
async def login_page(request: Request) -> Response:
    return render(request, None, "login.html", next=_safe_next(request.query_params.get("next")))


@post("/console/login", include_in_schema=False)
async def login(request: Request) -> Response:
    fields = await form_of(request)
    service = service_of(request)
    client = client_address(request)
    # In a worker thread: the password hash takes tens of milliseconds and the session is
    # written behind the store's writer gate, either of which would stall every request.
    attempt = functools.partial(
        signin.sign_in,
        service.directory,
        service.settings,
        fields.get("user_id", "").strip(),
        fields.get("password", ""),
        fields.get("code", ""),
        client,
        now_ms(request),
        service.keys.index_key,
    )
    try:
        _, token = await anyio.to_thread.run_sync(attempt)
    except (BadCredentials, RateLimited) as error:
        status = 429 if isinstance(error, RateLimited) else 401
        return render(
            request, None, "login.html", status=status, failed=error, next=fields.get("next")
        )
    response = back_to(_safe_next(fields.get("next")))
    response.cookies.append(
        Cookie(
            key=COOKIE,
            value=token,
            path="/",
            httponly=True,
            secure=service.settings.secure_cookies,
            samesite="strict",
        )
    )
    return response


@post("/console/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    """Sign out here, or (`everywhere`) end every session of this user."""
    current, fields, _form = await signed_form(request)
    end = functools.partial(
        signin.sign_out, service_of(request).directory, current, everywhere="everywhere" in fields
    )
    await anyio.to_thread.run_sync(end)  # a write: it may wait for the writer gate
    response = back_to("/console/login")
    response.cookies.append(Cookie(key=COOKIE, value="", path="/", max_age=0))
    return response


@post("/console/language", include_in_schema=False)
async def language(request: Request) -> Response:
    current, fields, _form = await signed_form(request)
    chosen = fields.get("language", "")
    if chosen not in LANGUAGES:
        raise InvalidAction(_("no such language"))
    service = service_of(request)

    def remember() -> None:  # a write: it may wait for the writer gate
        with service.store.transaction():
            service.store.db.execute(
                "UPDATE users SET language = ? WHERE user_id = ?", [chosen, current.user.user_id]
            )

    await anyio.to_thread.run_sync(remember)
    return back_to(_safe_next(fields.get("next")))


@get("/api/me", sync_to_thread=True, summary="Who is signed in, and the CSRF token for writes")
def me(request: Request) -> Me:
    current = signed_in(request)
    user = current.user
    return Me(
        user_id=user.user_id,
        name=user.name,
        role=user.role,
        org_units=user.org_units,
        csrf=current.csrf,
    )


ROUTES = [login_page, login, logout, language, me]
