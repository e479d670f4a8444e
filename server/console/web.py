"""What every console page shares: the signed-in user, CSRF-checked forms, rendering.

Pages live under `/console/...` and render Jinja templates in the user's
language; each has a JSON twin under `/api/...` returning the same data (a
msgspec Struct, so the OpenAPI documents it) with the same permissions.
Both are sync handlers run in a worker thread: every one reads SQLite.
"""

from __future__ import annotations

import contextlib
import functools
import gettext
import io
import sqlite3
from collections.abc import Mapping
from importlib.resources import files
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import anyio.to_thread
import msgspec
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import Request, Response
from litestar.datastructures import FormMultiDict
from litestar.di import Provide
from litestar.response import Redirect

from server.console import signin, times
from server.console.signin import Session
from server.service import SyncService
from sync import decoding
from sync.errors import Forbidden, LianxinError, MalformedRequest, NotSignedIn

COOKIE = "lianxin_console"
CSRF_HEADER = "x-csrf-token"
LANGUAGES = {"zh-CN": "中文", "en": "English"}
DEFAULT_LANGUAGE = "zh-CN"


def _(message: str) -> str:
    """Marks a message for translation; pages translate it when they show it."""
    return message


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The message catalog of `language` (English is the source language)."""
    if language == "en":
        return gettext.NullTranslations()
    folder = language.replace("-", "_")
    source = files("server.console") / "locale" / folder / "LC_MESSAGES" / "messages.po"
    with source.open("rb") as po:
        catalog = read_po(po, locale=folder)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("server.console"),
        autoescape=select_autoescape(default=True),
        extensions=["jinja2.ext.i18n"],
    )
    return env


def service_of(request: Request) -> SyncService:
    service: SyncService = request.app.state.service
    return service


def now_ms(request: Request) -> int:
    return service_of(request).wall_ms()


T = TypeVar("T")


def signed_in(request: Request, *roles: str, touch: bool = True) -> Session:
    """The request's console session; `NotSignedIn` without one, `Forbidden` for other roles.

    Without `touch` it writes nothing (`signin.session`), so it may run on the event loop.
    """
    service = service_of(request)
    current = signin.session(
        service.directory, service.settings, request.cookies.get(COOKIE), now_ms(request), touch
    )
    if roles and current.user.role not in roles:
        raise Forbidden(_("this page is not for your role"))
    return current


async def form_of(request: Request) -> dict[str, str]:
    """The posted form's fields (last value of each)."""
    data = await _posted(request)
    return {key: str(value) for key, value in data.items()}


async def _posted(request: Request) -> FormMultiDict:
    """The posted form; one whose bytes do not decode is refused, not a server error."""
    try:
        return await request.form()
    except (ValueError, LookupError) as error:  # bytes, or a charset, Python cannot decode
        raise MalformedRequest(f"the form does not decode: {error}") from None


def checked(request: Request, current: Session, fields: Mapping[str, str]) -> None:
    """Refuse a write whose CSRF token (form field or header) is not the session's."""
    signin.check_csrf(current, fields.get("csrf") or request.headers.get(CSRF_HEADER))


class Posted(NamedTuple):
    current: Session
    fields: dict[str, str]  # the last value of each field
    form: FormMultiDict  # for a field given more than once (`getall`)


async def _signed_in_off_loop(request: Request, *roles: str) -> Session:
    # In a worker thread: looking the session up may record when it was last seen, a
    # write that waits for the writer gate, and the event loop must not wait with it.
    return await anyio.to_thread.run_sync(functools.partial(signed_in, request, *roles))


async def signed_form(request: Request, *roles: str) -> Posted:
    """A signed-in user's posted form, its CSRF token checked (`signed_in`, `checked`)."""
    # The session is looked at once the whole body is in: a request held open, its last
    # byte kept back, must not act for a user signed out or disabled meanwhile.
    form = await _posted(request)
    current = await _signed_in_off_loop(request, *roles)
    fields = {key: str(value) for key, value in form.items()}
    checked(request, current, fields)
    return Posted(current, fields, form)


