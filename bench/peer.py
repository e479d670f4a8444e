"""Lianxin side by side with pouchdb-server (a CouchDB-protocol server), in the same run.

    uv run python -m bench.peer                   # 20,000 documents; first run installs pouchdb
    uv run python -m bench.peer --docs 2000       # a quick look
    uv run python -m bench.peer --pouchdb-dir /tmp/pouch   # an existing npm install
    uv run python -m bench.peer --record          # also append the table to docs/BENCHMARKS.md

The same workload goes to both servers, each a real process on 127.0.0.1,
driven by the same Python httpx client, the two taking turns request by
request so a busy moment of the shared machine falls on both alike:

1. push: 1 KB case-like documents (fields, location, mediators, parties;
   the summary padded so each document's JSON is about 1,024 bytes), in
   batches of 200. To Lianxin each is one change creating a case, pushed
   by version 1 of the protocol (the reference client sends version 2,
   whose no-change pull measured 8–10% faster: BENCHMARKS.md, HTTP
   section): batch signature, request signature, HPKE envelope both ways,
   field merge, at-rest encryption (`lianxin serve` with its defaults, set
   up by `bench.http_sync.set_up_office`). To the peer the same documents go
   as CouchDB `_bulk_docs`.
2. pull: every document from nothing in pages of 1,000: Lianxin's signed,
   sealed pull by a supervisor who sees every case, against
   `_changes?since=…&limit=1000&include_docs=true`. Both clients decode
   every document (Lianxin's changes into `Change` Structs, the peer's
   JSON into dicts).
3. no-change sync: Lianxin's signed pull with an up-to-date cursor against
   the peer's empty poll `_changes?since=<latest>` (median and p99).

What is built before the clock starts, on both sides: the documents, their
encoding and (Lianxin) each batch's signature. Timed: for Lianxin, sealing
and signing each request, the exchange, opening and decoding the answer;
for the peer, the exchange and decoding the answer.

pouchdb-server (npm `pouchdb-server@4.2.0`, PouchDB on LevelDB through
leveldown) is installed by this script with npm into `.tools/pouchdb/`
(git-ignored) unless already there: compiling leveldown takes several
minutes the first time. It runs in on-disk LevelDB mode (not `--in-memory`)
in a temporary folder, as Lianxin runs on its SQLite file, and is stopped
at the end, also on error.

Targets (DESIGN.md): push at least twice and pull at least three times the
peer's rate; a no-change sync no slower than the peer's empty poll.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec

from bench.http_sync import (
    CATEGORIES,
    CITY,
    PRIORITIES,
    PULL,
    PUSH,
    ROOT,
    WORDS,
    Latency,
    Phone,
    enroll,
    latency,
    serving,
    set_up_office,
    timed,
)
from bench.recording import Row, dated_block, machine, plain, record
from schemas.changes import Add, Change, Op
from schemas.wire import PulledChange, PullPage, PullRequest, PushResponse
from server.fleet.office import free_port, stop_process
from sync.changes import decode_change
from sync.clock import Clock

POUCHDB_VERSION = "4.2.0"
POUCHDB_DIR = ROOT / ".tools" / "pouchdb"
DATABASE = "bench"
DOC_BYTES = 1024
PUSH_BATCH = 200
PAGE = 1000
DISTRICT = "Xihu"  # the pushing mediator's district (bench.http_sync.set_up_office)
JSON = {"Content-Type": "application/json"}

# DESIGN.md: the yardstick.
PUSH_TARGET = 2.0  # Lianxin / peer, docs/s
PULL_TARGET = 3.0
NO_CHANGE_TARGET = 1.0  # Lianxin / peer, median ms: no slower

_encode = msgspec.msgpack.Encoder().encode
_json = msgspec.json.Encoder().encode


# -- the peer: pouchdb-server from npm -----------------------------------------------------


def ensure_pouchdb(folder: Path, say: Callable[[str], None]) -> Path:
    """The pouchdb-server command in `folder`, installed there with npm first if missing."""
    command = folder / "node_modules" / ".bin" / "pouchdb-server"
    if command.exists():
        return command
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install pouchdb-server (Debian: apt-get install npm)")
    folder.mkdir(parents=True, exist_ok=True)
    say(f"installing pouchdb-server@{POUCHDB_VERSION} into {folder} (leveldown compiles: minutes)")
    done = subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(folder),
            f"pouchdb-server@{POUCHDB_VERSION}",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not command.exists():
        raise RuntimeError(f"npm install failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return command


@contextmanager
def pouchdb_serving(command: Path, folder: Path) -> Iterator[str]:
    """pouchdb-server on a free port of 127.0.0.1, LevelDB files in `folder`; yields its URL."""
    port = free_port()
    log_path = folder / "pouchdb.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                str(command),
                *("--port", str(port), "--host", "127.0.0.1"),
                *("--dir", str(folder / "db"), "--config", str(folder / "config.json")),
                "--no-stdout-logs",
            ],
            cwd=folder,  # it writes log.txt where it runs
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pouchdb-server exited at start:\n{log_path.read_text()}")
            try:
                welcome = httpx.get(url, timeout=1)
                if welcome.status_code == 200:
                    # On-disk LevelDB, as promised in the table (not memdown, not SQLite).
                    if welcome.json().get("pouchdb-adapters") != ["leveldb"]:
                        raise RuntimeError(f"pouchdb-server is not on LevelDB: {welcome.text}")
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("pouchdb-server did not start within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process)


class CouchChange(msgspec.Struct):
    seq: int | str
    id: str
    doc: dict[str, Any] | None = None


class CouchChanges(msgspec.Struct):
    results: list[CouchChange]
    last_seq: int | str


_decode_couch_changes = msgspec.json.Decoder(CouchChanges).decode


# -- the documents -------------------------------------------------------------------------


class Document(NamedTuple):
    """One case: its fields and sets, as a CouchDB document and as a Lianxin change."""

    record_id: str
    fields: dict[str, Any]
    mediators: list[str]
    parties: list[str]

    def couch(self) -> dict[str, Any]:
        return {
            "_id": self.record_id,
            "type": "case",
            **self.fields,
            "mediators": self.mediators,
            "parties": self.parties,
        }

    def change(self, device_id: str, clock: Clock) -> Change:
        ops: list[Op] = [Add(field="mediators", value=m) for m in self.mediators]
        ops += [Add(field="parties", value=p) for p in self.parties]
        return Change(
            change_id=uuid.uuid4().hex,
            record_type="case",
            record_id=self.record_id,
            device_id=device_id,
            hlc=clock.now(),
            set=self.fields,
            ops=ops,
        )


def documents(count: int, mediator: str, rng: random.Random) -> list[Document]:
    """`count` case-like documents of about DOC_BYTES of JSON each."""
    made = []
    for n in range(count):
        fields: dict[str, Any] = {
            "category": rng.choice(CATEGORIES),
            "title": "".join(rng.choices(WORDS, k=rng.randint(3, 8))),
            "summary": "",
            "location": {
                "city": CITY,
                "district": DISTRICT,
                "street": f"street-{rng.randrange(40)}",
                "community": f"community-{rng.randrange(300)}",
                "address": f"{rng.randrange(1, 300)} {rng.choice(WORDS)} Road",
            },
            "priority": rng.choice(PRIORITIES),
            "households": rng.randint(1, 12),
            "status": "new",
        }
        parties = [f"party-{rng.getrandbits(40):010x}" for _ in range(rng.randint(1, 3))]
        doc = Document(f"case-{n:07d}", fields, [mediator], parties)
        words: list[str] = []
        while len(_json(doc.couch())) < DOC_BYTES - 6:  # a word is 2 or 3 characters of 3 bytes
            words.append(rng.choice(WORDS))
            fields["summary"] = "".join(words)
        made.append(doc)
    return made


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Results:
    docs: int = 0
    doc_bytes: float = 0.0
    push: tuple[float, float] = (0.0, 0.0)  # docs/s: Lianxin, peer
    pull: tuple[float, float] = (0.0, 0.0)
    no_change: tuple[Latency, Latency] = field(default_factory=lambda: (Latency(0, 0),) * 2)
    seconds: float = 0.0


def push_both(
    phone: Phone, lianxin_bodies: list[bytes], couch: httpx.Client, couch_bodies: list[bytes]
) -> tuple[float, float]:
    """Every batch to both servers in turn: the seconds each took in all."""
    seconds = [0.0, 0.0]
    for lianxin_body, couch_body in zip(lianxin_bodies, couch_bodies, strict=True):
        start = time.perf_counter()
        answer = phone.post(PUSH, lianxin_body, PushResponse)
        seconds[0] += time.perf_counter() - start
        if {r.status for r in answer.results} != {"applied"}:
            raise RuntimeError(f"Lianxin did not apply a batch: {answer.results[:3]}")
        start = time.perf_counter()
        response = couch.post(f"/{DATABASE}/_bulk_docs", content=couch_body, headers=JSON)
        written = msgspec.json.decode(response.content)
        seconds[1] += time.perf_counter() - start
        if response.status_code != 201 or not all(row.get("ok") for row in written):
            raise RuntimeError(f"pouchdb-server refused a batch: {response.content[:300]!r}")
    return seconds[0], seconds[1]


def lianxin_pull_all(phone: Phone) -> tuple[float, int, str]:
    """Seconds, documents and the final cursor of a whole pull, every change decoded."""
    cursor: str | None = None
    docs = 0
    start = time.perf_counter()
    while True:
        page = phone.pull(cursor, PAGE)
        for item in page.items:
            if isinstance(item, PulledChange):
                decode_change(item.change)
                docs += 1
        cursor = page.cursor
        if not page.has_more:
            return time.perf_counter() - start, docs, cursor


def couch_pull_all(couch: httpx.Client) -> tuple[float, int, int | str]:
    """Seconds, documents and the last sequence of a whole `_changes` feed with its docs."""
    since: int | str = 0
    docs = 0
    start = time.perf_counter()
    while True:
        response = couch.get(
            f"/{DATABASE}/_changes",
            params={"since": since, "limit": PAGE, "include_docs": "true"},
        )
        page = _decode_couch_changes(response.content)
        docs += sum(1 for row in page.results if row.doc is not None)
        since = page.last_seq
        if len(page.results) < PAGE:
            return time.perf_counter() - start, docs, since


def run(
    docs: int, repeats: int, rounds: int, seed: int, pouchdb: Path, say: Callable[[str], None]
) -> Results:
    results = Results(docs=docs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lianxin-peer-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data, couch_folder = tmp / "office", tmp / "pouchdb"
        couch_folder.mkdir()
        say(f"setting up an office in {data} through the command line")
        codes = set_up_office(data)
        with (
            serving(data) as url,
            pouchdb_serving(pouchdb, couch_folder) as couch_url,
            httpx.Client(base_url=url, timeout=120) as http,
            httpx.Client(base_url=couch_url, timeout=120) as couch,
        ):
            say(f"Lianxin on {url}, pouchdb-server on {couch_url} (LevelDB in {couch_folder})")
            if couch.put(f"/{DATABASE}").status_code != 201:
                raise RuntimeError("pouchdb-server did not create the database")
            pusher = enroll(http, codes[f"mediator-{DISTRICT}"], "mediator phone")
            reader = enroll(http, codes["supervisor"], "supervisor laptop")

            say(f"building {docs:,} documents and their batches for both (untimed)")
            made = documents(docs, pusher.user_id, random.Random(seed))
            results.doc_bytes = statistics.mean(len(_json(d.couch())) for d in made)
            clock = Clock()
            lianxin_bodies, couch_bodies = [], []
            for first in range(0, docs, PUSH_BATCH):
                batch = made[first : first + PUSH_BATCH]
                lianxin_bodies.append(
                    pusher.batch([d.change(pusher.device_id, clock) for d in batch])
                )
                couch_bodies.append(_json({"docs": [d.couch() for d in batch]}))

            lianxin_s, couch_s = push_both(pusher, lianxin_bodies, couch, couch_bodies)
            results.push = (docs / lianxin_s, docs / couch_s)
            say(f"push: {docs:,} documents, Lianxin {lianxin_s:.2f} s, the peer {couch_s:.2f} s")

            lianxin_runs, couch_runs = [], []
            for _ in range(repeats):
                lianxin_runs.append(lianxin_pull_all(reader))
                couch_runs.append(couch_pull_all(couch))
            for name, runs in (("Lianxin", lianxin_runs), ("the peer", couch_runs)):
                if any(pulled != docs for _, pulled, _ in runs):
                    raise RuntimeError(f"{name} gave {[r[1] for r in runs]} documents of {docs}")
            lianxin_s = statistics.median(r[0] for r in lianxin_runs)
            couch_s = statistics.median(r[0] for r in couch_runs)
            results.pull = (docs / lianxin_s, docs / couch_s)
            say(f"pull: {docs:,} documents, Lianxin {lianxin_s:.2f} s, the peer {couch_s:.2f} s")

            body = _encode(PullRequest(cursor=lianxin_runs[-1][2], limit=PAGE))
            latest = couch_runs[-1][2]
            lianxin_polls, couch_polls = [], []
            for _ in range(rounds):
                lianxin_polls.append(timed(lambda: _no_change_pull(reader, body)))
                couch_polls.append(timed(lambda: _empty_poll(couch, latest)))
            results.no_change = (latency(lianxin_polls), latency(couch_polls))
            say(f"no-change sync: {rounds} rounds each")
    results.seconds = time.perf_counter() - started
    return results


def _no_change_pull(phone: Phone, body: bytes) -> None:
    page = phone.post(PULL, body, PullPage)
    if page.items or page.has_more:
        raise RuntimeError("a no-change pull brought changes")


def _empty_poll(couch: httpx.Client, since: int | str) -> None:
    page = _decode_couch_changes(
        couch.get(f"/{DATABASE}/_changes", params={"since": since}).content
    )
    if page.results:
        raise RuntimeError("an empty poll brought changes")


# -- reporting -----------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def rows(r: Results) -> list[Row]:
    (lianxin_push, couch_push), (lianxin_pull, couch_pull) = r.push, r.pull
    lianxin_poll, couch_poll = r.no_change
    push_ratio, pull_ratio = lianxin_push / couch_push, lianxin_pull / couch_pull
    poll_ratio = lianxin_poll.median_ms / couch_poll.median_ms
    return [
        Row(
            f"push, batches of {PUSH_BATCH} (docs/s)",
            f"{lianxin_push:,.0f}",
            f"≥ {PUSH_TARGET:g}× peer",
            _met(push_ratio >= PUSH_TARGET),
            f"pouchdb-server _bulk_docs {couch_push:,.0f}",
            f"{push_ratio:.2f}×",
        ),
        Row(
            f"pull everything, pages of {PAGE:,} (docs/s)",
            f"{lianxin_pull:,.0f}",
            f"≥ {PULL_TARGET:g}× peer",
            _met(pull_ratio >= PULL_TARGET),
            f"pouchdb-server _changes include_docs {couch_pull:,.0f}",
            f"{pull_ratio:.2f}×",
        ),
        Row(
            "no-change sync, median (ms)",
            f"{lianxin_poll.median_ms:.2f}",
            "≤ peer",
            _met(poll_ratio <= NO_CHANGE_TARGET),
            f"pouchdb-server empty _changes poll {couch_poll.median_ms:.2f}",
            f"{poll_ratio:.2f}×",
        ),
        Row(
            "no-change sync, p99 (ms)",
            f"{lianxin_poll.p99_ms:.2f}",
            "",
            "",
            f"pouchdb-server empty _changes poll {couch_poll.p99_ms:.2f}",
            f"{lianxin_poll.p99_ms / couch_poll.p99_ms:.2f}×",
        ),
    ]


HEADING = "## Side by side with pouchdb-server (bench/peer.py)"
INTRO = f"""
    make bench-peer     # = uv run python -m bench.peer (installs pouchdb-server on first use)

