"""HTTP sync benchmark: real `lianxin serve` processes, driven over 127.0.0.1.

    uv run python -m bench.http_sync              # 50,000 changes, a few minutes
    uv run python -m bench.http_sync --quick      # 5,000 changes, under a minute
    uv run python -m bench.http_sync --record     # also append the table to docs/BENCHMARKS.md

The script sets up an office in a temporary folder through the real command
line (`init`, `user add`, `code`), copies the folder before any server has
opened it, and serves both copies with `lianxin serve` on free ports: the
original as in production (sealed sync requests only), the copy with
`LIANXIN_REQUIRE_SEALED=false`. Both servers are stopped at the end, also on
error. Devices enrol over HTTP; every sync request carries its request
signature (PROTOCOL.md section 10) and every push its batch signature
(section 11). Towards the first server pushes and pulls go as the reference
client sends them, by version 2 (sections 11 and 12: one signature over
request and batch, sealed to the office's key, answered sealed to the
device's key); towards the second the same requests go by version 1 as
plain msgpack, signed the same way. Requests are built by hand from the protocol
with httpx, `sync.signing` and `sync.envelope`, so client-side cost stays
small: what a phone prepares ahead (the change bytes; for version 1 the
batch body and its batch signature) is built before the clock starts;
signing and sealing the request, the HTTP exchange, opening and decoding
the answer are timed.

Measured, against DESIGN.md's "Numbers to reach" (sealed, as in production):

1. push: changes/s in batches of 500 from four mediators' devices: cases
   created with their fields, location, parties and mediator, then edited
   (fields, status moves, tags, notes), sent one request after another;
2. pull: items/s (changes) and distinct cases/s, both held to the records/s
   aim, for a supervisor device who sees every case, pulling the
   whole log from no cursor in pages of 1,000 and of 5,000; and for a
   supervisor added after the cases exist (every case enters their view at
   one sequence, with its whole history); and records/s of a whole pull
   from the cursor "states" (each record once, as the office holds it);
3. no-change sync: a signed pull with an up-to-date cursor (version 1, and
   version 2 as the reference client sends it), and a full
   `sync.client.DeviceClient.sync()` with an empty outbox (median and p99);
4. incremental pull: another supervisor's laptop pushes edits to 1,000
   cases; the time of the first supervisor's pull of them;
5. one-field edit: the bytes of a push of one change that sets one field,
   serialised as httpx sends it (by h11) and answered over a raw socket.

Baselines, measured in the same run: for push, `sync.engine.apply_batch` of
the same changes into a fresh `SqliteStore` in this process (with its
`Vault`, so personal fields are encrypted at rest there as on the server,
and the cyclic collector tuned as the server tunes it);
for pull, the server's own page query (`server.storage.pull.read_page`) on
the server's file in this process; for round trips, an unsigned
`GET /v1/office`.

What sealing costs: the same workload (the same cases and edits, from the
same seed, by phones enrolled in the copy) is pushed to the unsealed server
too, batch for batch in turn with the sealed one, and its supervisor pulls
everything and makes no-change pulls in turn with the sealed supervisor, so
a busy moment of the shared machine falls on both. The table gives the
sealed figure against the unsealed one; one minus that ratio is what sealing
and version 2 together cost, client and server work together.
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import h11
import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bench import recording
from bench.recording import BENCHMARKS_MD, Row, machine, plain
from schemas.changes import Add, Append, Change, Op
from schemas.records import CASE_STATUS
from schemas.wire import (
    STATES_CURSOR,
    Enrollment,
    EnrollRequest,
    PulledState,
    PullPage,
    PullRequest,
    PushRequest,
    PushResponse,
    SignedPush,
)
from server.fleet.office import free_port, start_server, stop_process
from server.keys import OfficeKeys
from server.memory import collect_less
from server.storage.pull import read_page
from server.storage.sqlite import SqliteStore
from server.storage.vault import Vault
from sync import signing
from sync.atrest import KdfParams
from sync.changes import encode_change
from sync.client import DeviceClient
from sync.clock import Clock
from sync.engine import apply_batch
from sync.envelope import (
    ENVELOPE,
    PULL_ENVELOPE,
    PUSH_ENVELOPE,
    Header,
    Purpose,
    open_envelope,
    open_v2_answer,
    seal,
    seal_v2,
)

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## HTTP sync (bench/http_sync.py)"

MSGPACK = "application/msgpack"
PUSH, PULL, OFFICE = "/v1/sync/push", "/v1/sync/pull", "/v1/office"
PUSH_V2, PULL_V2 = "/v2/sync/push", "/v2/sync/pull"
BATCH = 500
CITY = "Hangzhou"
DISTRICTS = ["Xihu", "Shangcheng", "Gongshu", "Binjiang"]  # one mediator each
CATEGORIES = ["neighbour", "property", "labour", "family", "land", "tenancy", "consumer"]
WORDS = (  # noqa: SIM905 - a list literal would be one word a line
    "漏水 噪音 邻里 停车 物业 拆迁 工资 装修 宠物 排水 围墙 占道 租金 合同 赡养 宅基地"
    " 楼上 楼下 业主 租户 施工 维修 协商 调解 现场 走访 双方 同意 补偿 赔偿 期限 复查"
).split()
TAGS = ["urgent-followup", "elderly", "repeat", "media", "legal-aid", "interpreter", "night"]
PRIORITIES = ["low", "normal", "high", "urgent"]
CREATE_SHARE = 0.2  # a fifth of the pushed changes create cases, the rest edit them

# DESIGN.md, "Numbers to reach".
PUSH_TARGET = 25_000  # changes/s
PULL_TARGET = 40_000  # records/s
NO_CHANGE_TARGET_MS = 2.0
INCREMENTAL_TARGET_MS = 20.0
ONE_FIELD_TARGET_BYTES = 300

_encode = msgspec.msgpack.Encoder().encode


class Mode(NamedTuple):
    changes: int
    pull_repeats: int
    rounds: int  # no-change round trips
    increments: int  # incremental pull rounds


FULL = Mode(changes=50_000, pull_repeats=5, rounds=500, increments=15)
QUICK = Mode(changes=5_000, pull_repeats=1, rounds=100, increments=3)


# -- the office: a real server process set up through the real command line -------------

BENCH_PASSPHRASE = "bench office passphrase"
OFFICE_ENV = {
    **os.environ,
    "LIANXIN_PASSPHRASE": BENCH_PASSPHRASE,
    # Measures the server at full speed: no per-device request limit (a policy, not a cost).
    "LIANXIN_SYNC_REQUESTS_PER_MINUTE": "0",
}
# server/settings.py reads it at start-up; the production default is to require sealing.
UNSEALED_ENV = {**OFFICE_ENV, "LIANXIN_REQUIRE_SEALED": "false"}


def lianxin(data: Path, *args: str) -> str:
    """Run the `lianxin` command line against `data`; its output, stripped."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=OFFICE_ENV,
    )
    if done.returncode != 0:
        raise RuntimeError(f"lianxin {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def add_user(data: Path, name: str, role: str, org_unit: str) -> str:
    return lianxin(data, "user", "add", name, "--role", role, "--org-unit", org_unit)


@contextmanager
def serving(data: Path, *, sealed: bool = True) -> Iterator[str]:
    """`lianxin serve` on a free port of 127.0.0.1; yields its URL, stops it on the way out.

    Unless `sealed`, the server also accepts plain msgpack sync requests.
    """
    port = free_port()
    process = start_server(data, port, OFFICE_ENV if sealed else UNSEALED_ENV, timeout_s=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


# -- devices that speak the protocol by hand -----------------------------------------------


@dataclass
class Phone:
    """An enrolled device that signs (and unless told otherwise seals) as PROTOCOL.md says."""

    http: httpx.Client
    key: Ed25519PrivateKey
    enrollment: Enrollment
    kem: X25519PrivateKey
    sealed: bool = True

    @property
    def device_id(self) -> str:
        return self.enrollment.device_id

    @property
    def user_id(self) -> str:
        return self.enrollment.user_id

    def seal(self, path: str, body: bytes) -> bytes:
        """`body` in an envelope to the office's key, for `path` (PROTOCOL.md 14)."""
        office = self.enrollment.office
        batch_id = (
            msgspec.msgpack.decode(body, type=PushRequest).batch_id if path == PUSH else "pull"
        )
        header = Header(
            suite=1,
            key_id=office.kem_key_id,
            device_id=self.device_id,
            batch_id=batch_id,
            purpose="push" if path == PUSH else "pull",
        )
        return seal(body, header, X25519PublicKey.from_public_bytes(office.kem_key))

    def open(self, answer: bytes) -> bytes:
        """The msgpack of an answer: opened from its envelope if this phone seals."""
        if not self.sealed:
            return answer
        _, plaintext = open_envelope(answer, {self.device_id: self.kem})
        return plaintext

    def request(self, path: str, body: bytes) -> httpx.Request:
        """A signed POST of `body` to `path`, stamped now; sealed first if this phone seals.

        The request signature covers the bytes sent (PROTOCOL.md sections 10, 14).
        """
        content_type = MSGPACK
        if self.sealed:
            body, content_type = self.seal(path, body), ENVELOPE
        timestamp = int(time.time())
        nonce = secrets.token_urlsafe(24)
        message = signing.request_message("POST", path, timestamp, nonce, self.device_id, body)
        headers = {
            "Content-Type": content_type,
            "Lianxin-Device": self.device_id,
            "Lianxin-Timestamp": str(timestamp),
            "Lianxin-Nonce": nonce,
            "Lianxin-Signature": base64.b64encode(self.key.sign(message)).decode(),
        }
        return self.http.build_request("POST", path, content=body, headers=headers)

    def post(self, path: str, body: bytes, answer: type[T]) -> T:
        response = self.http.send(self.request(path, body))
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code} {response.content[:300]!r}")
        return msgspec.msgpack.decode(self.open(response.content), type=answer)

    def pull(self, cursor: str | None, limit: int) -> PullPage:
        return self.post(PULL, _encode(PullRequest(cursor=cursor, limit=limit)), PullPage)

    def pull_v2(self, cursor: str | None, limit: int) -> PullPage:
        """A version 2 pull (PROTOCOL.md 12), signed now and sealed, and its opened answer."""
        request_id = secrets.token_urlsafe(16)
        timestamp_ms = int(time.time() * 1000)
        pull = signing.signed_pull(
            self.key, self.device_id, request_id, timestamp_ms, cursor, limit
        )
        office = self.enrollment.office
        office_key = X25519PublicKey.from_public_bytes(office.kem_key)
        body = seal_v2("pull", signing.encode_pull(pull), office.kem_key_id, office_key)
        response = self.http.post(PULL_V2, content=body, headers={"Content-Type": PULL_ENVELOPE})
        return self.opened_v2("pull", response, pull.signature, PullPage)

    def push_v2(self, raws: Sequence[bytes]) -> tuple[httpx.Request, SignedPush]:
        """A version 2 push of changes' compact bytes, signed now and sealed (PROTOCOL.md 11)."""
        batch_id = secrets.token_urlsafe(16)
        timestamp_ms = int(time.time() * 1000)
        push = signing.signed_push(self.key, self.device_id, batch_id, timestamp_ms, raws)
        office = self.enrollment.office
        body = seal_v2(
            "push",
            _encode(push),
            office.kem_key_id,
            X25519PublicKey.from_public_bytes(office.kem_key),
        )
        request = self.http.build_request(
            "POST", PUSH_V2, content=body, headers={"Content-Type": PUSH_ENVELOPE}
        )
        return request, push

    def pushed_v2(self, raws: Sequence[bytes]) -> PushResponse:
        """A version 2 push of changes' compact bytes, signed and sealed now, and its
        opened answer."""
        request, push = self.push_v2(raws)
        return self.opened_v2("push", self.http.send(request), push.signature, PushResponse)

    def opened_v2(
        self, purpose: Purpose, response: httpx.Response, signature: bytes, answer: type[T]
    ) -> T:
        """The answer to a version 2 request signed with `signature`, opened and decoded."""
        if response.status_code != 200:
            path = response.request.url.path
            raise RuntimeError(f"{path}: HTTP {response.status_code} {response.content[:300]!r}")
        plaintext = open_v2_answer(purpose, response.content, 1, signature, self.kem)
        return msgspec.msgpack.decode(plaintext, type=answer)

    def batch(self, changes: Sequence[Change]) -> bytes:
        """The body of a push of `changes`, with its batch signature."""
        raws = [_encode(change) for change in changes]
        batch_id = secrets.token_urlsafe(16)
        manifest = signing.batch_message(self.device_id, batch_id, raws)
        request = PushRequest(batch_id=batch_id, changes=raws, signature=self.key.sign(manifest))
        return _encode(request)


def enroll(http: httpx.Client, code: str, label: str, *, sealed: bool = True) -> Phone:
    key = Ed25519PrivateKey.generate()
    signing_key = key.public_key().public_bytes_raw()
    kem = X25519PrivateKey.generate()
    kem_key = kem.public_key().public_bytes_raw()
    proof = key.sign(signing.enroll_message(code, signing_key, kem_key))
    request = EnrollRequest(
        code=code, signing_key=signing_key, kem_key=kem_key, label=label, proof=proof
    )
    response = http.post("/v1/enroll", content=_encode(request), headers={"Content-Type": MSGPACK})
    if response.status_code != 200:
        raise RuntimeError(f"enrolment failed: HTTP {response.status_code} {response.content!r}")
    enrollment = msgspec.msgpack.decode(response.content, type=Enrollment)
    return Phone(http, key, enrollment, kem, sealed)


# -- the workload --------------------------------------------------------------------------


@dataclass
class CaseBook:
    """One mediator's phone making changes to its own cases, as the phone would."""

    phone: Phone
    district: str
    rng: random.Random
    clock: Clock = field(default_factory=Clock)
    cases: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    last_stamp: dict[str, int] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)

    def _text(self, low: int, high: int) -> str:
        return "".join(self.rng.choices(WORDS, k=self.rng.randint(low, high)))

    def change(self, record_id: str, set: dict[str, Any], ops: Sequence[Op] = ()) -> Change:
        """A change to one of this phone's cases, stamped by its clock; it has seen the rest."""
        stamp = self.clock.now()
        self.last_stamp[record_id] = stamp
        return Change(
            change_id=secrets.token_urlsafe(16),  # as the reference client makes them
            record_type="case",
            record_id=record_id,
            device_id=self.phone.device_id,
            hlc=stamp,
            set=set,
            ops=list(ops),
        )

    def create(self) -> Change:
        record_id = f"case-{self.district.lower()}-{len(self.cases):06d}"
        self.cases.append(record_id)
        self.status[record_id] = "new"
        fields = {
            "category": self.rng.choice(CATEGORIES),
            "title": self._text(3, 8),
            "summary": self._text(20, 80),
            "location": {
                "city": CITY,
                "district": self.district,
                "street": f"street-{self.rng.randrange(40)}",
                "community": f"community-{self.rng.randrange(300)}",
                "address": f"{self.rng.randrange(1, 300)} {self._text(1, 2)} Road",
            },
            "priority": self.rng.choice(PRIORITIES),
            "households": self.rng.randint(1, 12),
            "status": "new",
        }
        ops: list[Op] = [Add(field="mediators", value=self.phone.user_id)]
        ops += [
            Add(field="parties", value=f"party-{self.rng.getrandbits(40):010x}")
            for _ in range(self.rng.randint(1, 3))
        ]
        return self.change(record_id, fields, ops)

    def edit(self) -> Change:
        record_id = self.rng.choice(self.cases)
        roll = self.rng.random()
        if roll < 0.15:
            moves = sorted(CASE_STATUS.transitions[self.status[record_id]])
            if moves:
                # Mostly forward: a case rarely ends as referred or withdrawn.
                step = next((m for m in moves if m not in ("referred", "withdrawn")), moves[0])
                self.status[record_id] = step
                return self.change(record_id, {"status": step})
        if roll < 0.30:
            return self.change(record_id, {}, [Add(field="tags", value=self.rng.choice(TAGS))])
        if roll < 0.55:
            self.notes[record_id] += 1
            entry = {
                "entry_id": f"{record_id}.n{self.notes[record_id]}",
                "at": datetime.now(UTC).isoformat(),
                "by": self.phone.user_id,
                "text": self._text(10, 60),
            }
            return self.change(record_id, {}, [Append(field="notes", entry=entry)])
        name, value = self.rng.choice(
            [
                ("title", self._text(3, 8)),
                ("summary", self._text(20, 80)),
                ("priority", self.rng.choice(PRIORITIES)),
                ("households", self.rng.randint(1, 60)),
            ]
        )
        return self.change(record_id, {name: value})


