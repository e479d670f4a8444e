"""Who is at the console: passwords, second factor, sessions, CSRF tokens and rate limits.

- Passwords are argon2id hashes (argon2-cffi's defaults, RFC 9106's second
  recommended setting), re-hashed on sign-in when the parameters change.
- The optional second factor is TOTP (RFC 6238: 6 digits, 30 s, SHA-1, as
  authenticator apps expect); its secret is sealed under the user's data key.
- A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie;
  only its SHA-256 is stored. It ends after `session_idle_s` idle or
  `session_max_s` in all, at sign-out, or everywhere at once.
- Every session has its own CSRF token, required on every form and API write.
- Failed sign-ins are counted per user name and per client address; past
  `login_max_failures` within `login_window_s` sign-in is refused for a while.
Only supervisors and admins may sign in.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from typing import NamedTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from server import audit
from server.settings import Settings
from server.storage.directory import Directory, User
from sync.errors import BadCredentials, CsrfRefused, NotSignedIn, RateLimited

CONSOLE_ROLES = ("supervisor", "admin")
SEEN_EVERY_MS = 60_000  # how finely the idle timeout is kept
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this when the user does not exist takes as long as a real check.
    Made on first use: hashing costs 0.1 s, too much for every command's start-up."""
    return _hasher.hash("not a password")


def _(message: str) -> str:
    """Marks a message for translation; pages translate it when they show it."""
    return message


class Session(NamedTuple):
    user: User
    csrf: str
    token_hash: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def set_password(directory: Directory, user_id: str, password: str) -> None:
    if len(password) < 12:
        raise ValueError("use a password of at least 12 characters")
    with directory.store.transaction():
        directory.db.execute(
            "UPDATE users SET password_hash = ? WHERE user_id = ?",
            [_hasher.hash(password), user_id],
        )
        # Whoever knew the old password (the reason it is being reset, often) is signed out.
        directory.db.execute("DELETE FROM sessions WHERE user_id = ?", [user_id])


def _totp(secret: bytes) -> TOTP:
    return TOTP(secret, 6, SHA1(), 30, enforce_key_length=False)


def enable_totp(directory: Directory, user: User, issuer: str = "Lianxin") -> str:
    """Give `user` a new TOTP secret; returns the otpauth:// URI for their app."""
    secret = secrets.token_bytes(20)
    sealed = directory.store.seal_value("users", ("user", user.user_id), "totp", secret)
    with directory.store.transaction():
        directory.db.execute(
            "UPDATE users SET totp_secret = ?, totp_last_step = NULL WHERE user_id = ?",
            [sealed, user.user_id],
        )
    return _totp(secret).get_provisioning_uri(user.user_id, issuer)


def admins_without_second_factor(directory: Directory) -> list[str]:
    """Admins with a password but no second factor: they cannot sign in while the office
    requires one (`Settings.admin_second_factor`)."""
    with directory.store.snapshot() as db:
        rows = db.execute(
            "SELECT user_id FROM users WHERE role = 'admin' AND password_hash IS NOT NULL"
            " AND disabled_at_ms IS NULL"
            " AND totp_secret IS NULL ORDER BY user_id"
        ).fetchall()
    return [user_id for (user_id,) in rows]


def totp_code(secret: bytes, now_s: int) -> str:
    return _totp(secret).generate(now_s).decode()


def _totp_secret(directory: Directory, user_id: str) -> bytes | None:
    with directory.store.snapshot() as db:
        row = db.execute("SELECT totp_secret FROM users WHERE user_id = ?", [user_id]).fetchone()
    if row is None or row[0] is None:
        return None
    return directory.store.open_value("users", ("user", user_id), "totp", row[0])