The same workload against a real `lianxin serve` (production defaults:
HPKE envelopes both ways, request and batch signatures, field merge,
at-rest encryption) and against pouchdb-server {POUCHDB_VERSION} from npm (PouchDB
on on-disk LevelDB, no sealing, no signatures, no merge beyond revisions),
both on 127.0.0.1, driven by one Python httpx client taking turns request
by request: 1 KB case-like documents pushed in batches of {PUSH_BATCH} (Lianxin
push vs CouchDB `_bulk_docs`), pulled from nothing in pages of {PAGE:,}
(Lianxin's signed pull vs `_changes?include_docs=true`, every document
decoded on both sides), and a no-change sync (Lianxin's signed pull with an
up-to-date cursor vs an empty `_changes?since=<latest>` poll). Ratios are
Lianxin over the peer. See the docstring of `bench/peer.py`.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--docs", type=int, default=20_000, help="documents pushed (20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="whole pulls each, median (3)")
    parser.add_argument("--rounds", type=int, default=300, help="no-change round trips (300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--pouchdb-dir",
        type=Path,
        default=POUCHDB_DIR,
        help="where pouchdb-server is (or gets) installed with npm (.tools/pouchdb)",
    )
    parser.add_argument("--record", action="store_true", help="append to docs/BENCHMARKS.md")
    parser.add_argument("--note", default="", help="a remark to record with the table")
    args = parser.parse_args(argv)
    if args.docs < PUSH_BATCH:
        parser.error(f"--docs must be at least {PUSH_BATCH}")

    def say(line: str) -> None:
        print(f"  {line}", flush=True)

    # A SIGTERM unwinds like Ctrl-C, so both servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pouchdb = ensure_pouchdb(args.pouchdb_dir.resolve(), say)
    results = run(args.docs, args.repeats, args.rounds, args.seed, pouchdb, say)
    table = rows(results)
    summary = (
        f"{results.docs:,} documents of {results.doc_bytes:,.0f} bytes of JSON on average;"
        f" whole run {results.seconds:.0f} s."
    )
    print()
    print(plain(table))
    print()
    print(summary)
    print(f"machine: {machine()}")
    if args.record:
        command = "uv run python -m bench.peer"
        command += f" --docs {args.docs}" if args.docs != 20_000 else ""
        command += " --record"
        record(HEADING, INTRO, dated_block(command, table, args.note, summary))
        print("recorded in docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