class PushBatch(NamedTuple):
    phone: Phone
    changes: list[Change]
    body: bytes  # version 1: the whole request, batch signature made
    compact: list[bytes]  # version 2: the changes' bytes, as a phone's outbox holds them


def build_push_batches(books: list[CaseBook], total: int) -> list[PushBatch]:
    """Creations first, then edits; each device's batches in order, devices taking turns."""
    per_device = total // len(books)
    creations = int(per_device * CREATE_SHARE)
    plan: list[list[list[Change]]] = []  # per device, its batches
    for book in books:
        made = [book.create() for _ in range(creations)]
        made += [book.edit() for _ in range(per_device - creations)]
        plan.append([made[start : start + BATCH] for start in range(0, len(made), BATCH)])
    batches = []
    for turn in range(max(len(device_batches) for device_batches in plan)):
        for book, device_batches in zip(books, plan, strict=True):
            if turn < len(device_batches):
                changes = device_batches[turn]
                compact = [encode_change(change) for change in changes]
                batches.append(PushBatch(book.phone, changes, book.phone.batch(changes), compact))
    return batches


def supervisor_edits(
    phone: Phone, clock: Clock, books: list[CaseBook], count: int, rng: random.Random
) -> list[Change]:
    """A supervisor triaging `count` distinct cases: a priority and a due date each.

    Each change has seen the mediator's latest change to the case (the laptop
    had pulled it), so nothing is concurrent and nothing conflicts.
    """
    cases = [(book, record_id) for book in books for record_id in book.cases]
    changes = []
    for book, record_id in rng.sample(cases, count):
        due = date(2025, 1, 1) + timedelta(days=rng.randrange(365))
        changes.append(
            Change(
                change_id=secrets.token_urlsafe(16),
                record_type="case",
                record_id=record_id,
                device_id=phone.device_id,
                hlc=clock.now(),
                seen={book.phone.device_id: book.last_stamp[record_id]},
                set={"priority": rng.choice(PRIORITIES), "due": due.isoformat()},
            )
        )
    return changes


