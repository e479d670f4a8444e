"""Field-level merge: apply one change to one record's state, purely.

Concurrency comes from causal context, never from wall clocks. A write is
*seen* by a change when the change's device wrote it earlier, or the change's
`seen` vector covers its stamp. A write that a new change has seen is
superseded by it; one it has not seen is concurrent and stays beside it.
That makes merging independent of arrival order: any delivery of the same
changes that respects causality gives the same state and the same conflicts.

Policies (declared on the record types in `schemas.records`):

- lww:    concurrent writes stay as siblings; the shown value is the one with
          the highest (order, device); distinct siblings are a conflict.
- set:    observed-remove set: a remove takes only the adds its change had seen.
- log:    entries unioned by key; other content under a key the device had seen
          is rejected, under one appended concurrently it shows beside it.
          A log reads by rank, and one change's entries in the order appended.
- status: a state machine checked against the status the device had seen;
          concurrent transitions rank, and distinct ones are a conflict.
- sealed: lww until the record has a signature the device had seen; after
          that an edit is rejected (`agreement_sealed`).

Deletes are tombstones: fields stay. A delete that an edit was made beside
(neither had seen the other) is contested: the record is then in a `deleted`
conflict listing every live write no delete had seen (perhaps none), until a
delete or restore that had seen every edit settles it. Edits made after
seeing every current delete, the deleting device's own among them, open no
conflict by themselves.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Collection, Iterable
from typing import Annotated, Any, NamedTuple

import msgspec

from schemas.changes import (
    Add,
    Append,
    Candidate,
    Change,
    Conflict,
    Delete,
    Reason,
    Remove,
    Restore,
)
from schemas.policy import AddRemoveSet, Log, Lww, Policy, Sealed, StatusMachine
from schemas.records import RECORD_TYPES
from schemas.state import RecordState, Write

DELETED_FIELD = "_record"
_ENUM_VALUE = re.compile(r"^Invalid enum value .*(?= - at `[^`]*`$)", re.DOTALL)
_encode = msgspec.msgpack.Encoder().encode


class Holder(msgspec.Struct):
    """A one-field Struct made per field type: msgspec caches how to convert into a
    Struct, while converting into a bare typing form rebuilds that on every call."""

    value: Any


def _holder(value_type: Any) -> type[Holder]:
    holder = msgspec.defstruct("Holder", [("value", value_type)], bases=(Holder,))
    return typing.cast(type[Holder], holder)


class FieldSpec(NamedTuple):
    """What merging needs of one record field: its policy, default and value types.

    `holder` validates a whole value; `item_holder` one element of a list field.
    """

    policy: Policy
    default: Any
    holder: type[Holder]
    item_holder: type[Holder] | None


class Rejected(Exception):
    """A change that can never apply; carries the machine reason and a detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Outcome(NamedTuple):
    """The result of applying one change: the new state, or why it was rejected."""

    state: RecordState | None
    rejected: Rejected | None


@functools.cache
def field_specs(record_type: str) -> dict[str, FieldSpec]:
    """The merge spec of every field of a record type (raises KeyError if unknown)."""
    struct = RECORD_TYPES[record_type]
    hints = typing.get_type_hints(struct, include_extras=True)
    specs = {}
    for info in msgspec.structs.fields(struct):
        hint = hints[info.name]
        policies = [m for m in hint.__metadata__ if isinstance(m, Policy)]
        if len(policies) != 1:
            raise TypeError(f"{struct.__name__}.{info.name} must declare one merge policy")
        # Nested Annotated flattens, so value constraints (msgspec.Meta) sit beside the policy.
        constraints = [m for m in hint.__metadata__ if not isinstance(m, Policy)]
        value_type = Annotated[hint.__origin__, *constraints] if constraints else hint.__origin__
        default = (
            info.default if info.default_factory is msgspec.NODEFAULT else info.default_factory()
        )
        items = typing.get_args(value_type) if typing.get_origin(value_type) is list else ()
        specs[info.name] = FieldSpec(
            policies[0], default, _holder(value_type), _holder(items[0]) if items else None
        )
    return specs


def new_state(record_type: str, record_id: str) -> RecordState:
    return RecordState(record_type=record_type, record_id=record_id, edits={})


def seen_by(write: Write, change: Change) -> bool:
    """Whether `change`'s device had seen `write` when it made the change."""
    return covers(write, change.device_id, change.hlc, change.seen)


