"""The one place where errors become HTTP answers: status plus `{error, detail}`."""

from __future__ import annotations

import logging
import sqlite3

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

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
    errors.BatchReused: 409,
    errors.TooLarge: 413,
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
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
MSGPACK = "application/msgpack"


def status_of(error: errors.LianxinError) -> int:
    """The HTTP status of an error: that of its nearest listed class."""
    return next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)


def encode_for(request: Request, body: object) -> tuple[bytes, str]:
    """Answer in msgpack unless the client sent or asked for JSON (the console API is JSON)."""
    wants_json = (
        request.url.path.startswith("/api/")
        or "json" in (request.headers.get("content-type") or "")
        or "json" in (request.headers.get("accept") or "")
    )
    if wants_json:
        return msgspec.json.encode(body), "application/json"
    return msgspec.msgpack.encode(body), MSGPACK


def answer(request: Request, status: int, code: str, detail: str) -> Response:
    content, media_type = encode_for(request, ErrorBody(error=code, detail=detail))
    return Response(content, status_code=status, media_type=media_type)


def lianxin_error(request: Request, error: errors.LianxinError) -> Response:
    if request.url.path.startswith("/console/"):
        from server.console.web import error_page  # the console renders its own pages

        return error_page(request, error, status_of(error))
    return answer(request, status_of(error), error.code, error.detail)


def http_error(request: Request, error: HTTPException) -> Response:
    code = HTTP_CODES.get(error.status_code, "bad_request" if error.status_code < 500 else "error")
    return answer(request, error.status_code, code, str(error.detail))


def storage_error(request: Request, error: sqlite3.Error) -> Response:
    # Busy, locked, I/O error, disk full: the batch was rolled back; the client retries.
    log.warning("storage error: %s", error)
    return answer(request, 503, errors.Unavailable.code, "storage unavailable, retry later")


def internal_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    return answer(request, 500, "internal", "unexpected server error; nothing was written")


EXCEPTION_HANDLERS = {
    errors.LianxinError: lianxin_error,
    HTTPException: http_error,
    sqlite3.Error: storage_error,
    Exception: internal_error,
}