# -- measuring -----------------------------------------------------------------------------


class Latency(NamedTuple):
    median_ms: float
    p99_ms: float


NOT_MEASURED = Latency(0.0, 0.0)


def latency(samples: list[float]) -> Latency:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, max(0, round(0.99 * len(ms)) - 1))]
    return Latency(statistics.median(ms), p99)


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def timed_read(read: Callable[[], int], expected: int) -> float:
    """The seconds of a read that must return `expected` items (a baseline that read
    nothing would be fast)."""
    start = time.perf_counter()
    items = read()
    seconds = time.perf_counter() - start
    if items != expected:
        raise RuntimeError(f"the page query read {items} items, not {expected}")
    return seconds


class TimedTransport(httpx.BaseTransport):
    """httpx's own transport, adding up the seconds spent in HTTP exchanges."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seconds = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        start = time.perf_counter()
        response = self.inner.handle_request(request)
        response.read()
        self.seconds += time.perf_counter() - start
        return response

    def close(self) -> None:
        self.inner.close()


class Pushed(NamedTuple):
    seconds: float
    statuses: Counter[str]


def push_over_http(*workloads: list[PushBatch]) -> list[Pushed]:
    """Each workload to its own server, batch by batch in turn: the seconds and answers of each.

    Taking turns, a busy moment of the shared machine falls on every workload alike.
    """
    seconds = [0.0 for _ in workloads]
    statuses: list[Counter[str]] = [Counter() for _ in workloads]
    for turn in zip(*workloads, strict=True):
        for index, (phone, _, body, compact) in enumerate(turn):
            start = time.perf_counter()
            # A sealing phone pushes as the reference client does (version 2); the other
            # sends the version 1 body, whose batch signature was made beforehand.
            answer = (
                phone.pushed_v2(compact) if phone.sealed else phone.post(PUSH, body, PushResponse)
            )
            seconds[index] += time.perf_counter() - start
            statuses[index].update(result.status for result in answer.results)
    return [Pushed(*each) for each in zip(seconds, statuses, strict=True)]


def push_in_process(batches: list[PushBatch], path: Path) -> tuple[float, Counter[str]]:
    """The same batches through `apply_batch` into a fresh store: the engine, no HTTP."""
    # The exact bytes a server decodes, built before the clock starts.
    work = [(b.changes, [_encode(change) for change in b.changes]) for b in batches]
    keys = OfficeKeys.generate(BENCH_PASSPHRASE, KdfParams.new(n=2**10))
    store = SqliteStore(path, Vault(path.with_name(path.name + ".keys"), keys))
    clock = Clock()
    statuses: Counter[str] = Counter()
    thresholds = gc.get_threshold()
    collect_less()  # as the server process collects (server/memory.py)
    start = time.perf_counter()
    for changes, raws in work:
        statuses.update(result.status for result in apply_batch(store, changes, clock, raws))
    seconds = time.perf_counter() - start
    gc.set_threshold(*thresholds)
    store.close()
    del store
    # collect_less froze everything: what this run made may go, the prepared workload
    # stays frozen as the caller froze it.
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return seconds, statuses


def pull_everything(phone: Phone, limit: int) -> tuple[float, int, str]:
    """Seconds, items and the final cursor of a whole pull from no cursor."""
    cursor: str | None = None
    items = 0
    pull = phone.pull_v2 if phone.sealed else phone.pull  # as for push_over_http
    start = time.perf_counter()
    while True:
        page = pull(cursor, limit)
        items += len(page.items)
        cursor = page.cursor
        if not page.has_more:
            return time.perf_counter() - start, items, cursor


def pull_states(phone: Phone, limit: int) -> tuple[float, int]:
    """Seconds and records of a whole version 2 pull from the cursor "states" (each record
    once, as the office holds it); the changes logged meanwhile must be none."""
    cursor: str | None = STATES_CURSOR
    records = 0
    start = time.perf_counter()
    while True:
        page = phone.pull_v2(cursor, limit)
        if not all(isinstance(item, PulledState) for item in page.items):
            raise RuntimeError("a states pull brought changes, though nothing was logged meanwhile")
        records += len(page.items)
        cursor = page.cursor
        if not page.has_more:
            return time.perf_counter() - start, records


def no_change_pull(phone: Phone, body: bytes) -> None:
    _nothing(phone.post(PULL, body, PullPage))


def no_change_pull_v2(phone: Phone, cursor: str) -> None:
    _nothing(phone.pull_v2(cursor, 1000))


def _nothing(page: PullPage) -> None:
    if page.items or page.has_more:
        raise RuntimeError("a no-change pull brought changes")


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def pull_sql(conn: sqlite3.Connection, user_id: str, limit: int, position: int = 0) -> int:
    """The server's page query from `position` until no more: items read (no HTTP)."""
    seq, items = position, 0
    while True:
        conn.execute("BEGIN")
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
        page = read_page(conn, user_id, position, seq, limit, last)
        conn.execute("COMMIT")
        items += len(page.rows) + len(page.evictions)
        position, seq = page.end, page.end_seq
        if not page.has_more:
            return items