def covers(write: Write, device_id: str, hlc: int, seen: dict[str, int]) -> bool:
    if write.device_id == device_id and write.hlc <= hlc:
        return True
    return seen.get(write.device_id, -1) >= write.hlc


def rank_key(write: Write) -> tuple[int, str]:
    return (write.order, write.device_id)


def apply_change(state: RecordState | None, change: Change, order: int | None = None) -> Outcome:
    """Apply `change` to `state` (None: the record is new); never mutates `state`.

    `order` is the stamp that ranks this change's writes against concurrent
    ones (the server passes a clamped stamp for absurd clocks); it defaults to
    the change's hlc. A rejected change leaves the state as it was.
    """
    try:
        specs = field_specs(change.record_type)
    except KeyError:
        return Outcome(None, Rejected(Reason.UNKNOWN_RECORD_TYPE, change.record_type))
    state = new_state(change.record_type, change.record_id) if state is None else _upgraded(state)
    try:
        return Outcome(_apply(state, change, specs, change.hlc if order is None else order), None)
    except Rejected as rejected:
        return Outcome(None, rejected)


def _apply(
    state: RecordState, change: Change, specs: dict[str, FieldSpec], order: int
) -> RecordState:
    if not change.set and not change.ops:
        raise Rejected(Reason.EMPTY_CHANGE, "a change must set a field or carry an operation")
    if change.hlc <= state.vv.get(change.device_id, -1):
        raise Rejected(
            Reason.STALE_STAMP,
            f"stamp {change.hlc} is not after this device's last change to the record",
        )

    def write(value: Any, seen: dict[str, int] | None = None, position: int = 0) -> Write:
        ids = (change.device_id, change.hlc, change.change_id, order)
        return Write(value, *ids, seen or {}, position)

    # Validate everything before touching anything: a change applies whole or not at all.
    sets = {name: _checked(specs, name, value) for name, value in change.set.items()}
    for name, (spec, value) in sets.items():
        match spec.policy:
            case StatusMachine() as machine:
                _check_transition(state, change, name, machine, value, spec.default)
            case Sealed(by=by) if any(seen_by(w, change) for w in _appends(state, by)):
                raise Rejected(Reason.AGREEMENT_SEALED, f"{name} is sealed by a signature")
            case Lww() | Sealed():
                pass
            case _:
                raise Rejected(
                    Reason.WRONG_OPERATION, f"{name} is a collection; use add/remove/append"
                )

    next_state = msgspec.structs.replace(
        state,
        vv={**state.vv, change.device_id: change.hlc},
        registers=dict(state.registers),
        sets=dict(state.sets),
        logs=dict(state.logs),
        log_repeats=dict(state.log_repeats),
        history=dict(state.history),
    )
    for name, (spec, value) in sets.items():
        if isinstance(spec.policy, StatusMachine):
            seen = {**change.seen, change.device_id: change.hlc}
            next_state.history[name] = [*state.history.get(name, ()), write(value, seen)]
        else:
            siblings = state.registers.get(name, ())
            next_state.registers[name] = [
                *(w for w in siblings if not seen_by(w, change)),
                write(value),
            ]

    for position, op in enumerate(change.ops):
        match op:
            case Add(field=name, value=raw) | Remove(field=name, value=raw):
                spec, element = _checked_element(specs, name, raw, AddRemoveSet)
                members = dict(next_state.sets.get(name, {}))
                tags = [w for w in members.get(element, ()) if not seen_by(w, change)]
                if isinstance(op, Add):
                    tags.append(write(element))
                if tags:
                    members[element] = tags
                else:
                    members.pop(element, None)
                next_state.sets[name] = members
            case Append(field=name, entry=raw):
                spec, entry = _checked_element(specs, name, raw, Log)
                log = spec.policy
                assert isinstance(log, Log)  # _checked_element made sure
                key = str(entry[log.key])
                entries = dict(next_state.logs.get(name, {}))
                new = write(entry, position=position)
                if key in entries:
                    repeats = dict(next_state.log_repeats.get(name, {}))
                    appended = [entries[key], *repeats.get(key, ())]
                    # An entry is never edited: content under a key other than any the
                    # device had seen there is refused. Unseen, it was appended concurrently
                    # (two devices chose one key), and is kept like any repeat.
                    had = [w.value for w in appended if seen_by(w, change)]
                    if not log.repeats and had and entry not in had:
                        raise Rejected(
                            Reason.LOG_ENTRY_CONFLICT,
                            f"{name} already has an entry {key!r} with other content",
                        )
                    # Keep every append of the key, by rank: the first is the key's entry,
                    # and sealing sees all of them, whatever order they arrived in.
                    first, *rest = sorted([*appended, new], key=_log_rank)
                    entries[key], repeats[key] = first, rest
                    next_state.log_repeats[name] = repeats
                else:
                    entries[key] = new
                next_state.logs[name] = entries
            case Delete() | Restore():
                seen = {**change.seen, change.device_id: change.hlc}
                tombstone = write(isinstance(op, Delete), seen)
                if tombstone.value and _edited_beside(state, tombstone):
                    tombstone = msgspec.structs.replace(tombstone, contested=True)
                next_state.deleted = [
                    *(w for w in next_state.deleted if not seen_by(w, change)),
                    tombstone,
                ]
    if _is_edit(change):
        _mark_edit(state, next_state, change)
    return next_state


