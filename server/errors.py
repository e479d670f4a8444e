"""The one place where errors become HTTP answers: status plus `{error, detail}`."""

from __future__ import annotations

import logging
import sqlite3

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from schemas.wire import ErrorBody
from sync import errors

log = logging.getLogger("lianxin")

STATUS: dict[type[errors.LianxinError], int] = {
    errors.MalformedRequest: 400,
    errors.BadCursor: 400,
    errors.EnvelopeError: 400,
    errors.AuthenticationError: 401,
    errors.RevokedDevice: 403,
    errors.Forbidden: 403,
    errors.EnrollmentRefused: 403,
    errors.WeakKey: 400,
    errors.BatchReused: 409,
    errors.TooLarge: 413,
    errors.UnsupportedEncoding: 415,
    errors.UnsupportedMediaType: 415,
    errors.ConsoleError: 400,
    errors.NotSignedIn: 401,
    errors.BadCredentials: 401,
    errors.CsrfRefused: 403,
    errors.UnknownRecord: 404,
    errors.RateLimited: 429,
    errors.Erased: 410,
    errors.Unreadable: 500,
    errors.Unavailable: 503,
}
# Seconds a client should wait before retrying (the `Retry-After` header).
RETRY_AFTER_S: dict[type[errors.LianxinError], int] = {
    errors.Unavailable: 5,
    errors.StorageBusy: 1,
    errors.StorageUnavailable: 30,
}
# SQLite primary result codes (sqlite3.h): another writer holds the store...
SQLITE_BUSY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
# ...or the storage under it is failing: PERM, NOMEM, READONLY, IOERR, CORRUPT, FULL,
# CANTOPEN, PROTOCOL, NOTADB.
SQLITE_FAILING = {3, 7, 8, 10, 11, 13, 14, 15, 26}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
MSGPACK = "application/msgpack"


def status_of(error: errors.LianxinError) -> int:
    """The HTTP status of an error: that of its nearest listed class."""
    return next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)


def media_type(request: Request) -> str:
    """The request's Content-Type without its parameters, lower-cased ("" if none)."""
    return (request.headers.get("content-type") or "").partition(";")[0].strip().lower()


def client_address(request: Request) -> str:
    """Where the request came from (the proxy's `X-Forwarded-For` when uvicorn trusts it)."""
    return request.client.host if request.client else "unknown"


def encode_for(request: Request, body: object) -> tuple[bytes, str]:
    """Answer in msgpack unless the client sent or asked for JSON (the console API is JSON)."""
    wants_json = (
        request.url.path.startswith("/api/")
        or "json" in media_type(request)
        or "json" in (request.headers.get("accept") or "").lower()
    )
    if wants_json:
        return msgspec.json.encode(body), "application/json"
    return msgspec.msgpack.encode(body), MSGPACK


def answer(request: Request, status: int, code: str, detail: str) -> Response:
    content, media_type = encode_for(request, ErrorBody(error=code, detail=detail))
    # As every answer (`server.app.not_for_caches`, which error answers do not pass).
    headers = {"cache-control": "no-store"}
    return Response(content, status_code=status, media_type=media_type, headers=headers)


def retry_after(error: errors.LianxinError) -> int | None:
    """Seconds to wait before retrying, for errors a retry can cure; else None."""
    if isinstance(error, errors.RateLimited) and error.retry_after_s is not None:
        return error.retry_after_s
    return next((RETRY_AFTER_S[k] for k in type(error).__mro__ if k in RETRY_AFTER_S), None)


def answer_or_page(request: Request, status: int, error: errors.LianxinError) -> Response:
    """`answer`, or under /console/ the console's error page: a browser shows no msgpack."""
    if request.url.path.startswith("/console/"):
        from server.console.web import error_page  # the console renders its own pages

        return error_page(request, error, status)
    return answer(request, status, error.code, error.detail)


def lianxin_error(request: Request, error: errors.LianxinError) -> Response:
    response = answer_or_page(request, status_of(error), error)
    seconds = retry_after(error)
    if seconds is not None:
        response.headers["Retry-After"] = str(seconds)
    return response


def http_error(request: Request, error: HTTPException) -> Response:
    code = HTTP_CODES.get(error.status_code, "bad_request" if error.status_code < 500 else "error")
    return answer_or_page(request, error.status_code, coded(code, str(error.detail)))


def coded(code: str, detail: str) -> errors.LianxinError:
    """An error of the framework's, or an unexpected one, as ours: its code and detail."""
    error = errors.LianxinError(detail)
    error.code = code
    return error


def storage_fault(error: sqlite3.Error) -> errors.Unavailable:
    """What a SQLite error means to a client: the store busy, failing, or refusing.

    The writer gate rolled the transaction back, so nothing was written and a
    retry is safe. Busy must never reach a client as a 500 (issue 8).
    """
    primary = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    if primary in SQLITE_BUSY:
        return errors.StorageBusy("another writer holds the store; nothing was written; retry")
    if primary in SQLITE_FAILING:
        return errors.StorageUnavailable(
            "storage is failing (I/O error or disk full); nothing was written; retry later"
        )
    return errors.Unavailable("storage refused the request; nothing was written; retry later")


def storage_error(request: Request, error: sqlite3.Error) -> Response:
    fault = storage_fault(error)
    if type(fault) is errors.Unavailable:  # not a known fault of the storage: likely a bug
        log.error("storage error on %s %s", request.method, request.url.path, exc_info=error)
    else:
        log.warning("storage error (%s): %s", fault.code, error)
    return lianxin_error(request, fault)


def internal_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    return answer_or_page(
        request, 500, coded("internal", "unexpected server error; nothing was written")
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    errors.LianxinError: lianxin_error,
    HTTPException: http_error,
    sqlite3.Error: storage_error,
    Exception: internal_error,
}