def cursor_position(cursor: str) -> int:
    """Where a cursor stands (`v1.<position>.<seq>.<mac>`); for the SQL baseline only."""
    return int(cursor.split(".")[1])


class WireBytes(NamedTuple):
    change: int
    body: int
    signature_headers: int
    request: int
    response: int
    response_body: int
    status: int


def one_field_edit(phone: Phone, book: CaseBook, url: str) -> WireBytes:
    """Push one change setting one field, as the exact bytes httpx would send, over a socket.

    A version 2 push, as the reference client sends it: a compact change with a
    22-character id, one signature inside the sealed body, no signature headers.
    """
    change = book.change(book.cases[0], {"households": 7})
    request, push = phone.push_v2([encode_change(change)])
    body = request.content
    headers = list(request.headers.raw)
    signature_headers = sum(
        len(name) + 2 + len(value) + 2
        for name, value in headers
        if name.lower().startswith(b"lianxin-")
    )
    client = h11.Connection(h11.CLIENT)
    wire = client.send(h11.Request(method="POST", target=request.url.raw_path, headers=headers))
    wire = (wire or b"") + (client.send(h11.Data(data=body)) or b"")
    wire += client.send(h11.EndOfMessage()) or b""
    host, port = url.removeprefix("http://").split(":")
    received = 0
    response_body = b""
    status = 0
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(wire)
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                received += len(data)
                client.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                response_body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
    if status != 200:
        raise RuntimeError(f"the one-field edit was refused: {status} {response_body!r}")
    plaintext = open_v2_answer("push", response_body, 1, push.signature, phone.kem)
    answer = msgspec.msgpack.decode(plaintext, type=PushResponse)
    if answer.results[0].status != "applied":
        raise RuntimeError(f"the one-field edit was not applied: {status} {answer}")
    return WireBytes(
        change=len(encode_change(change)),
        body=len(body),
        signature_headers=signature_headers,
        request=len(wire),
        response=received,
        response_body=len(response_body),
        status=status,
    )


