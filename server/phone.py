"""`lianxin device enroll|edit|sync|show|outbox`: the reference client as a phone you type at.

The device file is locked by the holder's PIN: from the environment variable
`LIANXIN_PIN`, else asked for on the terminal.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec

from schemas.changes import Add, Append, Op, Remove
from sync.client import DeviceClient
from sync.errors import LianxinError, Unreadable
from sync.merge import Rejected


def _value(text: str) -> Any:
    """JSON if it parses (numbers, objects, null), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _read_pin() -> str:
    """The PIN of the device file: `LIANXIN_PIN`, else typed at a terminal prompt."""
    pin = os.environ.get("LIANXIN_PIN")
    if pin is None:
        if not sys.stdin.isatty():
            raise SystemExit("lianxin: the device file needs its PIN: set LIANXIN_PIN")
        pin = getpass.getpass("PIN of the device file: ")
    if not pin:
        raise SystemExit("lianxin: an empty PIN protects nothing")
    return pin


def _pairs(items: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in items:
        name, separator, text = item.partition("=")
        if not separator:
            raise SystemExit(f"lianxin: expected field=value, got {item!r}")
        pairs.append((name, _value(text)))
    return pairs


def run(action: str, file: Path, server: str, args: Any) -> int:
    """Run one phone command against the device file `file` and the office at `server`."""
    pin = _read_pin()
    with httpx.Client(base_url=server, timeout=30) as http:
        try:
            device = DeviceClient(file, http, passphrase=pin)
        except Unreadable as error:
            print(f"lianxin: {file}: {error.detail}")
            return 1
        with device:
            return _act(action, device, args)


def _act(action: str, device: DeviceClient, args: Any) -> int:
    try:
        match action:
            case "enroll":
                enrollment = device.enroll(args.code, label=args.label)
                print(f"Enrolled {enrollment.device_id} as {enrollment.role} {enrollment.user_id}")
            case "edit":
                ops: list[Op] = [Add(field=f, value=v) for f, v in _pairs(args.add)]
                ops += [Remove(field=f, value=v) for f, v in _pairs(args.remove)]
                ops += [Append(field=f, entry=v) for f, v in _pairs(args.append)]
                change = device.edit(
                    args.record_type, args.record_id, dict(_pairs(args.fields)), ops
                )
                print(f"Queued {change.change_id}")
            case "sync":
                report = device.sync()
                pulled = report.pulled
                print(
                    f"Pushed {len(report.pushed)} changes; pulled {pulled.applied}"
                    f" in {pulled.pages} pages, {pulled.evicted} evictions"
                )
            case "show":
                record = device.record(args.record_type, args.record_id)
                if record is None:
                    print("lianxin: this device holds no such record")
                    return 1
                print(msgspec.json.format(msgspec.json.encode(record)).decode())
                for conflict in device.conflicts(args.record_type, args.record_id):
                    values = " | ".join(f"{c.device_id}: {c.value!r}" for c in conflict.candidates)
                    print(f"conflict on {conflict.field}: {values}")
            case "outbox":
                for entry in device.outbox():
                    print(f"{entry.change_id}  {entry.state}  {entry.reason or ''}".rstrip())
    except Rejected as rejected:
        print(f"lianxin: refused: {rejected.reason}: {rejected.detail}")
        return 1
    except LianxinError as error:
        print(f"lianxin: the office refused: {error.code}: {error.detail}")
        return 1
    return 0