def _upgraded(state: RecordState) -> RecordState:
    """A state written before edits were counted (`edits` None) in today's form.

    Every earlier change counts as an edit, and a current delete is contested
    when a live write it had not seen remains, the rule of that time.
    """
    if state.edits is not None:
        return state
    live = [w for _, w in _live_writes(state)]
    deleted = [
        msgspec.structs.replace(d, contested=True)
        if d.value and any(not covers(w, d.device_id, d.hlc, d.seen) for w in live)
        else d
        for d in state.deleted
    ]
    return msgspec.structs.replace(state, edits=dict(state.vv), deleted=deleted)


def _edited_beside(state: RecordState, delete: Write) -> bool:
    """Whether an edit the delete had not seen was applied before it (so neither saw the other)."""
    return any(
        hlc > delete.seen.get(device, -1)
        for device, hlc in (state.edits or {}).items()
        if device != delete.device_id
    )


def contests_delete(change: Change, state: RecordState) -> bool:
    """Whether `change`, applied to give `state`, takes part in the record's `deleted`
    conflict, with or without a value left to show: an edit made beside a current delete
    (one it had not seen), or a current delete made beside an edit."""
    if _is_edit(change) and any(_unseen_delete(w, change) for w in state.deleted):
        return True
    return any(w.contested and w.change_id == change.change_id for w in state.deleted)


def _unseen_delete(write: Write, change: Change) -> bool:
    """Whether `write` (of a record's `deleted`) is a delete `change` had not seen."""
    return write.value and not seen_by(write, change)


def _is_edit(change: Change) -> bool:
    return bool(change.set) or any(not isinstance(op, Delete | Restore) for op in change.ops)


def _mark_edit(state: RecordState, next_state: RecordState, change: Change) -> None:
    """Count `change` as an edit, and mark the current deletes it was made beside contested."""
    next_state.edits = {**(state.edits or {}), change.device_id: change.hlc}
    if next_state.deleted:
        next_state.deleted = [
            msgspec.structs.replace(w, contested=True)
            if not w.contested and _unseen_delete(w, change)
            else w
            for w in next_state.deleted
        ]


def _log_rank(write: Write) -> tuple[int, str, str]:
    return (write.order, write.device_id, write.change_id)


def _entry_rank(write: Write) -> tuple[int, str, int, int]:
    """The order a log reads in: by rank, then a change's entries in the order appended."""
    return (write.order, write.device_id, write.hlc, write.position)


def _log_entries(state: RecordState, name: str, log: Log) -> list[Write]:
    """The entries log `name` reads, in order: one a key, or, in a log without repeats,
    one a key and content (two devices chose one key for different entries)."""
    shown = list(state.logs[name].values())
    if not log.repeats:
        for key, repeats in state.log_repeats.get(name, {}).items():
            distinct = [state.logs[name][key]]
            for extra in repeats:  # in rank order: each content shows its first append
                if all(extra.value != w.value for w in distinct):
                    distinct.append(extra)
            shown += distinct[1:]
    return sorted(shown, key=_entry_rank)


def _appends(state: RecordState, name: str) -> Iterable[Write]:
    """Every append ever applied to log `name`, repeats of a key included."""
    yield from state.logs.get(name, {}).values()
    for repeats in state.log_repeats.get(name, {}).values():
        yield from repeats