# -- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    changes: int = 0
    cases: int = 0
    push_rate: float = 0.0
    push_engine_rate: float = 0.0
    push_unsealed_rate: float = 0.0
    pull_rates: dict[int, float] = field(default_factory=dict)
    pull_sql_rates: dict[int, float] = field(default_factory=dict)
    pull_unsealed_rates: dict[int, float] = field(default_factory=dict)
    late_pull_rate: float = 0.0
    late_pull_sql_rate: float = 0.0
    states_pull_rate: float = 0.0  # records/s of a whole pull from the cursor "states"
    records: int = 0
    no_change_pull: Latency = NOT_MEASURED
    no_change_pull_unsealed: Latency = NOT_MEASURED
    no_change_pull_v2: Latency = NOT_MEASURED
    no_change_sync: Latency = NOT_MEASURED
    no_change_sync_local: Latency = NOT_MEASURED
    office: Latency = NOT_MEASURED
    client_initial_rate: float = 0.0
    incremental: Latency = NOT_MEASURED
    incremental_sql: Latency = NOT_MEASURED
    wire: WireBytes | None = None
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def set_up_office(data: Path) -> dict[str, str]:
    """An office made through the command line: its enrolment codes, by device name."""
    lianxin(data, "init", "--admin", "Admin", "--org-unit", CITY)
    supervisor = add_user(data, "Supervisor", "supervisor", CITY)
    triage = add_user(data, "Triage", "supervisor", CITY)
    mediators = [add_user(data, f"Mediator {d}", "mediator", f"{CITY}/{d}") for d in DISTRICTS]
    return {
        name: lianxin(data, "code", user)
        for name, user in [
            ("supervisor", supervisor),
            ("supervisor-client", supervisor),
            ("triage", triage),
            *((f"mediator-{d}", m) for d, m in zip(DISTRICTS, mediators, strict=True)),
        ]
    }


# The devices also enrolled in the unsealed copy of the office: the pushers and the reader.
UNSEALED_DEVICES = ("supervisor", *(f"mediator-{d}" for d in DISTRICTS))


def case_books(phones: dict[str, Phone], seeds: Sequence[int]) -> list[CaseBook]:
    return [
        CaseBook(phones[f"mediator-{d}"], d, random.Random(seed))
        for d, seed in zip(DISTRICTS, seeds, strict=True)
    ]


def measure_push(
    results: Results,
    batches: list[PushBatch],
    unsealed_batches: list[PushBatch],
    engine_path: Path,
    say: Callable[[str], None],
) -> None:
    """Push to both servers in turn, then the same changes through `apply_batch` here."""
    sealed, unsealed = push_over_http(batches, unsealed_batches)
    for pushed in (sealed, unsealed):
        if set(pushed.statuses) - {"applied"}:
            raise RuntimeError(f"unexpected push answers: {dict(pushed.statuses)}")
    results.statuses = sealed.statuses
    results.push_rate = results.changes / sealed.seconds
    results.push_unsealed_rate = results.changes / unsealed.seconds
    say(
        f"push: {results.changes:,} changes in {sealed.seconds:.2f} s over HTTP sealed,"
        f" {unsealed.seconds:.2f} s unsealed"
    )
    seconds, engine_statuses = push_in_process(batches, engine_path)
    if engine_statuses != sealed.statuses:
        raise RuntimeError(f"in-process answers differ: {dict(engine_statuses)}")
    results.push_engine_rate = results.changes / seconds
    say(f"push baseline: apply_batch in-process in {seconds:.2f} s")