async def signed_call(request: Request, *roles: str) -> Session:
    """A signed-in user's API write, its CSRF header checked."""
    await request.body()  # all of it first, as for a form; kept for `json_body`
    current = await _signed_in_off_loop(request, *roles)
    checked(request, current, {})
    return current


async def json_body(request: Request, kind: type[T], *, empty: bytes = b"") -> T:
    """The request's JSON body as `kind` (`sync.decoding`: `malformed` or `too_deep`);
    `empty` stands for a body with nothing in it."""
    return decoding.decode(await request.body() or empty, kind, json=True)


def language_of(current: Session | None, request: Request) -> str:
    if current is not None:
        with service_of(request).store.snapshot() as db:
            row = db.execute(
                "SELECT language FROM users WHERE user_id = ?", [current.user.user_id]
            ).fetchone()
        if row and row[0] in LANGUAGES:
            return str(row[0])
    return DEFAULT_LANGUAGE


def render(
    request: Request, current: Session | None, template: str, status: int = 200, **context: Any
) -> Response:
    """A page in the user's language, with what the layout needs."""
    language = language_of(current, request)
    words = translations(language)

    def gettext(message: str) -> str:
        # gettext("") answers the catalog's header: a value left empty shows empty.
        return words.gettext(message) if message else message

    env = environment()
    zone = service_of(request).settings.zone
    page = env.get_template(template).render(
        _=gettext,
        when=functools.partial(times.minute, zone=zone),
        time_zone=zone.key,
        ngettext=words.ngettext,
        gettext=gettext,
        language=language,
        languages=LANGUAGES,
        user=current.user if current else None,
        csrf=current.csrf if current else "",
        path=request.url.path,
        **context,
    )
    headers = {
        # The console is its own origin's only user: no framing, no outside scripts.
        "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        # Error pages come here too, and those skip `server.app.not_for_caches`.
        "cache-control": "no-store",
    }
    return Response(page, status_code=status, media_type="text/html", headers=headers)


def documents_body(kind: type[msgspec.Struct]) -> dict[str, Provide]:
    """Route dependencies under which the OpenAPI documents `kind` as the JSON request body.

    The handler never asks for this dependency, so Litestar never runs it:
    the handler authenticates first (console session and CSRF token, or the
    device's signature), and only then decodes the body as `kind` itself
    (`sync.decoding`), so a stranger's body is never parsed and every error
    keeps Lianxin's code.
    """

    def body(data: Any) -> None:
        """Never called."""

    body.__annotations__ = {"data": kind, "return": None}
    return {"request_body": Provide(body, sync_to_thread=False)}


# Past any real list; SQLite takes no larger OFFSET (a bigger one was an OverflowError, a 500).
MAX_OFFSET = 2**31 - 1


def whole_number(text: str) -> int | None:
    """`text` as a whole number if it is at most 18 ASCII digits; None otherwise ("²".isdigit()
    holds, and int("²") raises; int() refuses more than 4,300 digits)."""
    return int(text) if len(text) <= 18 and text.isascii() and text.isdigit() else None


def page_offset(offset: int) -> int:
    """A list's `?offset=` as a row offset SQLite accepts: negative is 0, huge is past the end."""
    return min(max(offset, 0), MAX_OFFSET)


def back_to(path: str) -> Response:
    """After a form: see the page again (POST, redirect, GET)."""
    return Redirect(path, status_code=303)


def error_page(request: Request, error: LianxinError, status: int) -> Response:
    """A console error as a page; not signed in means the sign-in page."""
    if isinstance(error, NotSignedIn):
        # After signing in the browser GETs `next`: a form's target would answer 405.
        back = request.url.path if request.method == "GET" else "/console/cases"
        return Redirect(f"/console/login?next={quote(back)}", status_code=303)
    current = None
    # The error may be the store's own: the page then names no one.
    with contextlib.suppress(LianxinError, sqlite3.Error):
        current = signed_in(request, touch=False)  # on the event loop: no write
    return render(request, current, "error.html", status=status, error=error)
