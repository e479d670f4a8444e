"""Decoding untrusted bytes at the edge: the type's own errors, or ours, and nothing else.

    message = decode(body, PushRequest)               # MessagePack
    wanted = decode(body, SettleRequest, json=True)   # JSON (the console API)

msgspec names the bad path (`$.changes[3].hlc`) in its `DecodeError`; this
turns it into `MalformedRequest`. A value typed `Any` (a change's field
values, a settled value) is decoded recursively, so bytes nested a few
thousand levels deep exhaust Python's recursion limit: that is answered
`TooDeep`, never an internal error (issue 8, hostile input).
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec

from sync.errors import MalformedRequest, TooDeep

T = TypeVar("T")


@functools.cache
def _decoders(kind: Any) -> tuple[msgspec.msgpack.Decoder[Any], msgspec.json.Decoder[Any]]:
    # Built once a type: a Decoder is faster than `msgspec.*.decode(type=...)` on the push path.
    return msgspec.msgpack.Decoder(kind), msgspec.json.Decoder(kind)


def decode(data: bytes, kind: type[T], *, json: bool = False) -> T:
    """`data` as `kind` (MessagePack, or JSON when `json`).

    Raises `MalformedRequest` (not the format, not the type; the detail names
    the path) or `TooDeep` (nested beyond what the decoder follows).
    """
    kind_key: Any = kind  # a type is hashable; mypy cannot see it through `type[T]`
    msgpack_decoder, json_decoder = _decoders(kind_key)
    try:
        decoded: T = (json_decoder if json else msgpack_decoder).decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise MalformedRequest(str(error)) from None
    except RecursionError:
        raise TooDeep("the body is nested too deeply to decode") from None
    return decoded