def measure_pull_everything(
    results: Results,
    reader: Phone,
    unsealed_reader: Phone,
    conn: sqlite3.Connection,
    repeats: int,
    say: Callable[[str], None],
) -> tuple[str, str]:
    """Whole pulls from both servers in turn, and the page SQL here: the final cursors."""
    cursors = ("", "")
    for limit in (1000, 5000):
        runs, unsealed_runs = [], []
        for _ in range(repeats):
            runs.append(pull_everything(reader, limit))
            unsealed_runs.append(pull_everything(unsealed_reader, limit))
        for _, items, _ in runs + unsealed_runs:
            if items != results.changes:
                raise RuntimeError(f"pulled {items} items of {results.changes}")
        seconds = statistics.median(run[0] for run in runs)
        unsealed_seconds = statistics.median(run[0] for run in unsealed_runs)
        results.pull_rates[limit] = results.changes / seconds
        results.pull_unsealed_rates[limit] = results.changes / unsealed_seconds
        sql_seconds = statistics.median(
            timed_read(lambda limit=limit: pull_sql(conn, reader.user_id, limit), results.changes)
            for _ in range(repeats)
        )
        results.pull_sql_rates[limit] = results.changes / sql_seconds
        cursors = (runs[-1][2], unsealed_runs[-1][2])
        say(
            f"pull, pages of {limit:,}: {results.changes:,} items in {seconds:.2f} s sealed,"
            f" {unsealed_seconds:.2f} s unsealed"
        )
    states_runs = [pull_states(reader, 1000) for _ in range(repeats)]
    results.records = states_runs[0][1]
    if {records for _, records in states_runs} != {
        results.records
    } or results.records < results.cases:
        raise RuntimeError(f"states pulls brought {states_runs} records, {results.cases} cases")
    seconds = statistics.median(run[0] for run in states_runs)
    results.states_pull_rate = results.records / seconds
    say(f'pull from "states", pages of 1,000: {results.records:,} records in {seconds:.2f} s')
    return cursors


def run(mode: Mode, seed: int, say: Callable[[str], None]) -> Results:
    results = Results()
    started = time.perf_counter()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="lianxin-http-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data, unsealed_data = tmp / "office", tmp / "office-unsealed"
        say(f"setting up an office in {data} through the command line")
        codes = set_up_office(data)
        # Copied before either server opens it: the same keys, users and unspent codes.
        shutil.copytree(data, unsealed_data)
        with (
            serving(data) as url,
            serving(unsealed_data, sealed=False) as unsealed_url,
            httpx.Client(base_url=url, timeout=120) as http,
            httpx.Client(base_url=unsealed_url, timeout=120) as unsealed_http,
        ):
            say(f"serving on {url}, and unsealed on {unsealed_url}")
            phones = {
                name: enroll(http, code, name)
                for name, code in codes.items()
                if name != "supervisor-client"
            }
            unsealed_phones = {
                name: enroll(unsealed_http, codes[name], name, sealed=False)
                for name in UNSEALED_DEVICES
            }
            seeds = [rng.getrandbits(64) for _ in DISTRICTS]
            books = case_books(phones, seeds)
            say(f"building {mode.changes:,} changes and their signed batches, twice (untimed)")
            batches = build_push_batches(books, mode.changes)
            unsealed_batches = build_push_batches(case_books(unsealed_phones, seeds), mode.changes)
            results.changes = sum(len(b.changes) for b in batches)
            results.cases = sum(len(book.cases) for book in books)
            gc.collect()
            gc.freeze()  # keep the collector from walking the prepared workload

            # 1. push, to both servers in turn
            measure_push(results, batches, unsealed_batches, tmp / "engine.db", say)

            # 2. pull everything, as the supervisor of each office in turn
            reader, unsealed_reader = phones["supervisor"], unsealed_phones["supervisor"]
            conn = read_only(data / "lianxin.db")
            cursor, unsealed_cursor = measure_pull_everything(
                results, reader, unsealed_reader, conn, mode.pull_repeats, say
            )
            # A supervisor added after the cases exist: every case enters their view at one
            # sequence, bringing its whole history there (PROTOCOL.md section 12).
            late_user = add_user(data, "Late supervisor", "supervisor", CITY)
            late = enroll(http, lianxin(data, "code", late_user), "late supervisor")
            seconds, items, _ = pull_everything(late, 5000)
            if items != results.changes:
                raise RuntimeError(f"the late supervisor pulled {items} items of {results.changes}")
            results.late_pull_rate = items / seconds
            results.late_pull_sql_rate = items / timed_read(
                lambda: pull_sql(conn, late.user_id, 5000), items
            )
            say(f"pull by a supervisor added later, pages of 5,000: {seconds:.2f} s")

            # 3. no-change round trips: GET /v1/office, the signed pull sealed and unsealed,
            # interleaved
            pulls, unsealed_pulls, pulls_v2, offices = [], [], [], []
            body = _encode(PullRequest(cursor=cursor, limit=1000))
            unsealed_body = _encode(PullRequest(cursor=unsealed_cursor, limit=1000))
            for _ in range(mode.rounds):
                offices.append(timed(lambda: http.get(OFFICE).raise_for_status()))
                pulls.append(timed(lambda: no_change_pull(reader, body)))
                # Each right after a request to the same server, so both find it as warm.
                pulls_v2.append(timed(lambda: no_change_pull_v2(reader, cursor)))
                unsealed_pulls.append(timed(lambda: no_change_pull(unsealed_reader, unsealed_body)))
            results.no_change_pull = latency(pulls)
            results.no_change_pull_v2 = latency(pulls_v2)
            results.no_change_pull_unsealed = latency(unsealed_pulls)
            results.office = latency(offices)
            say(f"no-change pull: {mode.rounds} rounds")

            transport = TimedTransport()
            with (
                httpx.Client(base_url=url, timeout=120, transport=transport) as client_http,
                DeviceClient(
                    tmp / "supervisor-laptop.db", client_http, passphrase="bench laptop"
                ) as laptop,
            ):
                laptop.enroll(codes["supervisor-client"], label="supervisor laptop")
                start = time.perf_counter()
                first = laptop.pull()
                seconds = time.perf_counter() - start
                if first.states != results.records:
                    raise RuntimeError(f"the laptop's first pull {first}: not every record")
                results.client_initial_rate = first.states / seconds
                say(f"reference client's first pull: {first.states:,} records, {seconds:.1f} s")
                syncs, local = [], []
                for _ in range(mode.rounds):
                    transport.seconds = 0.0
                    syncs.append(timed(laptop.sync))
                    local.append(syncs[-1] - transport.seconds)
                results.no_change_sync = latency(syncs)
                results.no_change_sync_local = latency(local)
                say(f"no-change DeviceClient.sync(): {mode.rounds} rounds")

            # 5. one-field edit on the wire (before the supervisor edits the cases too)
            results.wire = one_field_edit(books[0].phone, books[0], url)

            # 4. incremental pulls of 1,000 changed cases
            writer, clock = phones["triage"], Clock()
            _, _, cursor = pull_everything(reader, 1000)  # past the one-field edit
            increments, increments_sql = [], []
            edited = min(1000, results.cases)  # a --quick run may hold fewer cases
            for _ in range(mode.increments):
                changes = supervisor_edits(writer, clock, books, edited, rng)
                for first in range(0, len(changes), BATCH):
                    body = writer.batch(changes[first : first + BATCH])
                    answer = writer.post(PUSH, body, PushResponse)
                    if {r.status for r in answer.results} != {"applied"}:
                        raise RuntimeError("a supervisor edit was not applied")
                position = cursor_position(cursor)
                start = time.perf_counter()
                page = reader.pull(cursor, 1000)
                increments.append(time.perf_counter() - start)
                if len(page.items) != edited or page.has_more:
                    raise RuntimeError(f"incremental pull gave {len(page.items)} items")
                cursor = page.cursor
                increments_sql.append(
                    timed_read(lambda p=position: pull_sql(conn, reader.user_id, 1000, p), edited)
                )
            results.incremental = latency(increments)
            results.incremental_sql = latency(increments_sql)
            say(f"incremental pulls: {mode.increments} rounds of 1,000 changed cases")
            conn.close()
            gc.unfreeze()
    results.seconds = time.perf_counter() - started
    return results