def sign_in(
    directory: Directory,
    settings: Settings,
    user_id: str,
    password: str,
    code: str,
    client: str,
    now_ms: int,
    index_key: bytes,
) -> tuple[Session, str]:
    """Check the credentials and open a session; returns it and the cookie token.

    Raises `RateLimited` before checking anything once the user name or the
    client address has too many recent failures, and `BadCredentials`
    (counted as a failure) for a wrong user, role, password or code, for a
    disabled user, and for an admin without a second factor unless
    `settings.admin_second_factor` is off.
    Failures are counted by a keyed digest (`index_key`) of the typed user name.
    """
    # What was typed as the user name may be a password typed in the wrong field: it is
    # counted by a keyed digest and never written down as it is.
    named = _failure_key(index_key, user_id)
    who = [named, f"client:{client}"]
    _check_rate(directory, settings, who, now_ms)
    with directory.store.snapshot() as db:
        row = db.execute("SELECT password_hash FROM users WHERE user_id = ?", [user_id]).fetchone()
    user = directory.user(user_id)
    stored = row[0] if row and row[0] else None
    try:
        _hasher.verify(stored or _dummy_hash(), password)
        ok = stored is not None and user is not None and user.role in CONSOLE_ROLES
    except (VerifyMismatchError, InvalidHashError):
        ok = False
    step = None
    refusal = "sign_in_refused"
    if ok and user is not None and user.disabled_at_ms is not None:
        ok, refusal = False, "sign_in_refused_disabled"  # answered like any failure too
    if ok and user is not None:
        secret = _totp_secret(directory, user_id)
        if secret is not None:
            step = _totp_step(secret, code, now_ms // 1000)
            ok = step is not None
        elif user.role == "admin" and settings.admin_second_factor:
            # Answered like any failure, so the answer does not confirm the password; the
            # audit log tells the office why (ASVS 4.3.1: admins need a second factor).
            ok, refusal = False, "sign_in_refused_no_second_factor"
    if ok and user is not None:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with directory.store.transaction():
            # A code opens one session: seen once, it is spent. Spent here, under the
            # writer gate, so that two sign-ins racing with one code cannot both pass.
            ok = step is None or _spend_step(directory, user_id, step)
            if ok:
                if stored and _hasher.check_needs_rehash(stored):
                    directory.db.execute(
                        "UPDATE users SET password_hash = ? WHERE user_id = ?",
                        [_hasher.hash(password), user_id],
                    )
                directory.db.execute("DELETE FROM login_failures WHERE who = ?", [named])
                directory.db.execute(
                    "INSERT INTO sessions (token_hash, user_id, csrf, created_ms, seen_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [_digest(token), user_id, csrf, now_ms, now_ms],
                )
                audit.append(directory.db, now_ms, f"user:{user_id}", "sign_in", f"user/{user_id}")
        if ok:
            return Session(user, csrf, _digest(token)), token
    with directory.store.transaction():
        # Failures older than the window count for nothing: they are not kept either.
        since = now_ms - settings.login_window_s * 1000
        directory.db.execute("DELETE FROM login_failures WHERE at_ms <= ?", [since])
        directory.db.conn.executemany(
            "INSERT INTO login_failures (who, at_ms) VALUES (?, ?)", [(w, now_ms) for w in who]
        )
        subject = f"user/{user_id}" if user is not None else "user/unknown"
        audit.append(directory.db, now_ms, f"client:{client}", refusal, subject)
    raise BadCredentials(_("wrong user, password or code"))


def _failure_key(index_key: bytes, user_id: str) -> str:
    digest = hmac.new(index_key, b"lianxin sign-in\n" + user_id.encode(), hashlib.sha256)
    return f"user:{digest.hexdigest()}"


def _totp_step(secret: bytes, code: str, now_s: int) -> int | None:
    """The time step `code` belongs to, or None if it is no valid code now."""
    # One step either side, for a phone clock a little off.
    for shift in (0, -30, 30):
        try:
            _totp(secret).verify(code.strip().encode(), now_s + shift)
            return (now_s + shift) // 30
        except InvalidToken:
            continue
    return None


def _spend_step(directory: Directory, user_id: str, step: int) -> bool:
    """Mark the code of time step `step` used; False if it or a later one already was."""
    spent = directory.db.execute(
        "UPDATE users SET totp_last_step = ? WHERE user_id = ?"
        " AND coalesce(totp_last_step, -1) < ?",
        [step, user_id, step],
    )
    return spent.rowcount == 1


def _check_rate(directory: Directory, settings: Settings, who: list[str], now_ms: int) -> None:
    since = now_ms - settings.login_window_s * 1000
    with directory.store.snapshot() as db:
        counts = [
            db.execute(
                "SELECT count(*) FROM login_failures WHERE who = ? AND at_ms > ?", [name, since]
            ).fetchone()[0]
            for name in who
        ]
    if max(counts, default=0) >= settings.login_max_failures:
        raise RateLimited(_("too many failed sign-ins; try again later"))


def session(
    directory: Directory, settings: Settings, token: str | None, now_ms: int, touch: bool = True
) -> Session:
    """The live session of a cookie token; `NotSignedIn` if none, it expired, or access ended.

    With `touch`, the session is marked seen (at most once a minute: each mark is a write
    behind the store's writer gate); without, nothing is written (error pages).
    """
    if not token:
        raise NotSignedIn(_("sign in first"))
    with directory.store.snapshot() as db:
        row = db.execute(
            "SELECT user_id, csrf, created_ms, seen_ms FROM sessions WHERE token_hash = ?",
            [_digest(token)],
        ).fetchone()
    if row is None:
        raise NotSignedIn(_("sign in first"))
    user_id, csrf, created_ms, seen_ms = row
    user = directory.user(user_id)
    idle = now_ms - seen_ms > settings.session_idle_s * 1000
    old = now_ms - created_ms > settings.session_max_s * 1000
    if (
        user is None
        or user.disabled_at_ms is not None
        or user.role not in CONSOLE_ROLES
        or idle
        or old
    ):
        if touch:
            with directory.store.transaction():
                directory.db.execute("DELETE FROM sessions WHERE token_hash = ?", [_digest(token)])
        raise NotSignedIn(_("the session has expired; sign in again"))
    # Marked often enough that the idle limit, however short an office sets it, holds.
    if touch and now_ms - seen_ms >= min(SEEN_EVERY_MS, settings.session_idle_s * 250):
        with directory.store.transaction():
            directory.db.execute(
                "UPDATE sessions SET seen_ms = ? WHERE token_hash = ?", [now_ms, _digest(token)]
            )
    return Session(user, csrf, _digest(token))


def check_csrf(current: Session, given: str | None) -> None:
    # compare_digest raises on non-ASCII text: compare bytes.
    if not given or not hmac.compare_digest(given.encode(), current.csrf.encode()):
        raise CsrfRefused(_("missing or wrong CSRF token; reload the page"))


def sign_out(directory: Directory, current: Session, everywhere: bool = False) -> None:
    with directory.store.transaction():
        if everywhere:
            directory.db.execute("DELETE FROM sessions WHERE user_id = ?", [current.user.user_id])
        else:
            directory.db.execute("DELETE FROM sessions WHERE token_hash = ?", [current.token_hash])
