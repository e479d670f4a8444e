"""Load: a thousand phones syncing at once against one real `lianxin serve` on 127.0.0.1.

    uv run python -m bench.load --devices 1000            # about 2 minutes
    uv run python -m bench.load --devices 100 --seconds 10

Issue 8, point 6. Setup, not timed: an office in a temporary folder
(`lianxin init`), and one mediator and one enrolment code per device, made
in bulk through the same `Directory` calls `lianxin user add` and `lianxin
code` make. Then `lianxin serve` starts, and each device, a reference client
(`sync.client.DeviceClient`) with its own device file and its own HTTP
connection, running in a thread of one of a few worker processes, enrols
over HTTP with its code (the real flow; timed on its own). When every device
is enrolled, all of them sync for `--seconds`: each edits a few of its own
cases and syncs (push the outbox, pull until done), again and again with no
pause, so the server always has every device's next request waiting: the
worst hour of a city, not an ordinary one. Meanwhile a competing writer (as
`lianxin code`, a key rotation or a backup would) takes the store's write
lock for 50 ms every second, so the server meets a busy SQLite.

It reports enrolment time, requests and changes per second, p50/p99
latency per endpoint (an HTTP round trip, body included), and every answer
by status. It exits 1 if any request got a 500, or any answer other than
200 or a 503 with a storage code, or if the server logged an error or died.
Transport errors are counted and shown; the phones resend.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec

from bench.kill_run import OFFICE_ENV, PHONE_KDF, ServerProcess, set_up_office
from schemas.wire import ErrorBody
from sync.client import DeviceClient
from sync.errors import LianxinError

PIN = "135790"
DAGUAN = {"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}
CASES_PER_DEVICE = 3


class Sample(NamedTuple):
    """One HTTP request: its endpoint, how it ended (a status or an error), milliseconds."""

    endpoint: str
    outcome: str
    ms: float
    enrolment: bool


class TimedTransport(httpx.HTTPTransport):
    """Times each request from sending to the last byte of the answer, and keeps its outcome."""

    def __init__(self, samples: list[Sample], phase: list[bool]) -> None:
        super().__init__()
        self.samples = samples
        self.phase = phase  # [enrolling], shared with the device's thread

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = request.url.path.rsplit("/", 1)[-1]
        began = time.perf_counter()
        try:
            response = super().handle_request(request)
            response.read()
        except httpx.TransportError as error:
            ms = (time.perf_counter() - began) * 1000
            self.samples.append(Sample(endpoint, type(error).__name__, ms, self.phase[0]))
            raise
        ms = (time.perf_counter() - began) * 1000
        outcome = str(response.status_code)
        if not response.is_success:  # error answers are plain `{error, detail}`: name the code
            with contextlib.suppress(msgspec.DecodeError):
                outcome += " " + msgspec.msgpack.decode(response.content, type=ErrorBody).error
        self.samples.append(Sample(endpoint, outcome, ms, self.phase[0]))
        return response


def device(
    url: str,
    name: str,
    code: str,
    folder: Path,
    seed: int,
    enrolled: threading.Barrier,
    go: threading.Event,
    deadline: list[float],
    samples: list[Sample],
    changes: Counter[str],
) -> None:
    """One phone: enrol, wait for every other, then edit and sync until the deadline."""
    rng = random.Random(seed)
    phase = [True]
    transport = TimedTransport(samples, phase)
    with (
        httpx.Client(base_url=url, timeout=120, transport=transport) as http,
        DeviceClient(folder / f"{name}.db", http, passphrase=PIN, kdf=PHONE_KDF) as client,
    ):
        try:
            client.enroll(code, label=f"load {name}")
        finally:
            enrolled.wait()
        go.wait()
        phase[0] = False
        made = 0
        while time.monotonic() < deadline[0]:
            for _ in range(rng.randint(1, 5)):
                fields: dict[str, Any] = {"title": f"{name} edit {made}"}
                if made < CASES_PER_DEVICE:
                    fields["location"] = DAGUAN
                client.edit("case", f"k-{name}-{made % CASES_PER_DEVICE}", fields)
                made += 1
            try:
                pushed, _ = client.sync()
                changes["pushed"] += len(pushed)
            except (httpx.TransportError, LianxinError):
                time.sleep(rng.uniform(0.1, 0.5))  # counted by the transport; retry as phones do


def worker(
    url: str,
    codes: list[tuple[str, str]],
    folder: str,
    seconds: float,
    all_enrolled: Any,
    results: Any,
) -> None:
    """A process of devices, one thread each; sends its samples back when done."""
    samples: list[Sample] = []
    changes: Counter[str] = Counter()
    enrolled = threading.Barrier(len(codes) + 1)
    go = threading.Event()
    deadline = [0.0]
    threads = [
        threading.Thread(
            target=device,
            args=(url, name, code, Path(folder), n, enrolled, go, deadline, samples, changes),
            daemon=True,
        )
        for n, (name, code) in enumerate(codes)
    ]
    for thread in threads:
        thread.start()
    enrolled.wait()  # this process's devices...
    all_enrolled.wait()  # ...and every other process's
    deadline[0] = time.monotonic() + seconds
    go.set()
    for thread in threads:
        thread.join()
    results.put((samples, dict(changes)))


def competing_writer(path: Path, stop: threading.Event, held: list[int]) -> None:
    """Take the store's write lock for 50 ms every second, as another process's writer does."""
    with closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as db:
        while not stop.wait(1.0):
            db.execute("BEGIN IMMEDIATE")
            time.sleep(0.05)
            db.execute("ROLLBACK")
            held[0] += 1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def report(
    samples: list[Sample],
    changes: Counter[str],
    seconds: float,
    enrol_s: float,
    server_errors: list[str],
) -> int:
    enrolments = [s for s in samples if s.enrolment]
    syncs = [s for s in samples if not s.enrolment]
    print(f"enrolment: {len(enrolments)} requests in {enrol_s:.1f} s (setup, not in the figures)")
    print(
        f"sync: {len(syncs)} requests in {seconds:.1f} s = {len(syncs) / seconds:.0f} requests/s;"
        f" {changes['pushed']} changes pushed = {changes['pushed'] / seconds:.0f} changes/s"
    )
    by_endpoint: dict[str, list[float]] = defaultdict(list)
    for sample in syncs:
        by_endpoint[sample.endpoint].append(sample.ms)
    for endpoint, values in sorted(by_endpoint.items()):
        print(
            f"  {endpoint}: {len(values)} requests, p50 {percentile(values, 0.5):.0f} ms,"
            f" p99 {percentile(values, 0.99):.0f} ms, max {max(values):.0f} ms"
        )
    outcomes = Counter(s.outcome for s in samples)
    print("answers: " + ", ".join(f"{outcome}: {n}" for outcome, n in sorted(outcomes.items())))
    five_hundred = sum(n for outcome, n in outcomes.items() if outcome.startswith("500"))
    # A 503 with a storage code is the answer a busy store must give: the phone retries.
    retry = ("200", "503 storage_busy", "503 storage_unavailable", "503 unavailable")
    # A connection the server closed as idle (keep-alive, 5 s) just as the phone sent on it
    # ends as a transport error (ReadError, RemoteProtocolError); the phone resends. Counted
    # above, not a server failure, unless the server logged an error or died (checked below).
    failed = {o: n for o, n in outcomes.items() if o not in retry and o[0].isdigit()}
    print(f"500: {five_hundred}")
    print(f"server errors logged: {len(server_errors)}")
    problems = [f"requests refused or failed: {failed}"] if failed else []
    problems += [f"server: {line}" for line in server_errors[:5]]
    for problem in problems:
        print(f"FAIL {problem}")
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


def load(devices: int, seconds: float, workers: int, folder: Path) -> int:
    data = folder / "office"
    began = time.monotonic()
    codes = set_up_office(data, devices, "d")
    print(f"setup: office and {devices} users with codes in {time.monotonic() - began:.1f} s")
    # One HTTP connection per device, and each device file's handles, in this process's workers.
    server = ServerProcess(data)
    server.start()
    context = multiprocessing.get_context("spawn")
    all_enrolled = context.Barrier(workers + 1)
    results = context.Queue()
    processes = [
        context.Process(
            target=worker,
            args=(server.url, codes[n::workers], str(folder), seconds, all_enrolled, results),
        )
        for n in range(workers)
    ]
    stop = threading.Event()
    held = [0]
    writer = threading.Thread(target=competing_writer, args=(data / "lianxin.db", stop, held))
    samples: list[Sample] = []
    changes: Counter[str] = Counter()
    server_errors: list[str] = []
    try:
        enrol_began = time.monotonic()
        for process in processes:
            process.start()
        all_enrolled.wait(timeout=1800)
        enrol_s = time.monotonic() - enrol_began
        sync_began = time.monotonic()
        writer.start()
        for _ in processes:
            got, counted = results.get(timeout=seconds + 1800)
            samples += got
            changes.update(counted)
        sync_s = time.monotonic() - sync_began
        for process in processes:
            process.join(timeout=60)
        assert server.process is not None
        if server.process.poll() is not None:
            server_errors.append(f"the server exited during the run ({server.process.returncode})")
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        for process in processes:
            if process.is_alive():
                process.kill()
        server.stop()
    print(
        f"load: {devices} devices in {workers} processes, {seconds:.0f} s of sync,"
        f" {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"competing writer held the store's write lock {held[0]} times")
    # The server logs JSON lines; an unexpected error or a storage bug is logged at "error".
    log = server.log_path.read_text(errors="replace").splitlines()
    server_errors += [
        line[:300] for line in log if '"level": "error"' in line or line.startswith("Traceback")
    ]
    return report(samples, changes, sync_s, enrol_s, server_errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60, help="how long the devices sync")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    args = parser.parse_args(argv)
    os.environ.update(OFFICE_ENV)
    with tempfile.TemporaryDirectory(prefix="lianxin-load-") as folder:
        return load(args.devices, args.seconds, args.workers, Path(folder))


if __name__ == "__main__":
    sys.exit(main())