# -- reporting -----------------------------------------------------------------------------


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "missed")


def rows(r: Results) -> list[Row]:
    table = [
        Row(
            f"push, batches of {BATCH} (changes/s)",
            f"{r.push_rate:,.0f}",
            f"≥ {PUSH_TARGET:,}",
            _met(r.push_rate >= PUSH_TARGET),
            f"apply_batch in-process {r.push_engine_rate:,.0f}",
            f"{r.push_rate / r.push_engine_rate:.0%}",
        )
    ]
    # The aim says records/s. An item is one change; a case here has several, so the
    # aim is judged both ways: items (change records) and distinct cases.
    per_case = r.changes / r.cases if r.cases else 1.0
    for limit, rate in r.pull_rates.items():
        sql = r.pull_sql_rates[limit]
        table += [
            Row(
                f"pull everything, pages of {limit:,} (items/s)",
                f"{rate:,.0f}",
                f"≥ {PULL_TARGET:,}",
                _met(rate >= PULL_TARGET),
                f"page SQL in-process {sql:,.0f}",
                f"{rate / sql:.0%}",
            ),
            Row(
                f"pull everything, pages of {limit:,} (distinct cases/s)",
                f"{rate / per_case:,.0f}",
                f"≥ {PULL_TARGET:,}",
                _met(rate / per_case >= PULL_TARGET),
                f"{per_case:.1f} changes a case",
                "",
            ),
        ]
    table.append(
        Row(
            "pull everything as records' states, pages of 1,000 (records/s)",
            f"{r.states_pull_rate:,.0f}",
            f"≥ {PULL_TARGET:,}",
            _met(r.states_pull_rate >= PULL_TARGET),
            f"{r.records:,} records ({r.cases:,} cases)",
            "",
        )
    )
    table.append(
        Row(
            "pull everything, supervisor added later, pages of 5,000 (items/s)",
            f"{r.late_pull_rate:,.0f}",
            f"≥ {PULL_TARGET:,}",
            _met(r.late_pull_rate >= PULL_TARGET),
            f"page SQL in-process {r.late_pull_sql_rate:,.0f}",
            f"{r.late_pull_rate / r.late_pull_sql_rate:.0%}",
        )
    )
    office = r.office
    for name, lat in [
        ("no-change signed pull", r.no_change_pull),
        ("no-change signed pull, version 2", r.no_change_pull_v2),
        ("no-change DeviceClient.sync()", r.no_change_sync),
    ]:
        table.append(
            Row(
                f"{name}, median (ms)",
                f"{lat.median_ms:.2f}",
                f"≤ {NO_CHANGE_TARGET_MS:g}",
                _met(lat.median_ms <= NO_CHANGE_TARGET_MS),
                f"GET /v1/office {office.median_ms:.2f}",
                f"{lat.median_ms / office.median_ms:.1f}×",
            )
        )
        table.append(
            Row(
                f"{name}, p99 (ms)",
                f"{lat.p99_ms:.2f}",
                "",
                "",
                f"GET /v1/office {office.p99_ms:.2f}",
                f"{lat.p99_ms / office.p99_ms:.1f}×",
            )
        )
    table.append(
        Row(
            "no-change DeviceClient.sync(), outside HTTP, median (ms)",
            f"{r.no_change_sync_local.median_ms:.2f}",
            "",
            "",
            "the device's own file: reads, commits (synchronous = FULL)",
            "",
        )
    )
    inc, sql = r.incremental, r.incremental_sql
    table.append(
        Row(
            "1,000-record incremental pull, median (ms)",
            f"{inc.median_ms:.1f}",
            f"≤ {INCREMENTAL_TARGET_MS:g}",
            _met(inc.median_ms <= INCREMENTAL_TARGET_MS),
            f"page SQL in-process {sql.median_ms:.1f}",
            f"{inc.median_ms / sql.median_ms:.1f}×",
        )
    )
    table.append(
        Row(
            "1,000-record incremental pull, worst (ms)",
            f"{inc.p99_ms:.1f}",
            "",
            "",
            f"page SQL in-process {sql.p99_ms:.1f}",
            "",
        )
    )
    w = r.wire
    if w is not None:
        edit = w.body + w.signature_headers
        table += [
            Row(
                "one-field edit: body + signature headers (bytes)",
                f"{edit}",
                f"≤ {ONE_FIELD_TARGET_BYTES}",
                _met(edit <= ONE_FIELD_TARGET_BYTES),
                f"change {w.change}, body {w.body}, signature headers {w.signature_headers}",
                "",
            ),
            # On the wire the request line and httpx's headers come too.
            Row(
                "one-field edit: whole HTTP request, as httpx sends it (bytes)",
                f"{w.request}",
                f"≤ {ONE_FIELD_TARGET_BYTES}",
                _met(w.request <= ONE_FIELD_TARGET_BYTES),
                f"headers and request line {w.request - w.body}",
                "",
            ),
            Row(
                "one-field edit: whole HTTP response (bytes)",
                f"{w.response}",
                "",
                "",
                f"body {w.response_body}",
                "",
            ),
        ]
    table.append(
        Row(
            "reference client's first pull (records/s)",
            f"{r.client_initial_rate:,.0f}",
            "",
            "",
            'DeviceClient.pull() from "states", storing each as sent',
            "",
        )
    )
    return table + sealing_rows(r)


