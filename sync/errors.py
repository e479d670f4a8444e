"""Lianxin's one exception tree; every class has a stable machine `code`.

    LianxinError
    ├── MalformedRequest        malformed             the body or a header cannot be decoded
    ├── TooLarge                too_large             body, batch or page over its limit
    │   └── TooDeep             too_deep              a body nested deeper than the decoder follows
    ├── UnsupportedEncoding     unsupported_encoding  a compressed body (Content-Encoding)
    ├── UnsupportedMediaType    unsupported_media_type  a Content-Type the endpoint does not take
    ├── AuthenticationError
    │   ├── Unsigned            unsigned              no signature headers
    │   ├── BadSignature        bad_signature         the signature does not verify
    │   ├── StaleRequest        stale_request         timestamp outside the allowed window
    │   ├── Replayed            replayed              nonce already used
    │   ├── UnknownDevice       unknown_device        no such device
    │   └── RevokedDevice       revoked_device        the device was revoked
    ├── Forbidden               forbidden             the device's role may not do this
    ├── EnrollmentRefused       enrollment_refused    code unknown, used or expired
    ├── WeakKey                 weak_key              a device key anyone could sign or seal with
    ├── BatchReused             batch_reused          a batch id sent again with other changes
    ├── BadCursor               bad_cursor            a pull cursor that this server never issued
    ├── EnvelopeError
    │   ├── BadEnvelope         bad_envelope          a sealed envelope that does not decode
    │   ├── UnsupportedSuite    unsupported_suite     a suite id not accepted here (no downgrade)
    │   ├── WrongKey            wrong_key             sealed to a key this office does not hold
    │   └── Unsealable          unsealable            does not open: changed or not for us
    ├── ConsoleError
    │   ├── NotSignedIn         not_signed_in         no console session, or it expired
    │   ├── BadCredentials      bad_credentials       wrong user, password or second factor
    │   ├── CsrfRefused         csrf_refused          a console write without its session token
    │   ├── UnknownRecord       unknown_record        no such record (or not in your view)
    │   └── InvalidAction       invalid_action        a console action that cannot apply as asked
    ├── RateLimited             rate_limited          too many sync requests or failed sign-ins
    ├── Erased                  erased                the record was lawfully erased (key destroyed)
    ├── Unreadable              unreadable            stored bytes do not open (key, passphrase)
    └── Unavailable             unavailable           storage refused the request; retry later
        ├── StorageBusy         storage_busy          another writer holds the store; retry soon
        └── StorageUnavailable  storage_unavailable   I/O error or disk full; retry later

The engine and the client raise these; only `server/errors.py` turns them
into HTTP answers. Rejected *changes* are not errors: they are answered per
change with a `schemas.Reason` and quarantined.
"""

from __future__ import annotations


class LianxinError(Exception):
    code = "error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail


class MalformedRequest(LianxinError):
    code = "malformed"


class TooLarge(LianxinError):
    code = "too_large"


class TooDeep(TooLarge):
    code = "too_deep"


class UnsupportedEncoding(LianxinError):
    code = "unsupported_encoding"


class UnsupportedMediaType(LianxinError):
    code = "unsupported_media_type"


class AuthenticationError(LianxinError):
    code = "unauthenticated"


class Unsigned(AuthenticationError):
    code = "unsigned"


class BadSignature(AuthenticationError):
    code = "bad_signature"


class StaleRequest(AuthenticationError):
    code = "stale_request"


class Replayed(AuthenticationError):
    code = "replayed"


class UnknownDevice(AuthenticationError):
    code = "unknown_device"


class RevokedDevice(AuthenticationError):
    code = "revoked_device"


class Forbidden(LianxinError):
    code = "forbidden"


class EnrollmentRefused(LianxinError):
    code = "enrollment_refused"


class WeakKey(LianxinError):
    code = "weak_key"


class BatchReused(LianxinError):
    code = "batch_reused"


class BadCursor(LianxinError):
    code = "bad_cursor"


class EnvelopeError(LianxinError):
    code = "envelope"


class BadEnvelope(EnvelopeError):
    code = "bad_envelope"


class UnsupportedSuite(EnvelopeError):
    code = "unsupported_suite"


class WrongKey(EnvelopeError):
    code = "wrong_key"


class Unsealable(EnvelopeError):
    code = "unsealable"


class ConsoleError(LianxinError):
    code = "console"


class NotSignedIn(ConsoleError):
    code = "not_signed_in"


class BadCredentials(ConsoleError):
    code = "bad_credentials"


class CsrfRefused(ConsoleError):
    code = "csrf_refused"


class RateLimited(LianxinError):
    """Too many requests; `retry_after_s`, when known, says when to try again."""

    code = "rate_limited"

    def __init__(self, detail: str = "", retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class UnknownRecord(ConsoleError):
    code = "unknown_record"


class InvalidAction(ConsoleError):
    code = "invalid_action"


class Erased(LianxinError):
    code = "erased"


class Unreadable(LianxinError):
    code = "unreadable"


class Unavailable(LianxinError):
    code = "unavailable"


class StorageBusy(Unavailable):
    code = "storage_busy"


class StorageUnavailable(Unavailable):
    code = "storage_unavailable"
