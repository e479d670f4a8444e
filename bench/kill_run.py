"""The long kill run: SIGKILL a real `lianxin serve` hundreds of times under pushing clients.

    uv run python -m bench.kill_run --kills 200      # a server start-up per kill: minutes
    uv run python -m bench.kill_run --kills 3        # a smoke run (tests/bench/test_kill_run.py)

Issue 8, point 2. An office is set up in a temporary folder (`lianxin
init`, then a mediator and an enrolment code per phone) and served by
`lianxin serve` on a free port of 127.0.0.1. Several mediators' phones, each
a reference client (`sync.client.DeviceClient`) in its own thread with its
own device file, enrol over HTTP, make a stream of case edits and push them
(pulling now and then), retrying after every transport error and every 503,
as a phone in the field does. Meanwhile the server is killed with SIGKILL
at a random moment of each of its lives, with no shutdown handler and no
flush (a power cut, as far as the process can tell), and started again at
once.

Afterwards every phone pushes and pulls what it still holds, the server is
stopped, and the run checks:

- `PRAGMA integrity_check` is `ok` on the store and on the data-key store;
- `lianxin audit verify` passes;
- every record's state, read as the server reads it (checkpoint and the changes
  logged after it), equals its logged changes merged in order;
- every change a phone holds an answer for is stored exactly once (in the
  change log or, if rejected, in quarantine), no stored change is unknown
  to the phones, and no phone holds a change without an answer;
- every phone shows, for each of its cases, the title of its own last edit.

It prints the kills survived, the requests sent and how they ended, and the
counts of lost, duplicated and 5xx, which must all be 0; the exit code is 1
on any violation. `docs/RELIABILITY.md` holds the latest figures.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from schemas.state import RecordState
from server.fleet.office import free_port, start_server, stop_process
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.directory import Directory
from server.storage.sqlite import open_store
from sync import merge
from sync.atrest import KdfParams
from sync.client import DeviceClient
from sync.clock import system_wall_ms
from sync.errors import LianxinError, Unavailable
from sync.replica_store import OutboxEntry
from sync.store import RecordKey

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "kill-run office passphrase (a bench, not a secret)"
OFFICE_ENV = {
    **os.environ,
    "LIANXIN_PASSPHRASE": PASSPHRASE,
    # Measures the server at full speed: no per-device request limit (a policy, not a cost).
    "LIANXIN_SYNC_REQUESTS_PER_MINUTE": "0",
}
PIN = "246810"
# A cheap scrypt cost for the phones' files: the run measures the server, not the PIN.
PHONE_KDF = KdfParams(salt=bytes(16), n=2**4)
DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}
CASES_PER_PHONE = 50


def lianxin(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `lianxin` command line against `data`."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=OFFICE_ENV,
    )


def lianxin_ok(data: Path, *args: str) -> str:
    """`lianxin(...)`'s output, stripped; raises if the command failed."""
    done = lianxin(data, *args)
    if done.returncode != 0:
        raise RuntimeError(f"lianxin {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def set_up_office(data: Path, devices: int, prefix: str) -> list[tuple[str, str]]:
    """A new office (`lianxin init`) with a mediator and an enrolment code per device.

    The users and codes are made in this process, with the `Directory` calls that
    `lianxin user add` and `lianxin code` make, before any server opens the store:
    one command per device would cost a Python start-up each.
    """
    lianxin_ok(data, "init", "--admin", "Admin", "--org-unit", "Hangzhou")
    settings = Settings(data_dir=data)
    store = open_store(settings, OfficeKeys.load(settings.keys_path, PASSPHRASE))
    directory = Directory(store)
    codes = []
    try:
        for n in range(devices):
            now_ms = system_wall_ms()
            user = directory.add_user(f"{prefix}{n}", "mediator", ["Hangzhou/Gongshu"], now_ms)
            codes.append((f"{prefix}{n}", directory.issue_code(user.user_id, now_ms, 3600_000)))
    finally:
        store.close()
    return codes


class ServerProcess:
    """`lianxin serve` for `data` on one port of 127.0.0.1, started again after each kill."""

    def __init__(self, data: Path, env: dict[str, str] | None = None) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**OFFICE_ENV, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data / "server.log"

    def start(self, timeout_s: float = 60) -> float:
        """Start and wait until `/v1/office` answers; the seconds it took."""
        began = time.monotonic()
        self.process = start_server(self.data, self.port, self.env, timeout_s)
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flush."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=20)


class Tally:
    """How every HTTP request of the run ended, counted across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()

    def count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1


class CountingTransport(httpx.HTTPTransport):
    """An HTTP transport that tallies each request: its status, or how it failed."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except httpx.ConnectError:
            self.tally.count("refused: server down")
            raise
        except httpx.TransportError:
            self.tally.count("cut off by a kill")
            raise
        self.tally.count(str(response.status_code))
        return response


@dataclass
class Phone:
    """A mediator's phone: a reference client, made and driven in one thread of its own.

    What the checks need is kept when the thread ends: the outbox with the
    server's answers, and the title the phone shows for each of its cases.
    """

    name: str
    client: DeviceClient
    rng: random.Random
    edits: int = 0
    last_title: dict[str, str] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    outbox: list[OutboxEntry] = field(default_factory=list)
    shown: dict[str, str | None] = field(default_factory=dict)

    def edit_some(self) -> None:
        for _ in range(self.rng.randint(1, 40)):
            case_id = f"k-{self.name}-{self.edits % CASES_PER_PHONE}"
            title = f"{self.name} edit {self.edits}"
            fields: dict[str, Any] = {"title": title, "households": self.edits % 70}
            if self.edits < CASES_PER_PHONE:  # the case is new: where it is
                fields["location"] = DAGUAN
            self.client.edit("case", case_id, fields)
            self.last_title[case_id] = title
            self.edits += 1

    def until_done(self, action: Callable[[], object], give_up: threading.Event) -> bool:
        """Run `action` until it succeeds, retrying as a phone does; False if told to give up."""
        wait = 0.01
        while True:
            try:
                action()
                return True
            except httpx.ConnectError:
                wait = min(wait * 2, 0.2)  # the server is down: back off while it restarts
            except (httpx.TransportError, Unavailable):
                wait = 0.01  # cut off or busy: nothing was half done, try again at once
            except LianxinError as error:
                self.errors[error.code] += 1  # a refusal no kill should cause; keep count
            if give_up.is_set():
                return False
            time.sleep(self.rng.uniform(wait / 2, wait))


@dataclass
class Crew:
    """What the phone threads share with the thread that kills the server."""

    url: str
    tally: Tally
    stop: threading.Event = field(default_factory=threading.Event)  # the kills are over
    phones: list[Phone] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_phone(crew: Crew, name: str, code: str, path: Path, seed: int) -> None:
    """Enrol, then edit and push (pulling now and then) until the kills are over; then sync."""
    try:
        transport = CountingTransport(crew.tally)
        http = httpx.Client(base_url=crew.url, timeout=10, transport=transport)
        client = DeviceClient(path, http, passphrase=PIN, kdf=PHONE_KDF, batch_size=20)
        phone = Phone(name, client, random.Random(seed))
        with crew.lock:
            crew.phones.append(phone)
        never = threading.Event()
        phone.until_done(lambda: client.enroll(code, label=f"kill run {name}"), never)
        while not crew.stop.is_set():
            phone.edit_some()
            if not phone.until_done(client.push, crew.stop):
                break
            if phone.rng.random() < 0.25 and not phone.until_done(client.pull, crew.stop):
                break
        # The server stays up from here on: what the phone still holds goes through now.
        phone.until_done(client.sync, never)
        phone.outbox = client.outbox()
        phone.shown = {
            case_id: getattr(client.record("case", case_id), "title", None)
            for case_id in phone.last_title
        }
        client.close()
        http.close()
    except Exception as error:  # the run must fail loudly, not report a quiet thread as OK
        with crew.lock:
            crew.crashed.append(f"{name}: {error!r}")
        raise


def states_against_the_log(data: Path) -> tuple[int, list[RecordKey]]:
    """How many records there are, and those whose state as the store reads it is not
    their logged changes merged in server order. Each kill fell wherever it fell, so
    checkpoints were written, or not, at any moment; a read must not care."""
    settings = Settings(data_dir=data)
    store = open_store(settings, OfficeKeys.load(settings.keys_path, PASSPHRASE))
    try:
        folded: dict[RecordKey, RecordState | None] = {}
        for logged in store.changes_since(0, 1 << 62):
            key = (logged.change.record_type, logged.change.record_id)
            folded[key] = merge.apply_change(folded.get(key), logged.change, logged.order).state
        stored = store.states(folded)
    finally:
        store.close()
    return len(folded), sorted(key for key, state in folded.items() if stored.get(key) != state)


def check_store(server: ServerProcess, phones: list[Phone]) -> tuple[dict[str, Any], list[str]]:
    """The figures and the violations (empty if none) of the stopped server's store."""
    problems: list[str] = []
    figures: dict[str, Any] = {}
    for path in (server.data / "lianxin.db", server.data / "keys" / "data-keys.db"):
        with closing(sqlite3.connect(path)) as db:
            (result,) = db.execute("PRAGMA integrity_check").fetchone()
        figures[f"integrity_check {path.name}"] = result
        if result != "ok":
            problems.append(f"integrity_check of {path.name}: {result}")

    audit = lianxin(server.data, "audit", "verify")
    figures["audit verify"] = (audit.stdout + audit.stderr).strip().splitlines()[-1:]
    if audit.returncode != 0:
        problems.append(f"audit verify failed: {audit.stdout}{audit.stderr}")

    records, wrong = states_against_the_log(server.data)
    figures["record states"] = f"{records - len(wrong)} of {records} equal their log merged"
    if wrong:
        problems.append(f"{len(wrong)} of {records} record states differ from the log: {wrong[:3]}")

    with closing(sqlite3.connect(server.data / "lianxin.db")) as db:
        stored = Counter(
            change_id
            for (change_id,) in db.execute(
                "SELECT change_id FROM changes UNION ALL SELECT change_id FROM quarantine"
            )
        )
    outboxes = [entry for phone in phones for entry in phone.outbox]
    unanswered = [e.change_id for e in outboxes if e.state in ("pending", "sent")]
    acknowledged = [e.change_id for e in outboxes if e.state not in ("pending", "sent")]
    lost = [c for c in acknowledged if stored[c] == 0]
    duplicated = [c for c, n in stored.items() if n > 1]
    unknown = set(stored) - {e.change_id for e in outboxes}
    figures.update(
        changes_made=len(outboxes),
        acknowledged=len(acknowledged),
        unanswered=len(unanswered),
        answers=dict(Counter(e.state for e in outboxes)),
        lost=len(lost),
        duplicated=len(duplicated),
    )
    if lost:
        problems.append(f"{len(lost)} acknowledged changes are not stored, e.g. {lost[:3]}")
    if duplicated:
        problems.append(f"{len(duplicated)} changes are stored twice, e.g. {duplicated[:3]}")
    if unknown:
        problems.append(f"{len(unknown)} stored changes no phone made, e.g. {sorted(unknown)[:3]}")
    if unanswered:
        problems.append(f"{len(unanswered)} changes still without an answer")
    if not outboxes:
        problems.append("the phones made no change: the run proved nothing")
    for phone in phones:
        wrong = {k: v for k, v in phone.shown.items() if v != phone.last_title[k]}
        if wrong:
            problems.append(f"phone {phone.name} shows stale titles: {sorted(wrong)[:3]}")
    return figures, problems


def kill_run(kills: int, devices: int, seed: int, max_up_s: float, folder: Path) -> int:
    rng = random.Random(seed)
    data = folder / "office"
    began = time.monotonic()
    codes = set_up_office(data, devices, "m")
    server = ServerProcess(data)
    tally = Tally()
    crew = Crew(server.url, tally)
    threads = []
    for n, (name, code) in enumerate(codes):
        arguments = (crew, name, code, folder / f"{name}.db", seed * 1000 + n)
        threads.append(threading.Thread(target=run_phone, args=arguments, daemon=True))
    server.start()
    restarts: list[float] = []
    survived = 0
    try:
        for thread in threads:
            thread.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, max_up_s))  # a random moment of this life
            server.kill()
            restarts.append(server.start())
            survived += 1
            if survived % 20 == 0:
                print(f"  {survived} kills, {sum(tally.outcomes.values())} requests", flush=True)
        crew.stop.set()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        crew.stop.set()
        server.stop()
    seconds = time.monotonic() - began
    phones = crew.phones
    figures, problems = check_store(server, phones)
    problems += [f"phone thread failed: {crash}" for crash in crew.crashed]
    problems += [f"phone thread {t.name} still running" for t in threads if t.is_alive()]

    outcomes = tally.outcomes
    five_xx = sum(n for status, n in outcomes.items() if status.isdigit() and int(status) >= 500)
    refusals: Counter[str] = Counter()
    for phone in phones:
        refusals.update(phone.errors)
    if five_xx:
        problems.append(f"{five_xx} answers were 5xx")
    if refusals:
        problems.append(f"refusals no kill should cause: {dict(refusals)}")

    restarts.sort()
    print(f"kill run: {devices} phones, seed {seed}, {seconds:.0f} s")
    print(f"kills survived: {survived} of {kills}")
    print(
        f"server restart: median {restarts[len(restarts) // 2]:.2f} s, max {restarts[-1]:.2f} s"
        if restarts
        else "server restart: none"
    )
    ended = ", ".join(f"{outcome}: {n}" for outcome, n in sorted(outcomes.items()))
    print(f"requests: {sum(outcomes.values())} ({ended})")
    print(
        f"changes: {figures['changes_made']} made, {figures['acknowledged']} acknowledged"
        f" {figures['answers']}"
    )
    print(f"lost: {figures['lost']}")
    print(f"duplicated: {figures['duplicated']}")
    print(f"5xx: {five_xx}")
    for name, value in figures.items():
        if name.startswith(("integrity_check", "audit", "record states")):
            print(f"{name}: {value if isinstance(value, str) else ' '.join(value)}")
    for problem in problems:
        print(f"FAIL {problem}")
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.kill_run", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--devices", type=int, default=4, help="phones pushing at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-up", type=float, default=0.8, help="longest life of the server between kills (s)"
    )
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        return kill_run(args.kills, args.devices, args.seed, args.max_up, args.keep)
    with tempfile.TemporaryDirectory(prefix="lianxin-kill-run-") as folder:
        return kill_run(args.kills, args.devices, args.seed, args.max_up, Path(folder))


if __name__ == "__main__":
    sys.exit(main())
