"""`lianxin device enroll|edit|sync|show|outbox`: the reference client as a phone you type at.

The device file is locked by the holder's PIN: from the environment variable
`LIANXIN_PIN`, else asked for on the terminal.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec

from schemas.changes import Add, Append, Op, Remove
from sync.client import AlreadyEnrolled, DeviceClient, NotEnrolled
from sync.errors import LianxinError, Unreadable
from sync.merge import Rejected


def _value(text: str) -> Any:
    """JSON if it parses (numbers, objects, null), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _read_pin(new: bool) -> str:
    """The PIN of the device file: `LIANXIN_PIN`, else typed at a terminal prompt (twice
    for a `new` file, whose PIN a typo would otherwise lock for good)."""
    pin = os.environ.get("LIANXIN_PIN")
    if pin is None:
        if not sys.stdin.isatty():
            raise SystemExit("lianxin: the device file needs its PIN: set LIANXIN_PIN")
        pin = getpass.getpass("PIN of the new device file: " if new else "PIN of the device file: ")
        if new and pin != getpass.getpass("The same PIN again: "):
            raise SystemExit("lianxin: the two PINs differ; nothing was made")
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
    new = not file.exists()
    if new and action != "enroll":  # a mistyped name would make an empty device
        print(f"lianxin: no device file {file}; make one with `lianxin device enroll`")
        return 1
    pin = _read_pin(new)
    with httpx.Client(base_url=server, timeout=30) as http:
        try:
            device = DeviceClient(file, http, passphrase=pin)
        except Unreadable as error:
            print(f"lianxin: {file}: {error.detail}")
            return 1
        except sqlite3.DatabaseError as error:
            print(f"lianxin: {file} is not a device file ({error})")
            return 1
        except OSError as error:
            print(f"lianxin: cannot open {file}: {error.strerror}")
            return 1
        with device:
            try:
                return _act(action, device, args)
            except httpx.TransportError as error:
                print(f"lianxin: cannot reach the office at {server}: {error}")
                return 1


def _act(action: str, device: DeviceClient, args: Any) -> int:
    try:
        match action:
            case "enroll":
                enrollment = device.enroll(args.code, label=args.label)
                print(f"Enrolled {enrollment.device_id} as {enrollment.role} {enrollment.user_id}")
                if enrollment.pseudonym:
                    print(f"Warnings from this device are signed {enrollment.pseudonym}")
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
                    f"Pushed {len(report.pushed)} changes; pulled {pulled.applied} changes"
                    f" and {pulled.states} whole records in {pulled.pages} pages,"
                    f" {pulled.evicted} evictions"
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
    except (AlreadyEnrolled, NotEnrolled) as error:
        print(f"lianxin: {error}")
        return 1
    except Rejected as rejected:
        print(f"lianxin: refused: {rejected.reason}: {rejected.detail}")
        return 1
    except LianxinError as error:
        print(f"lianxin: the office refused: {error.code}: {error.detail}")
        return 1
    return 0