def _checked(specs: dict[str, FieldSpec], name: str, value: Any) -> tuple[FieldSpec, Any]:
    """The field's spec and `value` validated against its type, as plain builtins."""
    spec = specs.get(name)
    if spec is None:
        raise Rejected(Reason.UNKNOWN_FIELD, name)
    return spec, _convert(value, spec.holder, name)


def _checked_element(
    specs: dict[str, FieldSpec], name: str, value: Any, policy: type[AddRemoveSet | Log]
) -> tuple[FieldSpec, Any]:
    """Like `_checked`, for one element of a collection field with the given policy."""
    spec = specs.get(name)
    if spec is None:
        raise Rejected(Reason.UNKNOWN_FIELD, name)
    if not isinstance(spec.policy, policy):
        kind = "set" if policy is AddRemoveSet else "log"
        raise Rejected(Reason.WRONG_OPERATION, f"{name} is not a {kind}")
    assert spec.item_holder is not None  # every set and log field is a list
    return spec, _convert(value, spec.item_holder, name)


def _convert(value: Any, holder: type[Holder], name: str) -> Any:
    """`value` validated against the field's type, as plain builtins."""
    try:
        return msgspec.to_builtins(msgspec.convert({"value": value}, holder).value)
    except msgspec.ValidationError as error:
        where = str(error).replace("`$.value", "`$")
        # msgspec quotes a value a fixed choice refused ("Invalid enum value 'He Jianguo'"):
        # a name typed in the wrong field. The detail is kept in clear, so it says no more.
        where = _ENUM_VALUE.sub("Invalid enum value", where)
        raise Rejected(Reason.INVALID_VALUE, f"{name}: {where}") from None


def _check_transition(
    state: RecordState,
    change: Change,
    name: str,
    machine: StatusMachine,
    target: str,
    default: str,
) -> None:
    """Reject a status move that is illegal from the status the device had seen.

    A record whose status the device never saw set is in the field's default
    (its first status): it may start in any initial status or move on from
    the default, as a record created with its default status could.
    """
    history = [w for w in state.history.get(name, ()) if seen_by(w, change)]
    current = _status_winner(machine, _maximal(history))
    if current is None:
        if target not in machine.initial and target not in machine.transitions[default]:
            raise Rejected(Reason.ILLEGAL_TRANSITION, f"{name}: a record cannot start as {target}")
    elif target != current.value and target not in machine.transitions[current.value]:
        raise Rejected(
            Reason.ILLEGAL_TRANSITION, f"{name}: {current.value} cannot move to {target}"
        )


def _maximal(history: Iterable[Write]) -> list[Write]:
    """The writes in `history` that no other write in it had seen."""
    writes = list(history)
    # Usually the newest write had seen all the others: then it is the only one. (Two
    # writes cannot each have seen the other, so nothing else can have seen it.)
    if writes:
        last = writes[-1]
        if all(covers(w, last.device_id, last.hlc, last.seen) for w in writes[:-1]):
            return [last]
    return [
        w
        for w in writes
        if not any(o is not w and covers(w, o.device_id, o.hlc, o.seen) for o in writes)
    ]


def _status_winner(machine: StatusMachine, heads: list[Write]) -> Write | None:
    return max(heads, key=lambda w: (machine.rank[w.value], *rank_key(w)), default=None)


def is_deleted(state: RecordState) -> bool:
    """Whether the record is deleted: any current delete outranks a concurrent restore."""
    return any(w.value for w in state.deleted)


def materialize(state: RecordState, only: Collection[str] | None = None) -> msgspec.Struct:
    """The record as users see it: every field's winning value.

    With `only`, just those fields; the rest keep their defaults. Each field's
    value comes from its own writes alone, so this is the cheap way for an
    index to read a few fields of a case with many notes and visits.
    """
    specs = field_specs(state.record_type)
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        if only is not None and name not in only:
            continue
        match spec.policy:
            case Lww() | Sealed() if name in state.registers:
                values[name] = max(state.registers[name], key=rank_key).value
            case StatusMachine() as machine if name in state.history:
                winner = _status_winner(machine, _maximal(state.history[name]))
                values[name] = winner.value if winner else spec.default
            case AddRemoveSet() if name in state.sets:
                values[name] = sorted(state.sets[name])
            case Log() as log if name in state.logs:
                values[name] = [w.value for w in _log_entries(state, name, log)]
    return msgspec.convert(values, RECORD_TYPES[state.record_type])