def sealing_rows(r: Results) -> list[Row]:
    """The sealed figures against the unsealed server's, measured in turn in the same run."""
    table = [
        Row(
            f"push, batches of {BATCH}, sealed v2 against unsealed v1 (changes/s)",
            f"{r.push_rate:,.0f}",
            "",
            "",
            f"unsealed server {r.push_unsealed_rate:,.0f}",
            f"{r.push_rate / r.push_unsealed_rate:.0%}",
        )
    ]
    for limit, rate in r.pull_rates.items():
        unsealed = r.pull_unsealed_rates[limit]
        table.append(
            Row(
                f"pull everything, pages of {limit:,}, sealed v2 against unsealed v1 (items/s)",
                f"{rate:,.0f}",
                "",
                "",
                f"unsealed server {unsealed:,.0f}",
                f"{rate / unsealed:.0%}",
            )
        )
    sealed, unsealed_pull = r.no_change_pull, r.no_change_pull_unsealed
    table.append(
        Row(
            "no-change signed pull, sealed against unsealed, median (ms)",
            f"{sealed.median_ms:.2f}",
            "",
            "",
            f"unsealed server {unsealed_pull.median_ms:.2f}",
            f"{sealed.median_ms / unsealed_pull.median_ms:.1f}×",
        )
    )
    return table


def cost(sealed: float, unsealed: float) -> str:
    """The share of a rate that sealing takes, as a whole percentage (noise can make it < 0)."""
    return f"{round(100 * (1 - sealed / unsealed))}%"  # round, not :.0%, which prints "-0%"


def sealing_cost(r: Results) -> str:
    """What sealing costs, in one sentence: the throughput it takes, the time it adds."""
    pulls = " and ".join(
        f"{cost(rate, r.pull_unsealed_rates[limit])} (pages of {limit:,})"
        for limit, rate in r.pull_rates.items()
    )
    added = r.no_change_pull.median_ms - r.no_change_pull_unsealed.median_ms
    return (
        f"Sealing costs {cost(r.push_rate, r.push_unsealed_rate)} of push throughput"
        f" and {pulls} of pull throughput; it adds {added:.2f} ms to a no-change pull (median)."
    )


INTRO = """A real `lianxin serve` process on 127.0.0.1, set up through the
command line in a temporary folder, driven by a Python client on the same
machine with signatures on and sealed both ways, pushing and pulling by
version 2 as the reference client does (since 2026-11-27; version 1 sealed
envelopes before); a second server on a copy of the office takes the same
requests by version 1 unsealed, for comparison. Four mediators' phones push
cases (created with their fields, then edited) in batches of 500; a supervisor who sees every case
pulls the whole log, and so does one added after the cases exist (who gets
every case's history at one position); no-change round trips are a signed
pull with an up-to-date cursor (versions 1 and 2) and a full
`DeviceClient.sync()` with an empty outbox; the incremental pull is a
supervisor's pull of 1,000 cases another device has just edited; the
one-field edit is a push of one change that sets one field, counted as h11
writes it. Baselines come from the same run: `apply_batch` in-process
(push), the server's page SQL in-process (pull), an unsigned
`GET /v1/office` (round trips). See the docstring of `bench/http_sync.py`.
"""


def record(
    table: list[Row], command: str, note: str, summary: str = "", path: Path = BENCHMARKS_MD
) -> None:
    """Add a dated table, and `summary` under it, at the end of this benchmark's section."""
    recording.record(HEADING, INTRO, recording.dated_block(command, table, note, summary), path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_sync", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run (5,000 changes)")
    parser.add_argument("--changes", type=int, help="how many changes to push (50,000)")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (7)")
    parser.add_argument(
        "--record", action="store_true", help=f"append the table to docs/{BENCHMARKS_MD.name}"
    )
    parser.add_argument("--note", default="", help="a remark to record with the table")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.changes is not None:
        if args.changes < 4 * BATCH:
            parser.error(f"--changes must be at least {4 * BATCH}")
        mode = mode._replace(changes=args.changes)

    # A SIGTERM unwinds like Ctrl-C, so the server process is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(mode, args.seed, lambda line: print(f"  {line}", flush=True))
    table = rows(results)
    print()
    print(plain(table))
    print()
    s = results.statuses
    print(
        f"{results.changes:,} changes to {results.cases:,} cases pushed ({s['applied']:,}"
        f" applied); whole run {results.seconds:.0f} s"
    )
    print(sealing_cost(results))
    print(f"machine: {machine()}")
    if args.record:
        command = "uv run python -m bench.http_sync"
        command += " --quick" if args.quick else ""
        command += f" --changes {args.changes}" if args.changes is not None else ""
        command += f" --seed {args.seed}" if args.seed != 7 else ""
        command += " --record"
        record(table, command, args.note, sealing_cost(results))
        print(f"recorded in {BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
