"""A change's bytes: the keyed map of protocol v1, or the compact array; both decode.

    raw = encode_change(change)     # the compact array form, what devices send now
    change = decode_change(raw)     # either form, always a plain `Change`

The server stores and serves each change as the exact bytes its device
signed, so every reader of stored changes decodes through here.
"""

from __future__ import annotations

import msgspec

from schemas.changes import Change, CompactChange

_encode = msgspec.msgpack.Encoder().encode
_decode_map = msgspec.msgpack.Decoder(Change).decode
_decode_array = msgspec.msgpack.Decoder(CompactChange).decode
# MessagePack's first byte says what follows: fixarray (0x90-0x9f), array 16 or array 32.
_ARRAY_STARTS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])


def encode_change(change: Change) -> bytes:
    """The change in its compact array form (PROTOCOL.md section 4)."""
    return _encode(CompactChange(**msgspec.structs.asdict(change)))


def decode_change(raw: bytes) -> Change:
    """A change from its bytes in either form; msgspec's `DecodeError` names a bad path."""
    if not raw or raw[0] not in _ARRAY_STARTS:
        return _decode_map(raw)
    return Change(**msgspec.structs.asdict(_decode_array(raw)))


def newline_in_ids(change: Change) -> str | None:
    """Where `change` names an id ending in a newline, which the `Id` pattern's `$` lets
    through and PROTOCOL.md section 4 does not; None if nowhere."""
    named = {"change_id": change.change_id, "record_id": change.record_id}
    named |= {"device_id": change.device_id, **{f"seen.{k}": k for k in change.seen}}
    return next((path for path, text in named.items() if text.endswith("\n")), None)