def conflicts(state: RecordState) -> list[Conflict]:
    """Every open conflict of the record, one per field, in field order."""
    # Most records have no concurrent writes: a conflict needs two sibling values,
    # two status writes or a delete, so skip the field-by-field work without them.
    if (
        max(map(len, state.registers.values()), default=0) < 2
        and max(map(len, state.history.values()), default=0) < 2
        and not is_deleted(state)
    ):
        return []
    return _conflicts_of(state, None)


def conflicts_touching(change: Change, state: RecordState) -> list[Conflict]:
    """The open conflicts of the record that `change` can have opened, altered or
    settled, in field order: those of the fields it sets (no other field's writes
    change), and the conflict over a delete, which spans every live write."""
    return _conflicts_of(state, change.set)


def _conflicts_of(state: RecordState, names: Collection[str] | None) -> list[Conflict]:
    """The open conflicts of these fields (None: all), and the conflict over a delete."""
    state = _upgraded(state)
    found = [
        conflict
        for name, machine in _conflict_fields(state.record_type)
        if (names is None or name in names)
        and (conflict := _field_conflict(state, name, machine)) is not None
    ]
    if any(w.value and w.contested for w in state.deleted):
        # Each candidate is {field: value}, so two fields written by one change stay apart,
        # and the order (stamp, device, field) does not depend on arrival.
        unseen = sorted(
            (
                msgspec.structs.replace(w, value={name: w.value})
                for name, w in _live_writes(state)
                if not any(covers(w, d.device_id, d.hlc, d.seen) for d in state.deleted if d.value)
            ),
            key=lambda w: (w.order, w.device_id, _encode(w.value)),
        )
        # Open even with no value left to show (the edit beside it only removed, or was
        # overwritten and then removed): only a delete or restore that saw it all settles it.
        found.append(_conflict(state, DELETED_FIELD, "deleted", True, unseen))
    return found


def _field_conflict(
    state: RecordState, name: str, machine: StatusMachine | None
) -> Conflict | None:
    """The open conflict of one lww or sealed field (`machine` None) or status field."""
    if machine is None:
        siblings = state.registers.get(name, ())
        if len(siblings) > 1 and _distinct(siblings):
            ordered = sorted(siblings, key=rank_key)
            return _conflict(state, name, "value", ordered[-1].value, ordered)
        return None
    history = state.history.get(name, ())
    if len(history) < 2:  # one write is its own only head: nothing to settle
        return None
    heads = _maximal(history)
    if not _distinct(heads):
        return None
    winner = _status_winner(machine, heads)
    winner_value = winner.value if winner else None
    return _conflict(state, name, "status", winner_value, sorted(heads, key=rank_key))


def _conflict(
    state: RecordState, name: str, kind: Any, winner: Any, ordered: list[Write]
) -> Conflict:
    return Conflict(
        record_type=state.record_type,
        record_id=state.record_id,
        field=name,
        kind=kind,
        winner=winner,
        candidates=[
            Candidate(value=w.value, device_id=w.device_id, hlc=w.hlc, change_id=w.change_id)
            for w in ordered
        ],
    )


@functools.cache
def _conflict_fields(record_type: str) -> list[tuple[str, StatusMachine | None]]:
    """The fields that can be in conflict, in field order: lww and sealed (None), status."""
    fields: list[tuple[str, StatusMachine | None]] = []
    for name, spec in field_specs(record_type).items():
        match spec.policy:
            case Lww() | Sealed():
                fields.append((name, None))
            case StatusMachine() as machine:
                fields.append((name, machine))
    return fields


def _distinct(writes: list[Write]) -> bool:
    first = writes[0].value
    return any(w.value != first for w in writes[1:])


def _live_writes(state: RecordState) -> Iterable[tuple[str, Write]]:
    """Every write that still shows in the record (not superseded), with its field."""
    for name, siblings in state.registers.items():
        yield from ((name, w) for w in siblings)
    for name, history in state.history.items():
        yield from ((name, w) for w in _maximal(history))
    for name, members in state.sets.items():
        yield from ((name, w) for tags in members.values() for w in tags)
    for name in state.logs:
        log = field_specs(state.record_type)[name].policy
        assert isinstance(log, Log)
        yield from ((name, w) for w in _log_entries(state, name, log))
