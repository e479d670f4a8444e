"""Signed requests: which device sent this, and is it really that device, now, once?

A device signs `sync.signing.request_message(...)` with its Ed25519 key and
sends four headers (PROTOCOL.md, "Signed requests"); a version 2 push carries
its one signature inside its body instead (`authenticate_push`), and so does a
version 2 pull (`authenticate_pull`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

from schemas.wire import SignedPull, SignedPush
from server.ratelimit import Allowance
from server.storage.directory import Device, Directory
from sync import signing
from sync.errors import MalformedRequest, RevokedDevice, StaleRequest, UnknownDevice, Unsigned

DEVICE = "lianxin-device"
TIMESTAMP = "lianxin-timestamp"
NONCE = "lianxin-nonce"
SIGNATURE = "lianxin-signature"
NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")


def authenticate(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    directory: Directory,
    now_ms: int,
    window_s: int,
    rates: Allowance | None,
) -> Device:
    """The device that signed this request, or the precise reason it is refused
    (`rates`, when given, refuses a device over its allowance)."""
    values = [headers.get(name) for name in (DEVICE, TIMESTAMP, NONCE, SIGNATURE)]
    if not all(values):
        raise Unsigned("a sync request needs Lianxin-Device, -Timestamp, -Nonce and -Signature")
    device_id, timestamp_text, nonce, signature_text = values
    assert device_id and timestamp_text and nonce and signature_text
    # ASCII digits only: "²".isdigit() holds, and int("²") raises. No leading zeros: the
    # signature covers the header as sent, which must then be the number's one spelling.
    if (
        not (timestamp_text.isascii() and timestamp_text.isdigit())
        or len(timestamp_text) > 12
        or timestamp_text != str(int(timestamp_text))
    ):
        raise MalformedRequest(
            "Lianxin-Timestamp must be whole seconds since the epoch, without leading zeros"
        )
    if not NONCE_PATTERN.match(nonce):
        raise MalformedRequest("Lianxin-Nonce must be 16-64 characters of A-Z a-z 0-9 _ -")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except ValueError:  # binascii.Error, and a header with a non-ASCII character in it
        raise MalformedRequest("Lianxin-Signature must be base64") from None
    timestamp = int(timestamp_text)
    device = _enrolled(device_id, directory)
    message = signing.request_message(method, path, timestamp, nonce, device_id, body)
    _admit(device, signature, message, timestamp * 1000, nonce, directory, now_ms, window_s, rates)
    return device


def authenticate_push(
    push: SignedPush,
    directory: Directory,
    now_ms: int,
    window_s: int,
    rates: Allowance | None,
) -> tuple[Device, bytes]:
    """The device that signed this version 2 push, and the message it signed.

    The signature covers the request and the batch at once; the batch id and
    the signing time together are the push's nonce (PROTOCOL.md section 11).
    The device is looked up before the batch is hashed, so a stranger's push
    costs one lookup.
    """
    device = _enrolled(push.device_id, directory)
    message = signing.push_message(push.device_id, push.batch_id, push.timestamp_ms, push.changes)
    nonce = f"{push.batch_id}.{push.timestamp_ms}"
    _admit(
        device,
        push.signature,
        message,
        push.timestamp_ms,
        nonce,
        directory,
        now_ms,
        window_s,
        rates,
    )
    return device, message


def authenticate_pull(
    pull: SignedPull,
    directory: Directory,
    now_ms: int,
    window_s: int,
    rates: Allowance | None,
) -> Device:
    """The device that signed this version 2 pull; its request id is the nonce."""
    device = _enrolled(pull.device_id, directory)
    message = signing.pull_message(
        pull.device_id, pull.request_id, pull.timestamp_ms, pull.cursor, pull.limit, pull.pushed
    )
    _admit(
        device,
        pull.signature,
        message,
        pull.timestamp_ms,
        pull.request_id,
        directory,
        now_ms,
        window_s,
        rates,
    )
    return device


def _enrolled(device_id: str, directory: Directory) -> Device:
    device = directory.device(device_id)
    if device is None:
        # The detail names no id: a version 2 push's answer says nothing of who sent it.
        raise UnknownDevice("no such device is enrolled here")
    return device


def _admit(
    device: Device,
    signature: bytes,
    message: bytes,
    timestamp_ms: int,
    nonce: str,
    directory: Directory,
    now_ms: int,
    window_s: int,
    rates: Allowance | None,
) -> None:
    """Check, in the order PROTOCOL.md gives, that `device` signed `message` now, once,
    and within its allowance."""
    signing.verify(device.signing_key, signature, message, "request")
    if device.revoked_at_ms is not None:
        raise RevokedDevice("this device was revoked")
    if abs(now_ms - timestamp_ms) > window_s * 1000:
        raise StaleRequest(f"the request time is more than {window_s} s from the server's")
    if rates is not None:
        rates.check(device.device_id, now_ms)  # before the nonce costs a write
    directory.spend_nonce(device.device_id, nonce, now_ms, window_s * 1000)
    if rates is not None:
        rates.take(device.device_id, now_ms)  # a replay was refused above: it spends nothing
