"""A change's bytes: the keyed map of protocol v1, or the compact array; both decode.

    raw = encode_change(change)     # the compact array form, what devices send now
    change = decode_change(raw)     # either form, always a plain `Change`

The server stores and serves each change as the exact bytes its device
signed, so every reader of stored changes decodes through here.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import msgspec.inspect as types

from schemas.changes import Add, Append, Change, CompactChange, Reason
from sync.merge import field_specs

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


def newline_in_values(change: Change) -> tuple[Reason, str] | None:
    """`invalid_value` if a value `change` sets, adds or appends holds an id or hash ending
    in a newline (`newline_in_ids`, inside values); None if none does.

    Removing such a value stays possible: a state stored before this check may hold one.
    """
    written = [(f"set.{name}", name, False, value) for name, value in change.set.items()]
    for index, op in enumerate(change.ops):
        if isinstance(op, Add):
            written.append((f"ops[{index}].value", op.field, True, op.value))
        elif isinstance(op, Append):
            written.append((f"ops[{index}].entry", op.field, True, op.entry))
    for path, name, item, value in written:
        kind = _patterned(change.record_type, name, item)
        if kind is not None and (where := _newline_at(value, kind, path)):
            return Reason.INVALID_VALUE, f"{where} ends in a newline"
    return None


@functools.cache
def _patterned(record_type: str, name: str, item: bool) -> types.Type | None:
    """The type of a field's value (`item`: of one element), if a pattern checks some part
    of it; None if none does, or for a field merging refuses as unknown."""
    try:
        spec = field_specs(record_type)[name]
    except KeyError:
        return None
    holder = spec.item_holder if item else spec.holder
    if holder is None:
        return None
    kind: types.Type = types.type_info(holder).fields[0].type  # type: ignore[attr-defined]
    return kind if _checks_a_pattern(kind) else None


def _parts(kind: types.Type) -> list[types.Type]:
    if isinstance(kind, types.UnionType):
        return list(kind.types)
    if isinstance(kind, types.ListType):
        return [kind.item_type]
    if isinstance(kind, types.StructType):
        return [f.type for f in kind.fields]
    return []


def _checks_a_pattern(kind: types.Type) -> bool:
    if isinstance(kind, types.StrType):
        return kind.pattern is not None
    return any(_checks_a_pattern(part) for part in _parts(kind))


def _newline_at(value: Any, kind: types.Type, path: str) -> str | None:
    """The path of the first string in `value` that `kind` holds to a pattern and that ends
    in a newline. Values of the wrong shape are skipped: merging refuses them."""
    if isinstance(kind, types.StrType):
        return path if kind.pattern and isinstance(value, str) and value.endswith("\n") else None
    if isinstance(kind, types.UnionType):
        return next((p for k in kind.types if (p := _newline_at(value, k, path))), None)
    if isinstance(kind, types.ListType) and isinstance(value, list):
        items = enumerate(value)
        return next(
            (p for i, v in items if (p := _newline_at(v, kind.item_type, f"{path}[{i}]"))), None
        )
    if isinstance(kind, types.StructType) and isinstance(value, dict):
        fields = ((f, value.get(f.encode_name)) for f in kind.fields)
        return next(
            (p for f, v in fields if (p := _newline_at(v, f.type, f"{path}.{f.name}"))), None
        )
    return None
