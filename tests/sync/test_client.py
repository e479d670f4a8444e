"""The reference device client against the real app, in process (PROTOCOL.md sections 8–12).

Every device is a `DeviceClient` on its own SQLite file, talking to the app
built by `create_app` through `litestar.testing.TestClient` (an httpx.Client).
The server and the devices share one hand-moved wall clock, since the server
refuses a request time more than 300 s from its own.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from litestar.testing import TestClient

from schemas import (
    Add,
    Append,
    Change,
    ChangeResult,
    OfficeInfo,
    PullPage,
    Pushed,
    PushRequest,
    PushResponse,
    Reason,
    Remove,
    SignedPull,
    SignedPush,
)
from server.app import create_app
from server.erasure import erase_case
from server.keys import OfficeKeys
from server.settings import Settings
from server.storage.directory import Directory
from server.storage.sqlite import SqliteStore
from sync import merge, signing
from sync.agreements import receipt_problems
from sync.changes import decode_change
from sync.client import MAX_BATCH, MAX_BATCH_BYTES, AlreadyEnrolled, DeviceClient, NotEnrolled
from sync.envelope import (
    PULL_ENVELOPE,
    CompactEnvelope,
    open_v2,
    open_v2_answer,
    seal_v2_answer,
)
from sync.errors import (
    BadSignature,
    EnrollmentRefused,
    LianxinError,
    MalformedRequest,
    RateLimited,
    RevokedDevice,
    Unreadable,
    Unsealable,
)
from sync.merge import Rejected
from tests.conftest import TEST_KDF, Wall, make_store, office_keys
from tests.sync.test_replica_store import on_disk

DAY_MS = 24 * 60 * 60 * 1000
FUTIAN = "Shenzhen/Futian"
XIANGMIHU = {"city": "Shenzhen", "district": "Futian", "street": "Xiangmihu"}
PIN = "246810"


class Office:
    """The app in process, its store and directory, and the devices enrolled with it."""

    def __init__(
        self, root: Path, http: TestClient, store: SqliteStore, keys: OfficeKeys, wall: Wall
    ) -> None:
        self.root = root
        self.http = http
        self.store = store
        self.keys = keys
        self.wall = wall
        self.directory = Directory(store)
        self.devices: list[DeviceClient] = []

    def open(self, name: str, **options: Any) -> DeviceClient:
        """A client on `name`'s device file (created on first use, reopened after)."""
        options.setdefault("wall_ms", self.wall)
        options.setdefault("passphrase", PIN)
        options.setdefault("kdf", TEST_KDF)
        client = DeviceClient(self.root / f"{name}.db", self.http, **options)
        self.devices.append(client)
        return client

    def code(self, name: str, role: str, org_units: tuple[str, ...] = (FUTIAN,)) -> str:
        user = self.directory.add_user(name, role, list(org_units), self.wall())
        return self.directory.issue_code(user.user_id, self.wall(), DAY_MS)

    def device(self, name: str, role: str, org_units: tuple[str, ...] = (FUTIAN,), **options):
        client = self.open(name, **options)
        client.enroll(self.code(name, role, org_units), label=f"{name}'s phone")
        return client

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        return self.store.db.execute(sql, params).fetchall()


@pytest.fixture
def office(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Office]:
    wall = Wall()
    keys = office_keys()
    store = make_store(tmp_path / "server.db", keys)
    marker = request.node.get_closest_marker("office_settings")
    settings = Settings(data_dir=tmp_path, **(marker.kwargs if marker else {}))
    app = create_app(settings, store=store, keys=keys, wall_ms=wall)
    with TestClient(app) as http:
        office = Office(tmp_path, http, store, keys, wall)
        yield office
        for device in office.devices:
            device.close()


def states(device: DeviceClient) -> list[tuple[str, str | None]]:
    return [(entry.state, entry.reason) for entry in device.outbox()]


def intercept(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch, hook: Callable[..., httpx.Response]
) -> list[httpx.Request]:
    """Route `http.send` through `hook(real_send, request)`; returns the requests seen."""
    real_send = http.send
    seen: list[httpx.Request] = []

    def send(request: httpx.Request, **kwargs: Any) -> httpx.Response:
        seen.append(request)
        return hook(lambda: real_send(request, **kwargs), request)

    monkeypatch.setattr(http, "send", send)
    return seen


def first_answer_lost_then_replayed(path: str) -> Callable[..., httpx.Response]:
    """A hook for `intercept`: the first answer to `path` is lost on the way, and every
    later request to it is answered with that first answer."""
    answers: list[httpx.Response] = []

    def hook(send: Callable[[], httpx.Response], request: httpx.Request) -> httpx.Response:
        response = send()
        if request.url.path != path:
            return response
        answers.append(response)
        if len(answers) == 1:
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return answers[0]

    return hook


def answers_kept(answers: list[httpx.Response]) -> Callable[..., httpx.Response]:
    """A hook for `intercept`: every answer reaches the device and is kept in `answers`."""

    def hook(send: Callable[[], httpx.Response], request: httpx.Request) -> httpx.Response:
        answers.append(send())
        return answers[-1]

    return hook


def answered_unsealed(path: str, forged: msgspec.Struct) -> Callable[..., httpx.Response]:
    """A hook for `intercept`: requests to `path` reach the server, but the device is
    answered `forged`, in the clear, as whoever sits on the path could."""

    def hook(send: Callable[[], httpx.Response], request: httpx.Request) -> httpx.Response:
        response = send()
        if request.url.path != path:
            return response
        return httpx.Response(200, content=msgspec.msgpack.encode(forged), request=request)

    return hook


# -- enrolment -------------------------------------------------------------------------


def test_enrolment_registers_the_device_keys_and_keeps_the_identity(office, monkeypatch):
    sent = intercept(office.http, monkeypatch, lambda send, request: send())
    wang = office.device("wang", "mediator")

    identity = wang.identity
    device = office.directory.device(identity.device_id)
    assert (device.signing_key, device.kem_key) == (wang.signing_public_key, wang.kem_public_key)
    assert (device.label, device.user.user_id) == ("wang's phone", identity.user_id)
    assert (identity.role, identity.org_units) == ("mediator", [FUTIAN])
    office_keys = (identity.office.signing_key, identity.office.kem_key)
    assert office_keys == (office.keys.signing_public, office.keys.kem_public)
    # Private keys never leave the device.
    for private in (wang._signing_key.private_bytes_raw(), wang._kem_key.private_bytes_raw()):
        assert all(private not in request.content for request in sent)

    wang.close()
    reopened = office.open("wang")
    assert reopened.identity == identity
    assert reopened.signing_public_key == device.signing_key
    with pytest.raises(AlreadyEnrolled):
        reopened.enroll("ANYCODE23456")


def test_an_enrolment_code_works_once(office):
    code = office.code("sun", "mediator")
    office.open("sun-1").enroll(code)
    with pytest.raises(EnrollmentRefused):
        office.open("sun-2").enroll(code.lower())
    with pytest.raises(NotEnrolled):
        office.open("sun-2").sync()


# -- local edits -----------------------------------------------------------------------


def test_an_edit_is_checked_like_the_server_checks_it_and_queued(office):
    wang = office.device("wang", "mediator")
    bad = [
        ({"status": "closed"}, Reason.ILLEGAL_TRANSITION),
        ({"colour": "red"}, Reason.UNKNOWN_FIELD),
        ({"households": -1}, Reason.INVALID_VALUE),
        ({}, Reason.EMPTY_CHANGE),
    ]
    for values, reason in bad:
        with pytest.raises(Rejected) as rejected:
            wang.edit("case", "k-1", set=values)
        assert rejected.value.reason == reason
    # An id the office refuses would make it refuse the whole batch...
    for record_id, values, ops in [
        ("k 1", {"title": "x"}, []),
        ("k-1\n", {"title": "x"}, []),
        # ...or that the office refuses in a value: the change alone, but never worth sending.
        ("k-1", {"title": "x"}, [Add(field="parties", value="p-1\n")]),
        ("k-1", {"location": {"city": "Hangzhou", "district": "Gong/shu", "street": "s"}}, []),
    ]:
        with pytest.raises(Rejected) as rejected:
            wang.edit("case", record_id, set=values, ops=ops)
        assert rejected.value.reason == Reason.INVALID_VALUE
    assert wang.outbox() == []

    change = wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    wang.edit("case", "k-1", set={"status": "assigned"}, ops=[Add(field="tags", value="drains")])
    case = wang.record("case", "k-1")
    assert (case.title, case.status, case.tags) == ("Drains", "assigned", ["drains"])
    assert states(wang) == [("pending", None), ("pending", None)]
    assert change.seen == {} and change.device_id == wang.identity.device_id
    assert wang.record("case", "k-2") is None and wang.conflicts("case", "k-2") == []


def test_a_restarted_device_never_reissues_a_stamp(office):
    wang = office.device("wang", "mediator")
    first = wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    wang.close()

    office.wall.tick(-60 * 60 * 1000)  # the phone's clock was set back an hour
    reopened = office.open("wang")
    second = reopened.edit("case", "k-1", set={"title": "Drains overflow"})
    assert second.hlc > first.hlc
    assert [e.change_id for e in reopened.outbox()] == [first.change_id, second.change_id]
    assert reopened.record("case", "k-1").title == "Drains overflow"


# -- push and pull ---------------------------------------------------------------------


def test_a_case_made_offline_reaches_the_supervisor_of_its_district(office):
    wang = office.device("wang", "mediator")
    chen = office.device("chen", "supervisor", (FUTIAN,))
    other = office.device("liu", "supervisor", ("Shenzhen/Nanshan",))

    wang.edit("case", "k-drains", set={"title": "Drains", "status": "new", "location": XIANGMIHU})
    office.wall.tick()
    wang.edit("case", "k-drains", ops=[Add(field="tags", value="drains")])
    assert wang.record("case", "k-drains").tags == ["drains"]  # shown before any sync

    pushed, pulled = wang.sync()
    assert [r.status for r in pushed] == ["applied", "applied"]
    assert states(wang) == [("applied", None), ("applied", None)]
    assert (pulled.applied, pulled.skipped) == (2, 0)  # its own changes, back from the server
    assert wang.record("case", "k-drains").tags == ["drains"]

    assert chen.sync().pulled.states == 1  # the case as the office holds it, not its history
    assert chen.record("case", "k-drains") == wang.record("case", "k-drains")
    assert other.sync().pulled.applied == 0
    assert other.record("case", "k-drains") is None
    # Nothing new: another sync pulls nothing.
    assert chen.sync().pulled.applied == 0


def test_a_sync_with_nothing_new_writes_nothing_to_the_device_file(office):
    """A phone that syncs every few minutes with nothing to do neither waits for a
    durable commit nor wears its flash; the next real change still arrives."""
    jitter = [0]  # how far the phone's clock is from the server's, in ms
    wang = office.device("wang", "mediator")
    chen = office.device("chen", "supervisor", (FUTIAN,), wall_ms=lambda: office.wall() + jitter[0])
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new", "location": XIANGMIHU})
    wang.sync()
    assert chen.sync().pulled.states == 1
    files = [office.root / "chen.db", office.root / "chen.db-wal"]

    def written() -> list[bytes]:
        return [f.read_bytes() if f.exists() else b"" for f in files]

    before = written()
    office.wall.tick(30_000)
    jitter[0] = 400  # within the second that signed requests carry
    assert chen.sync().pulled.applied == 0
    assert written() == before  # not a byte written to the file or its log
    wang.edit("case", "k-1", set={"title": "Drains overflow"})
    wang.sync()
    assert chen.sync().pulled.applied == 1
    assert written() != before
    assert chen.record("case", "k-1").title == "Drains overflow"


def test_two_mediators_one_case_merge_silently_and_keep_a_conflict(office):
    """DESIGN scenario 3: different fields merge, the same field is a conflict until settled."""
    chen = office.device("chen", "supervisor")
    sun = office.device("sun", "mediator")
    li = office.device("li", "mediator")
    chen.edit(
        "case",
        "k-noise",
        set={"title": "Mahjong noise", "status": "assigned", "location": XIANGMIHU},
        ops=[Add(field="mediators", value=m.identity.user_id) for m in (sun, li)],
    )
    chen.sync()
    sun.sync()
    li.sync()
    assert sun.record("case", "k-noise").title == "Mahjong noise"

    # Offline, different fields.
    office.wall.tick()
    sun.edit("case", "k-noise", set={"priority": "high"})
    li.edit("case", "k-noise", ops=[Add(field="tags", value="noise")])
    for device in (sun, li, sun):
        device.sync()
    assert sun.record("case", "k-noise") == li.record("case", "k-noise")
    assert (sun.record("case", "k-noise").priority, li.record("case", "k-noise").tags) == (
        "high",
        ["noise"],
    )
    assert sun.conflicts("case", "k-noise") == li.conflicts("case", "k-noise") == []

    # Offline, the same field.
    office.wall.tick()
    sun.edit("case", "k-noise", set={"summary": "Stop at 22:00 on weekdays."})
    office.wall.tick()
    li.edit("case", "k-noise", set={"summary": "Move the table indoors."})
    sun.sync()
    pushed, _ = li.sync()
    assert pushed[0].status == "conflict"
    sun.sync()
    for device in (sun, li):
        (conflict,) = device.conflicts("case", "k-noise")
        assert (conflict.field, conflict.kind) == ("summary", "value")
        assert [c.value for c in conflict.candidates] == [
            "Stop at 22:00 on weekdays.",
            "Move the table indoors.",
        ]
        assert conflict.winner == "Move the table indoors."
    assert states(li)[-1] == ("conflict", None)

    # The supervisor saw both values; the settlement syncs back to both phones.
    chen.sync()
    assert len(chen.conflicts("case", "k-noise")) == 1
    chen.edit("case", "k-noise", set={"summary": "Stop at 22:00; table indoors."})
    chen.sync()
    for device in (sun, li):
        device.sync()
        assert device.conflicts("case", "k-noise") == []
        assert device.record("case", "k-noise").summary == "Stop at 22:00; table indoors."


def test_a_change_the_server_rejects_leaves_the_view_and_the_queue_moves_on(office):
    ma = office.device("ma", "informant")
    ma.edit("case", "k-own", set={"title": "Informants may not write cases"})
    ma.edit("warning", "w-drains", set={"description": "Drains overflow", "status": "open"})
    assert ma.record("case", "k-own") is not None

    pushed, pulled = ma.sync()
    assert [r.status for r in pushed] == ["rejected", "applied"]
    assert states(ma) == [("rejected", "not_permitted"), ("applied", None)]
    assert ma.outbox()[0].detail
    assert ma.record("case", "k-own") is None
    assert ma.record("warning", "w-drains").description == "Drains overflow"
    assert pulled.applied == 1
    assert ma.push() == []  # nothing left to send


def test_a_duplicate_of_a_rejected_change_is_still_rejected(office, monkeypatch):
    ma = office.device("ma", "informant")
    ma.edit("case", "k-own", set={"title": "Informants may not write cases"})
    calls = []

    def lose_first_answer(send, request):
        calls.append(request)
        response = send()
        if len(calls) == 1:
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    intercept(office.http, monkeypatch, lose_first_answer)
    with pytest.raises(httpx.ReadTimeout):
        ma.push()
    assert ma.record("case", "k-own") is not None  # unanswered: still shown
    (result,) = ma.push()
    assert (result.status, result.reason) == ("duplicate", Reason.NOT_PERMITTED)
    assert states(ma) == [("duplicate", "not_permitted")]
    assert ma.record("case", "k-own") is None


def test_a_lost_push_answer_is_retried_as_the_same_batch_and_answered_duplicate(
    office, monkeypatch
):
    wang = office.device("wang", "mediator", batch_size=2)
    for n in range(3):
        wang.edit("case", f"k-{n}", set={"title": f"Case {n}", "status": "new"})
    lost = []

    def lose_first_push_answer(send, request):
        response = send()  # the server handles it...
        if request.url.path == "/v2/sync/push" and not lost:
            lost.append(request.content)
            raise httpx.ReadTimeout("the answer was lost", request=request)  # ...we never hear
        return response

    sent = intercept(office.http, monkeypatch, lose_first_push_answer)
    with pytest.raises(httpx.ReadTimeout):
        wang.sync()
    assert states(wang) == [("sent", None), ("sent", None), ("pending", None)]

    pushed, _ = wang.sync()
    assert [r.status for r in pushed] == ["duplicate", "duplicate", "applied"]
    assert all(r.seq for r in pushed)
    pushes = [r for r in sent if r.url.path == "/v2/sync/push"]
    # The retry is the same batch, byte for byte, sent before the next one, signed anew
    # (in a new envelope: sealing is randomised, so only what is inside is compared).
    keys = {office.keys.kem_key_id: office.keys.kem}
    first, retry, then = [
        msgspec.msgpack.decode(open_v2("push", content, keys)[1], type=SignedPush)
        for content in (lost[0], pushes[1].content, pushes[2].content)
    ]
    assert (retry.batch_id, retry.changes) == (first.batch_id, first.changes)
    assert retry.timestamp_ms > first.timestamp_ms
    assert then.batch_id != first.batch_id and then.changes != first.changes
    assert states(wang) == [("duplicate", None), ("duplicate", None), ("applied", None)]

    device_id = wang.identity.device_id
    stored = office.rows("SELECT change_id FROM changes WHERE device_id = ?", device_id)
    assert sorted(stored) == sorted((e.change_id,) for e in wang.outbox())
    assert len(office.rows("SELECT * FROM batches WHERE device_id = ?", device_id)) == 2
    assert [wang.record("case", f"k-{n}").title for n in range(3)] == ["Case 0", "Case 1", "Case 2"]


def test_an_answer_that_is_not_this_pushs_own_is_refused_and_the_batch_goes_again(
    office, monkeypatch
):
    """A proxy that serves an earlier try's answer, or an unsealed one, changes nothing."""
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    # The retry is answered with the first try's answer.
    intercept(office.http, monkeypatch, first_answer_lost_then_replayed("/v2/sync/push"))
    with pytest.raises(httpx.ReadTimeout):
        wang.push()
    with pytest.raises(Unsealable):
        wang.push()
    assert states(wang) == [("sent", None)]

    forged = PushResponse(batch_id="x", results=[])
    intercept(office.http, monkeypatch, answered_unsealed("/v2/sync/push", forged))
    with pytest.raises(LianxinError, match="not sealed"):
        wang.push()
    assert states(wang) == [("sent", None)]

    monkeypatch.undo()
    assert [r.status for r in wang.push()] == ["duplicate"]
    assert states(wang) == [("duplicate", None)]


def test_a_pull_goes_to_version_2_sealed_whole_and_resumes_from_each_pages_cursor(
    office, monkeypatch
):
    wang = office.device("wang", "mediator", pull_limit=1)
    for n in range(2):
        wang.edit("case", f"k-{n}", set={"title": f"Case {n}", "status": "new"})
    wang.push()
    answers: list[httpx.Response] = []
    sent = intercept(office.http, monkeypatch, answers_kept(answers))
    report = wang.pull()

    # A case a page, then the (empty) log since the first page.
    assert (report.pages, report.states) == (3, 2)
    assert [r.url.path for r in sent] == ["/v2/sync/pull"] * 3
    assert [r.headers["content-type"] for r in sent] == [PULL_ENVELOPE] * 3
    assert [(a.status_code, a.headers["content-type"]) for a in answers] == [
        (200, PULL_ENVELOPE)
    ] * 3
    # The office opens each as this device's signed pull; an onlooker sees no device id.
    keys = {office.keys.kem_key_id: office.keys.kem}
    first, second, _ = [
        msgspec.msgpack.decode(open_v2("pull", r.content, keys)[1], type=SignedPull) for r in sent
    ]
    device_id = wang.identity.device_id
    assert (first.device_id, second.device_id) == (device_id, device_id)
    assert all(device_id.encode() not in r.content for r in sent)
    assert (first.cursor, first.limit) == ("states", 1)
    first_page = msgspec.msgpack.decode(
        open_v2_answer("pull", answers[0].content, 1, first.signature, wang._kem_key),
        type=PullPage,
    )
    assert first_page.has_more and second.cursor == first_page.cursor
    assert [wang.record("case", f"k-{n}").title for n in range(2)] == ["Case 0", "Case 1"]


def test_a_pull_answer_that_is_not_this_pulls_own_is_refused_and_nothing_is_applied(
    office, monkeypatch
):
    """A proxy that serves an earlier pull's answer, or a forged unsealed page, changes
    nothing: no record, no cursor, and above all no office key that the device would seal
    to from then on."""
    wang = office.device("wang", "mediator")
    chen = office.device("chen", "supervisor")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new", "location": XIANGMIHU})
    wang.push()
    # The next pull is answered with the first one's answer.
    intercept(office.http, monkeypatch, first_answer_lost_then_replayed("/v2/sync/pull"))
    with pytest.raises(httpx.ReadTimeout):
        chen.pull()
    with pytest.raises(Unsealable):
        chen.pull()
    assert chen.record("case", "k-1") is None
    assert chen._store.meta("cursor") is None

    office_key = chen.identity.office
    forger = X25519PrivateKey.generate().public_key().public_bytes_raw()

    forged = PullPage(
        items=[],
        cursor="v1.99.99.forged",
        has_more=False,
        server_time_ms=office.wall() + DAY_MS,
        kem_key_id="office-forger.kem1",
        kem_key=forger,
    )
    intercept(office.http, monkeypatch, answered_unsealed("/v2/sync/pull", forged))
    with pytest.raises(LianxinError, match="not sealed"):
        chen.pull()
    assert chen.identity.office == office_key
    assert chen._store.meta("cursor") is None

    monkeypatch.undo()
    assert chen.pull().states == 1
    assert chen.record("case", "k-1") == wang.record("case", "k-1")


def test_a_pull_sealed_to_a_retired_office_key_learns_the_new_key_and_goes_again(
    office, monkeypatch
):
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    wang.push()  # a push answer names no office key: the device still seals to the old one
    old_key_id = office.keys.kem_key_id
    office.keys.rotate(master=False, kem=True, now_ms=office.wall())
    office.keys.retire(old_key_id)
    answers: list[httpx.Response] = []
    sent = intercept(office.http, monkeypatch, answers_kept(answers))
    report = wang.pull()

    assert report.states == 1 and wang.record("case", "k-1").title == "Drains"
    # Refused once for the retired key, it asked the office for its key and pulled again.
    assert [r.url.path for r in sent] == ["/v2/sync/pull", "/v1/office", "/v2/sync/pull"]
    assert answers[0].status_code == 400
    assert msgspec.msgpack.decode(answers[0].content)["error"] == "wrong_key"
    sealed_to = [
        msgspec.msgpack.decode(r.content, type=CompactEnvelope).key_id
        for r in sent
        if r.url.path == "/v2/sync/pull"
    ]
    assert sealed_to == [old_key_id, office.keys.kem_key_id]
    assert wang.identity.office.kem_key_id == office.keys.kem_key_id != old_key_id


def on_path_to_the_office(office, answer_office_with):
    """Someone on the path: refuses every sync request `wrong_key` (refusals are not
    sealed) and answers the unsigned `GET /v1/office` with what they like."""

    def hook(send, request):
        if request.url.path == "/v1/office":
            info = answer_office_with()
            return httpx.Response(200, content=msgspec.msgpack.encode(info), request=request)
        refusal = {"error": "wrong_key", "detail": "rotated"}
        return httpx.Response(400, content=msgspec.msgpack.encode(refusal), request=request)

    return hook


def test_a_key_the_office_did_not_sign_is_never_learned(office, monkeypatch):
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    enrolled = wang.identity.office
    theirs = X25519PrivateKey.generate().public_key().public_bytes_raw()
    signer = Ed25519PrivateKey.generate()
    later = enrolled.kem_key_since_ms + 1

    def statement(office_id=enrolled.office_id):
        return signing.office_key_message(office_id, "evil.kem1", later, theirs)

    lies = {
        "unsigned": {},
        "signed by someone else": {"kem_key_signature": signer.sign(statement())},
        "another office, self-signed": {
            "office_id": "office-evil",
            "signing_key": signer.public_key().public_bytes_raw(),
            "kem_key_signature": signer.sign(statement("office-evil")),
        },
    }
    for name, lie in lies.items():
        fields = {"kem_key": theirs, "kem_key_id": "evil.kem1", "kem_key_since_ms": later}
        lying = OfficeInfo(**{**msgspec.structs.asdict(enrolled), **fields, **lie})
        sent = intercept(office.http, monkeypatch, on_path_to_the_office(office, lambda i=lying: i))
        with pytest.raises(BadSignature):
            wang.push()
        assert [r.url.path for r in sent] == ["/v2/sync/push", "/v1/office"], name
        assert wang.identity.office == enrolled, name
        monkeypatch.undo()

    # The office itself is still reached, with the change the device held all along.
    assert [r.status for r in wang.push()] == ["applied"]


def test_an_older_statement_of_the_office_cannot_take_a_device_back_to_a_retired_key(
    office, monkeypatch
):
    wang = office.device("wang", "mediator")
    before = msgspec.msgpack.decode(office.http.get("/v1/office").content, type=OfficeInfo)
    office.wall.tick(60_000)
    office.keys.rotate(master=False, kem=True, now_ms=office.wall())
    wang.pull()  # the page names the new key, vouched for: the device seals to it now
    rotated = wang.identity.office
    assert (rotated.kem_key_id, rotated.kem_key) == (office.keys.kem_key_id, office.keys.kem_public)
    assert rotated.kem_key_since_ms > before.kem_key_since_ms

    # Someone who kept the office's earlier answer (genuine, signed) plays it back.
    intercept(office.http, monkeypatch, on_path_to_the_office(office, lambda: before))
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    with pytest.raises(BadSignature, match="older"):
        wang.push()
    assert wang.identity.office == rotated


def test_a_rotation_is_learned_from_a_page_with_nothing_else_new(office):
    wang = office.device("wang", "mediator")
    wang.pull()
    office.wall.tick(60_000)
    office.keys.rotate(master=False, kem=True, now_ms=office.wall())
    report = wang.pull()
    assert report.applied == 0
    assert wang.identity.office.kem_key_id == office.keys.kem_key_id


def test_a_key_held_from_before_statements_were_signed_gets_its_statement(office, monkeypatch):
    wang = office.device("wang", "mediator")
    current = wang.identity.office
    # As a device enrolled by an earlier version stored it: the key, no time, no signature.
    legacy = msgspec.structs.replace(current, kem_key_since_ms=0, kem_key_signature=b"")
    with wang._store.transaction():
        wang._learn_office_key(legacy)
    wang.pull()
    assert wang.identity.office == current
    # So an older statement cannot be played back to it any more.
    office.wall.tick(60_000)
    office.keys.rotate(master=False, kem=True, now_ms=office.wall())
    wang.pull()
    intercept(office.http, monkeypatch, on_path_to_the_office(office, lambda: current))
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    with pytest.raises(BadSignature, match="older"):
        wang.push()


def test_a_page_forged_by_whoever_holds_a_leaked_key_names_no_key_the_device_takes(
    office, monkeypatch
):
    """The office rotates because its key leaked; a device that has not heard yet still
    seals its pull to the leaked key, so its holder can read the request and seal an
    answer to it. The key that answer names must still be the office's own."""
    wang = office.device("wang", "mediator")
    leaked_id, leaked = office.keys.kem_key_id, office.keys.kem
    enrolled = wang.identity.office
    office.keys.rotate(master=False, kem=True, now_ms=office.wall() + 60_000)
    theirs = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def forge(send, request):
        suite, plaintext = open_v2("pull", request.content, {leaked_id: leaked})
        pull = msgspec.msgpack.decode(plaintext, type=SignedPull)
        page = PullPage(
            items=[],
            cursor="v1.0.0.forged",
            has_more=False,
            server_time_ms=office.wall(),
            kem_key_id="evil.kem1",
            kem_key=theirs,
            kem_key_since_ms=enrolled.kem_key_since_ms + 120_000,
        )
        sealed = seal_v2_answer(
            "pull",
            msgspec.msgpack.encode(page),
            suite,
            pull.signature,
            X25519PublicKey.from_public_bytes(wang.kem_public_key),
        )
        answer_type = {"content-type": PULL_ENVELOPE}
        return httpx.Response(200, content=sealed, headers=answer_type, request=request)

    intercept(office.http, monkeypatch, forge)
    with pytest.raises(BadSignature):
        wang.pull()
    assert wang.identity.office == enrolled
    assert wang._store.meta("cursor") is None  # nothing of the page was applied


@pytest.mark.office_settings(sync_requests_per_minute=3)
def test_a_sync_held_back_by_the_office_keeps_the_outbox_and_resumes_later(office):
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    wang.pull()  # a first pull spends one of the three requests of its minute

    with pytest.raises(RateLimited) as held:
        wang.sync()  # a pull and the push go; the pull after them is held back
    assert held.value.retry_after_s == 20  # from the answer's Retry-After

    assert [entry.state for entry in wang.outbox()] == ["applied"]
    office.wall.tick(20_000)
    report = wang.sync()
    # Its own change comes back from the server: the pull that was held back happened.
    assert (report.pushed, report.pulled.applied) == ([], 1)


@pytest.mark.parametrize(
    ("options", "sizes"),
    [({"batch_size": 2}, [2, 2, 1]), ({"batch_bytes": 300}, [3, 2])],
)
def test_push_splits_the_outbox_by_count_and_by_bytes(office, monkeypatch, options, sizes):
    assert (MAX_BATCH, MAX_BATCH_BYTES) == (500, 4 * 1024 * 1024)
    wang = office.device("wang", "mediator", **options)
    for n in range(5):
        wang.edit("case", f"k-{n}", set={"title": f"Case {n}", "status": "new"})
    sent = intercept(office.http, monkeypatch, lambda send, request: send())
    assert len(wang.push()) == 5
    batches = Counter(entry.batch_id for entry in wang.outbox())
    assert list(batches.values()) == sizes
    # Between two batches, a pull naming the first's newest change (PROTOCOL.md section 12).
    paths = [request.url.path.rsplit("/", 1)[1] for request in sent]
    assert paths == ["push", *["pull", "push"] * (len(sizes) - 1)]


def test_a_change_too_large_for_any_batch_is_refused_before_it_can_jam_the_outbox(office):
    wang = office.device("wang", "mediator", batch_bytes=600)
    with pytest.raises(Rejected, match="bytes, over 600") as rejected:
        wang.edit("case", "k-big", set={"summary": "x" * 1000, "status": "new"})
    assert rejected.value.reason == Reason.INVALID_VALUE
    assert wang.outbox() == []


def test_a_pull_killed_between_pages_resumes_from_the_stored_cursor(office, monkeypatch):
    chen = office.device("chen", "supervisor", pull_limit=2)
    wang = office.device("wang", "mediator")
    for n in range(5):
        wang.edit(
            "case", f"k-{n}", set={"title": f"Case {n}", "status": "new", "location": XIANGMIHU}
        )
    wang.sync()
    pulls = []

    def die_on_second_page(send, request):
        pulls.append(request)
        if len(pulls) == 2:
            raise httpx.ConnectError("the process died", request=request)
        return send()

    intercept(office.http, monkeypatch, die_on_second_page)
    with pytest.raises(httpx.ConnectError):
        chen.pull()
    assert chen.record("case", "k-1") is not None and chen.record("case", "k-2") is None
    chen.close()
    monkeypatch.undo()

    # A new process on the same file: it goes on after the first page.
    resumed = office.open("chen", pull_limit=2)
    report = resumed.pull()
    assert (report.pages, report.states, report.skipped) == (2, 3, 0)
    assert [resumed.record("case", f"k-{n}").title for n in range(5)] == [
        f"Case {n}" for n in range(5)
    ]
    # With the cursor lost, every case comes again whole, in place of what it holds.
    resumed._store.set_meta("cursor", None)
    assert resumed.pull().states == 5
    assert resumed.record("case", "k-4").title == "Case 4"


@pytest.mark.parametrize("answer", ["pending", "lost"])
def test_an_evicted_record_does_not_show_again_from_this_devices_own_changes(
    office, monkeypatch, answer
):
    chen = office.device("chen", "supervisor")
    sun = office.device("sun", "mediator")
    chen.edit(
        "case",
        "k-1",
        set={"title": "Drains", "status": "assigned", "location": XIANGMIHU},
        ops=[Add(field="mediators", value=sun.identity.user_id)],
    )
    chen.sync()
    sun.sync()
    sun.edit("case", "k-1", set={"summary": "Met the households"})
    if answer == "lost":  # the push lands, its answer does not
        pushed = []

        def lose_the_answer(send, request):
            response = send()
            if request.url.path == "/v2/sync/push" and not pushed:
                pushed.append(request)
                raise httpx.ReadTimeout("no signal", request=request)
            return response

        intercept(office.http, monkeypatch, lose_the_answer)
        with pytest.raises(httpx.ReadTimeout):
            sun.push()
        monkeypatch.undo()
    chen.edit("case", "k-1", ops=[Remove(field="mediators", value=sun.identity.user_id)])
    chen.sync()

    assert sun.pull().evicted == 1
    assert sun.record("case", "k-1") is None
    sun.sync()  # the retry is answered (duplicate, or not_permitted if it never landed)
    sun.sync()
    assert sun.record("case", "k-1") is None


def test_a_cursor_the_office_refuses_is_dropped_and_everything_pulled_again(office):
    chen = office.device("chen", "supervisor")
    wang = office.device("wang", "mediator")
    for n in range(3):
        wang.edit("case", f"k-{n}", set={"title": f"Case {n}", "location": XIANGMIHU})
    wang.sync()
    chen.edit("case", "k-chen", set={"title": "Chen's own", "location": XIANGMIHU})
    chen.sync()
    assert states(chen) == [("applied", None)]
    # The office was restored from a backup: the cursor chen holds no longer opens there,
    # and a case chen had pulled was lost with the office's disk.
    version, position, seq, _ = str(chen._store.meta("cursor")).split(".")
    chen._store.set_meta("cursor", f"{version}.{position}.{seq}.{'0' * 32}")
    lost_state = merge.apply_change(
        None,
        Change(
            change_id="c-lost",
            record_type="case",
            record_id="k-lost",
            device_id="dev-gone",
            hlc=1,
            set={"title": "Lost with the disk"},
        ),
    ).state
    with chen._store.transaction():
        chen._store.put_states([lost_state])
    assert chen.record("case", "k-lost") is not None
    wang.edit("case", "k-3", set={"title": "Case 3", "location": XIANGMIHU})
    wang.sync()

    report = chen.pull()

    assert (report.states, report.skipped) == (5, 0)  # the server layer built again
    assert [chen.record("case", f"k-{n}").title for n in range(4)] == [
        f"Case {n}" for n in range(4)
    ]
    assert chen.record("case", "k-lost") is None
    # Chen's own change may be one the restore lost: it goes again, and is a duplicate here.
    assert states(chen) == [("pending", None)]
    chen.sync()
    assert states(chen) == [("duplicate", None)]
    assert chen.record("case", "k-chen").title == "Chen's own"


def test_a_pull_killed_while_applying_a_page_keeps_nothing_of_that_page(office, monkeypatch):
    chen = office.device("chen", "supervisor")
    wang = office.device("wang", "mediator")
    for n in range(3):
        wang.edit(
            "case", f"k-{n}", set={"title": f"Case {n}", "status": "new", "location": XIANGMIHU}
        )
    wang.sync()

    def die_after_writing_the_records(changes):
        assert chen._store.states([("case", "k-0")])  # written, not yet committed
        raise KeyboardInterrupt  # the process is killed mid-page

    monkeypatch.setattr(chen._store, "mark_all_applied", die_after_writing_the_records)
    with pytest.raises(KeyboardInterrupt):
        chen.pull()
    assert chen.record("case", "k-0") is None
    monkeypatch.undo()
    assert chen.pull().states == 3


def test_a_record_leaving_the_view_is_evicted_and_comes_back_whole(office):
    chen = office.device("chen", "supervisor")
    sun = office.device("sun", "mediator", (FUTIAN,))
    sun_user = sun.identity.user_id
    chen.edit(
        "case",
        "k-1",
        set={"title": "Drains", "status": "assigned", "location": XIANGMIHU},
        ops=[Add(field="mediators", value=sun_user)],
    )
    chen.sync()
    assert sun.sync().pulled.states == 1

    office.wall.tick()
    chen.edit("case", "k-1", ops=[Remove(field="mediators", value=sun_user)])
    chen.sync()
    assert sun.sync().pulled.evicted == 1
    assert sun.record("case", "k-1") is None

    # Assigned again: the whole history comes again, and all of it applies.
    office.wall.tick()
    chen.edit("case", "k-1", ops=[Add(field="mediators", value=sun_user)])
    chen.sync()
    assert sun.sync().pulled.applied == 3
    assert sun.record("case", "k-1") == chen.record("case", "k-1")


def test_a_revoked_device_is_refused_and_keeps_its_outbox(office):
    """DESIGN scenario 4: from revocation on, the server refuses the lost phone."""
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Before", "status": "new"})
    wang.sync()
    wang.edit("case", "k-1", set={"title": "After"})
    assert office.directory.revoke(wang.identity.device_id, office.wall())

    with pytest.raises(RevokedDevice):
        wang.sync()  # refused at its first request, the pull: the edit stays queued
    with pytest.raises(RevokedDevice):
        wang.push()
    assert states(wang) == [("applied", None), ("sent", None)]
    stored = office.rows(
        "SELECT count(*) FROM changes WHERE device_id = ?", wang.identity.device_id
    )
    assert stored == [(1,)]


def test_a_device_whose_clock_is_far_off_signs_with_the_server_time(office, monkeypatch):
    skew = [-DAY_MS]  # enrolment teaches the device how far off its clock is
    wang = office.device("wang", "mediator", wall_ms=lambda: office.wall() + skew[0])
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    assert [r.status for r in wang.push()] == ["applied"]

    skew[0] = 2 * 60 * 60 * 1000  # then the phone's clock jumps ahead
    sent = intercept(office.http, monkeypatch, lambda send, request: send())
    wang.edit("case", "k-1", set={"title": "Drains overflow"})
    assert [r.status for r in wang.sync().pushed] == ["applied"]
    # Refused as stale once (its first request, a pull), it asked the server's time and
    # signed again.
    assert [r.url.path for r in sent][:3] == ["/v2/sync/pull", "/v1/office", "/v2/sync/pull"]


# -- at rest ---------------------------------------------------------------------------


def test_a_lost_phone_file_shows_nothing_personal_and_opens_only_with_its_pin(office, monkeypatch):
    party = {"name": "王秀英 Wang Xiuying", "phone": "13812345678", "address": "米市巷12号"}
    grievance = "楼上漏水三个月 water through the ceiling for three months"
    chen = office.device("chen", "supervisor")
    wang = office.device("wang", "mediator")
    chen.edit("party", "p-wang", set=party)
    chen.edit(
        "case",
        "k-leak",
        set={"title": "Leak", "status": "assigned", "summary": grievance, "location": XIANGMIHU},
        ops=[
            Add(field="parties", value="p-wang"),
            Add(field="mediators", value=wang.identity.user_id),
        ],
    )
    chen.sync()
    assert wang.sync().pulled.states == 2  # the case and its party, in wang's server layer
    # Offline: one batch assigned but never answered, one change still pending.
    wang.edit("party", "p-wang", set={"phone": "13998765432"})

    def no_signal(send, request):
        raise httpx.ConnectError("no signal", request=request)

    intercept(office.http, monkeypatch, no_signal)
    with pytest.raises(httpx.ConnectError):
        wang.push()
    wang.edit("party", "p-wang", set={"address": "Apartment 3, 12 Mishixiang Lane"})
    assert states(wang) == [("sent", None), ("pending", None)]
    # The identity says who holds the phone: it is sealed too.
    personal = [
        *party.values(),
        grievance,
        "13998765432",
        "12 Mishixiang Lane",
        wang.identity.user_id,
    ]

    shown = (wang.record("party", "p-wang"), wang.record("case", "k-leak"), wang.outbox())
    path = wang._store.path
    assert [text for text in personal if text.encode() in on_disk(path)] == []
    wang.close()
    assert [text for text in personal if text.encode() in on_disk(path)] == []

    closed = on_disk(path)
    with pytest.raises(Unreadable, match="wrong passphrase"):
        office.open("wang", passphrase="135790")
    assert on_disk(path) == closed
    reopened = office.open("wang")
    assert (
        reopened.record("party", "p-wang"),
        reopened.record("case", "k-leak"),
        reopened.outbox(),
    ) == shown
    assert shown[0].phone == "13998765432" and shown[1].summary == grievance
    monkeypatch.undo()
    assert [r.status for r in reopened.push()] == ["applied", "applied"]

    with pytest.raises(Unreadable, match="wrong passphrase"):
        reopened.change_passphrase("135790", "8642 新的")
    reopened.change_passphrase(PIN, "8642 新的")
    reopened.close()
    with pytest.raises(Unreadable, match="wrong passphrase"):
        office.open("wang")
    assert office.open("wang", passphrase="8642 新的").record("party", "p-wang") == shown[0]


# -- server behaviour found while writing the client -----------------------------------


def test_a_supervisor_added_later_receives_the_existing_cases_of_the_district(office):
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new", "location": XIANGMIHU})
    wang.sync()
    chen = office.device("chen", "supervisor", (FUTIAN,))
    chen.sync()
    assert chen.record("case", "k-1") == wang.record("case", "k-1")


def test_a_device_shows_the_winner_the_server_chose_over_a_clamped_stamp(office):
    chen = office.device("chen", "supervisor")
    ahead = office.device("ahead", "mediator", wall_ms=lambda: office.wall() + 3 * DAY_MS)
    sun = office.device("sun", "mediator")
    chen.edit(
        "case",
        "k-1",
        set={"title": "Drains", "status": "assigned", "location": XIANGMIHU},
        ops=[Add(field="mediators", value=m.identity.user_id) for m in (ahead, sun)],
    )
    chen.sync()
    ahead.sync()
    sun.sync()
    # A phone three days ahead writes; the server clamps its stamp to now + 24 h.
    ahead.edit("case", "k-1", set={"title": "From the future"})
    assert ahead.push()[0].clamped
    # Two days later, without having seen it, another mediator writes the same field:
    # the server ranks this write above the clamped one.
    office.wall.tick(2 * DAY_MS)
    sun.edit("case", "k-1", set={"title": "Drains overflow"})
    (answer,) = sun.push()
    assert answer.conflicts[0].winner == "Drains overflow"
    sun.pull()
    assert sun.conflicts("case", "k-1")[0].winner == "Drains overflow"


def test_devices_move_to_a_rotated_office_key_by_pull_or_when_the_old_one_is_retired(office):
    pulls = office.device("chen", "supervisor")
    offline = office.device("sun", "mediator")
    old_key_id = office.keys.kem_key_id
    office.keys.rotate(master=False, kem=True, now_ms=office.wall())
    # The old key still opens while it overlaps: a device that has not heard pushes as before.
    offline.edit("case", "k-1", set={"title": "Drains", "status": "new", "location": XIANGMIHU})
    assert offline.identity.office.kem_key_id == old_key_id
    assert [r.status for r in offline.push()] == ["applied"]
    # A pull tells the device the new key, and it seals to it from then on.
    pulls.pull()
    assert pulls.identity.office.kem_key_id == office.keys.kem_key_id != old_key_id
    # Once the old key is retired, a device still sealing to it learns the new one and retries.
    office.keys.retire(old_key_id)
    offline.edit("case", "k-1", set={"priority": "high"})
    assert [r.status for r in offline.push()] == ["applied"]
    assert offline.identity.office.kem_key_id == office.keys.kem_key_id


def test_a_batch_stored_by_a_version_1_client_is_still_sent_after_the_upgrade(office):
    # Before push v2, a device file kept each open batch as its whole signed v1 request.
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    with wang._store.transaction():
        ((change_id, raw),) = wang._store.unbatched(10)
        v1 = PushRequest(batch_id="b-old", changes=[raw], signature=bytes(64))
        wang._store.add_batch("b-old", [change_id], msgspec.msgpack.encode(v1))

    pushed, _ = wang.sync()

    assert [r.status for r in pushed] == ["applied"]
    assert states(wang) == [("applied", None)]
    assert wang.record("case", "k-1").title == "Drains"


def a_case_with_a_party(device: DeviceClient) -> None:
    """Case k-he linking party p-he (a name and a phone), made and synced by `device`."""
    device.edit("party", "p-he", {"name": "He Jianguo", "phone": "+86 138 0000 1234"})
    device.edit(
        "case",
        "k-he",
        {"title": "Water leak", "location": XIANGMIHU},
        [Add(field="parties", value="p-he")],
    )
    device.sync()


def erased(office: Office) -> None:
    """Case k-he lawfully erased at the office."""
    erase_case(office.store, "k-he", "court order", "operator:wang", office.wall())


def test_an_erased_case_leaves_nothing_of_it_in_the_device_file(office):
    sun = office.device("sun", "mediator")
    a_case_with_a_party(sun)
    sun.edit("case", "k-he", {"summary": "He Jianguo's ceiling drips"})  # not yet pushed
    erased(office)

    assert sun.pull().evicted == 2
    assert sun.record("case", "k-he") is None and sun.record("party", "p-he") is None
    # Its own changes go too, pushed or not: the office keeps none of their content.
    assert sun.outbox() == []
    # And a new edit to it is refused at once, not dropped silently after its push.
    with pytest.raises(Rejected, match="erased"):
        sun.edit("case", "k-he", {"title": "Water leak again"})


def test_a_record_leaving_the_view_keeps_this_devices_changes_but_shows_none(office):
    chen = office.device("chen", "supervisor")
    sun = office.device("sun", "mediator")
    chen.edit("case", "k-1", {"title": "Drains", "location": XIANGMIHU})
    chen.edit("case", "k-1", ops=[Add(field="mediators", value=sun.identity.user_id)])
    chen.sync()
    sun.sync()
    sun.edit("case", "k-1", {"summary": "Met the households"})
    sun.sync()
    queued = sun.edit("case", "k-1", {"priority": "high"})
    chen.edit("case", "k-1", ops=[Remove(field="mediators", value=sun.identity.user_id)])
    chen.sync()

    assert sun.pull().evicted == 1
    assert sun.record("case", "k-1") is None
    # Kept: the answered one is sent again should a restored office have lost it; the
    # queued one is answered, and kept by the office for a person to judge.
    assert states(sun) == [("applied", None), ("pending", None)]
    sun.push()
    assert states(sun) == [("applied", None), ("rejected", "not_permitted")]
    assert sun.outbox()[1].change_id == queued.change_id


def sun_writes_offline(office: Office, case_id: str, text: str, *, pushed: bool = False):
    """Chen's case `case_id`, assigned to Sun and synced by both; Sun writes `text` in its
    summary (and pushes it if `pushed`); then Chen takes Sun off the case. (chen, sun)."""
    chen = office.device("chen", "supervisor")
    sun = office.device("sun", "mediator")
    chen.edit("case", case_id, {"title": "Drains", "location": XIANGMIHU})
    chen.edit("case", case_id, ops=[Add(field="mediators", value=sun.identity.user_id)])
    chen.sync()
    sun.sync()
    sun.edit("case", case_id, {"summary": text})
    if pushed:
        sun.sync()
    office.wall.tick()
    chen.edit("case", case_id, ops=[Remove(field="mediators", value=sun.identity.user_id)])
    chen.sync()
    return chen, sun


@pytest.mark.parametrize("pulled_from", ["history", "states"])
def test_an_edit_not_yet_sent_shows_again_when_its_record_comes_back_into_view(office, pulled_from):
    chen, sun = sun_writes_offline(office, "k-1", "Met the households")
    sun.pull()  # the eviction; then no signal for the push
    assert sun.record("case", "k-1") is None
    office.wall.tick()
    chen.edit("case", "k-1", ops=[Add(field="mediators", value=sun.identity.user_id)])
    chen.sync()
    if pulled_from == "states":
        refused_cursor(sun)  # the record comes back as a state the office holds

    sun.pull()  # and again no signal for the push after

    assert sun.record("case", "k-1").summary == "Met the households"
    assert states(sun) == [("pending", None)]


def an_agreement_for(sun: DeviceClient, chen: DeviceClient, signers: list[str]) -> None:
    """Chen's agreement a-1 on case k-1, which Sun mediates; both synced."""
    chen.edit(
        "case",
        "k-1",
        {"title": "Grease", "location": XIANGMIHU},
        [Add(field="agreements", value="a-1")],
    )
    chen.edit("case", "k-1", ops=[Add(field="mediators", value=sun.identity.user_id)])
    chen.edit("agreement", "a-1", {"case": "k-1", "terms": "A trap.", "required_signers": signers})
    chen.sync()
    sun.sync()


def test_a_device_checks_the_office_receipt_of_an_executed_agreement(office):
    chen = office.device("chen", "supervisor")
    sun = office.device("sun", "mediator")
    signers = ["p-1", "p-2"]
    an_agreement_for(sun, chen, signers)
    assert sun.receipt_problems("a-1") == ["no office receipt: the agreement was not executed"]
    for signer in signers:
        sun.sign_agreement("a-1", signer, handwriting=b"ink")
    sun.sync()
    assert sun.record("agreement", "a-1").status == "executed"
    assert sun.receipt_problems("a-1") == []
    assert sun.receipt_problems("a-99") == ["this device holds no agreement a-99"]
    # What the check catches in a copy: other signatures, other terms, another office's key.
    executed, office_info = sun.record("agreement", "a-1"), sun.identity.office
    fewer = msgspec.structs.replace(executed, signatures=executed.signatures[:1])
    reworded = msgspec.structs.replace(executed, terms="No trap.")
    key = (office_info.office_id, office_info.signing_key)
    assert receipt_problems("a-1", fewer, *key) == ["the receipt seals another set of signatures"]
    assert receipt_problems("a-1", reworded, *key) == [
        "the receipt is for other content than the agreement's"
    ]
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert len(receipt_problems("a-1", executed, office_info.office_id, stranger)) == 1


def test_a_phone_whose_clock_is_days_slow_dates_signatures_by_the_offices_time(office):
    chen = office.device("chen", "supervisor")
    sun = office.device("sun", "mediator", wall_ms=lambda: office.wall() - 3 * DAY_MS)
    an_agreement_for(sun, chen, ["p-1"])  # sun learns how far off its clock is
    sun.sign_agreement("a-1", "p-1", handwriting=b"ink")
    sun.sync()
    (signature,) = sun.record("agreement", "a-1").signatures
    assert abs(signature.signed_at.timestamp() * 1000 - office.wall()) < 60_000


def test_an_erased_record_leaves_no_bytes_in_the_write_ahead_log(office):
    sun = office.device("sun", "mediator")
    a_case_with_a_party(sun)
    sealed = [state for (state,) in sun._store._db.execute("SELECT state FROM records")]
    erased(office)
    assert sun.pull().evicted == 2
    # A thief copies the files while the app runs: no sealed state of the records is left.
    disk = on_disk(sun._store.path)
    assert [state for state in sealed if state in disk] == []


def test_a_fold_of_the_log_held_up_by_another_reader_is_done_at_the_next_pull(office):
    sun = office.device("sun", "mediator")
    sun.edit("case", "k-he", {"title": "Water leak", "location": XIANGMIHU})
    sun.sync()
    sealed = [state for (state,) in sun._store._db.execute("SELECT state FROM records")]
    erased(office)
    other = sqlite3.connect(sun._store.path)  # a second process reading the same file
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM records").fetchone()
    sun.pull()
    assert sun._store.fold_due
    other.close()
    sun.pull()
    assert not sun._store.fold_due
    disk = on_disk(sun._store.path)
    assert [state for state in sealed if state in disk] == []


def test_a_change_in_flight_when_its_record_is_erased_goes_with_the_answer(office, monkeypatch):
    sun = office.device("sun", "mediator")
    sun.edit("case", "k-he", {"title": "Water leak", "location": XIANGMIHU})
    sun.sync()
    sun.edit("case", "k-he", {"summary": "He Jianguo's ceiling drips"})

    def no_signal(send, request):
        raise httpx.ConnectError("no signal", request=request)

    intercept(office.http, monkeypatch, no_signal)
    with pytest.raises(httpx.ConnectError):
        sun.push()  # the batch is made and stored, its answer never comes
    monkeypatch.undo()
    erased(office)
    sun.pull()
    assert states(sun) == [("sent", None)]
    kept = [
        *sealed_outbox(sun),
        *(body for (body,) in sun._store._db.execute("SELECT body FROM batches")),
    ]
    assert [(r.status, r.reason) for r in sun.push()] == [("rejected", "record_erased")]
    assert sun.outbox() == []
    assert not any(raw in on_disk(sun._store.path) for raw in kept)


def refused_cursor(device: DeviceClient) -> None:
    """The office was restored: the cursor `device` holds no longer opens there."""
    version, position, seq, _ = str(device._store.meta("cursor")).split(".")
    device._store.set_meta("cursor", f"{version}.{position}.{seq}.{'0' * 32}")


def test_a_case_erased_while_the_office_was_restored_does_not_come_back(office):
    sun = office.device("sun", "mediator")
    sun.edit("case", "k-he", {"title": "Water leak", "location": XIANGMIHU})
    sun.edit("case", "k-he", {"summary": "He Jianguo's ceiling drips"})
    sun.sync()
    erased(office)  # while sun is offline; the pull from "states" replays no eviction
    refused_cursor(sun)
    pushed, _ = sun.sync()
    # Sent again, as after any restore: answered as for any change to an erased record.
    assert [(r.status, r.reason) for r in pushed] == [("rejected", "record_erased")] * 2
    assert sun.record("case", "k-he") is None
    assert sun.outbox() == [] and sun._store.is_erased(("case", "k-he"))
    disk = on_disk(sun._store.path)
    assert b"He Jianguo" not in disk  # the outbox is sealed; and no sealed copy is left
    assert not any(raw in disk for raw in sealed_outbox(sun))


def sealed_outbox(device: DeviceClient) -> list[bytes]:
    return [raw for (raw,) in device._store._db.execute("SELECT raw FROM outbox")]


def test_a_case_that_left_the_view_while_the_office_was_restored_does_not_come_back(office):
    _, sun = sun_writes_offline(office, "k-1", "Met the households", pushed=True)
    refused_cursor(sun)
    pushed, _ = sun.sync()
    assert [r.status for r in pushed] == ["duplicate"]  # the office had not lost it
    # No copy built from sun's own change alone, then or ever.
    assert sun.record("case", "k-1") is None
    sun.sync()
    assert sun.record("case", "k-1") is None


def test_a_change_to_a_case_erased_out_of_sight_is_dropped_on_its_answer(office):
    _, sun = sun_writes_offline(office, "k-he", "He Jianguo's ceiling drips")
    erased(office)  # sun no longer sees it: no `erased` eviction reaches sun
    kept = sealed_outbox(sun)
    pushed, _ = sun.sync()
    assert [(r.status, r.reason) for r in pushed] == [("rejected", "record_erased")]
    assert sun.outbox() == [] and sun._store.is_erased(("case", "k-he"))
    assert not any(raw in on_disk(sun._store.path) for raw in kept)
    with pytest.raises(Rejected, match="erased"):
        sun.edit("case", "k-he", {"title": "Water leak again"})


def test_a_change_over_1_mib_is_refused_before_it_is_queued(office):
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", {"title": "Minutes", "location": XIANGMIHU})
    note = {"entry_id": "n-1", "at": "2026-01-01T00:00:00Z", "by": "u", "text": "字" * 400_000}
    with pytest.raises(Rejected, match="over 1048576"):
        wang.edit("case", "k-1", ops=[Append(field="notes", entry=note)])
    assert len(wang.outbox()) == 1


def test_an_informant_device_keeps_its_pseudonym_and_its_file_is_private(office):
    li = office.device("li", "informant")
    pseudonym = li.identity.pseudonym
    assert pseudonym.startswith("informant-") or len(pseudonym) > 4
    li.close()
    assert office.open("li").identity.pseudonym == pseudonym  # after a restart too
    assert li._store.path.stat().st_mode & 0o777 == 0o600


def back_up(tmp_path: Path) -> Path:
    """A copy of the office's store and data keys, as a backup holds them."""
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("server.db", "server.db.keys"):
        live, copy = sqlite3.connect(tmp_path / name), sqlite3.connect(backup / name)
        with closing(live), closing(copy):
            live.backup(copy)
    return backup


@contextmanager
def restored(office: Office, backup: Path, *devices: DeviceClient) -> Iterator[SqliteStore]:
    """The office as restored from `backup`, serving `devices` meanwhile."""
    store = make_store(backup / "server.db", office.keys)
    app = create_app(Settings(data_dir=backup), store=store, keys=office.keys, wall_ms=office.wall)
    try:
        with TestClient(app) as http:
            for device in devices:
                device._http = http
            yield store
    finally:
        for device in devices:
            device._http = office.http
        store.close()


def test_a_change_the_restored_office_lost_is_sent_again_before_a_newer_one(office, tmp_path):
    wang = office.device("wang", "mediator")
    sun = office.device("sun", "mediator")
    wang.edit("case", "k-1", {"title": "Drains", "location": XIANGMIHU})
    wang.sync()
    backup = back_up(tmp_path)
    lost = wang.edit("case", "k-1", {"summary": "The neighbour agreed to pay 500"})
    wang.sync()  # applied, then lost by the restore below
    with restored(office, backup, wang, sun):
        sun.edit("case", "k-2", {"title": "Noise", "location": XIANGMIHU})
        sun.sync()  # takes the lost change's place in the log
        office.wall.tick()
        newer = wang.edit("case", "k-1", {"priority": "high"})
        wang.sync()
        answers = {e.change_id: (e.state, e.reason) for e in wang.outbox()}
        assert answers[lost.change_id] == answers[newer.change_id] == ("applied", None)
        assert wang.record("case", "k-1").summary == "The neighbour agreed to pay 500"


def pulls_watched(office: Office, monkeypatch: pytest.MonkeyPatch) -> list[list[Pushed]]:
    """What each version 2 pull from now on names as `pushed`."""
    keys = {office.keys.kem_key_id: office.keys.kem}
    named: list[list[Pushed]] = []

    def watched(send: Callable[[], httpx.Response], request: httpx.Request):
        if request.url.path == "/v2/sync/pull":
            _, plaintext = open_v2("pull", request.content, keys)
            named.append(msgspec.msgpack.decode(plaintext, type=SignedPull).pushed)
        return send()

    intercept(office.http, monkeypatch, watched)
    return named


def test_a_batch_goes_after_a_pull_named_the_one_before(office, monkeypatch):
    wang = office.device("wang", "mediator", batch_size=2)
    named = pulls_watched(office, monkeypatch)
    made = [
        wang.edit("case", f"k-{n}", {"title": "Drains", "location": XIANGMIHU}) for n in range(3)
    ]
    answers = wang.push()
    wang.pull()
    wang.pull()

    assert [a.change_id for a in answers] == [c.change_id for c in made]
    # Each batch's newest change, named by the next pull; none once a pull passed them.
    newest = [[Pushed(answers[n].seq or 0, made[n].change_id)] for n in (1, 2)]
    assert named == [*newest, []]


def test_a_sync_reports_what_the_pulls_between_its_batches_applied(office):
    wang = office.device("wang", "mediator", batch_size=1)
    for n in range(2):
        wang.edit("case", f"k-{n}", {"title": "Drains", "location": XIANGMIHU})

    report = wang.sync()

    # Each of its own changes came back: the first by the pull between the two batches.
    assert (len(report.pushed), report.pulled.applied) == (2, 2)


def test_an_office_that_checks_none_is_named_the_newest_batches_a_pull_may_name(
    office, monkeypatch
):
    monkeypatch.setattr("sync.client.MAX_PUSHED", 2)
    real_pull_once = DeviceClient._pull_once

    def older_office(self: DeviceClient, request: Any, pushed: list[Pushed]) -> PullPage:
        if pushed:
            raise MalformedRequest("Expected `array` of length 6")
        return real_pull_once(self, request, pushed)

    wang = office.device("wang", "mediator", batch_size=1)
    answers: list[ChangeResult] = []
    with monkeypatch.context() as older:
        older.setattr(DeviceClient, "_pull_once", older_office)
        seen = intercept(office.http, older, lambda send, request: send())
        for n in range(4):
            wang.edit("case", f"k-{n}", {"title": "Drains", "location": XIANGMIHU})
            answers += wang.push()
    wang.close()
    named = pulls_watched(office, monkeypatch)
    office.open("wang").pull()  # started again, against the office upgraded meanwhile

    # One pull found that office checks none; from then on the batches went unpulled.
    assert [r.url.path.rsplit("/", 1)[1] for r in seen] == ["push", "pull"] + ["push"] * 3
    assert named == [[Pushed(a.seq or 0, a.change_id) for a in answers[-2:]]]


def test_a_batch_waits_while_the_pull_that_would_name_the_one_before_fails(office, monkeypatch):
    wang = office.device("wang", "mediator", batch_size=1)

    def no_pulls(send: Callable[[], httpx.Response], request: httpx.Request):
        if request.url.path == "/v2/sync/pull":
            raise httpx.ConnectError("no signal", request=request)
        return send()

    seen = intercept(office.http, monkeypatch, no_pulls)
    for n in range(3):
        wang.edit("case", f"k-{n}", {"title": "Drains", "location": XIANGMIHU})
    with pytest.raises(httpx.ConnectError):
        wang.push()
    monkeypatch.undo()

    assert [r.url.path.rsplit("/", 1)[1] for r in seen] == ["push", "pull"]
    assert [e.state for e in wang.outbox()] == ["applied", "pending", "pending"]
    assert [a.status for a in wang.sync().pushed] == ["applied", "applied"]


def test_a_restore_between_two_batches_of_one_push_is_found_before_the_second_goes(
    office, tmp_path, monkeypatch
):
    wang = office.device("wang", "mediator", batch_size=1)
    wang.edit("case", "k-1", {"title": "Drains", "location": XIANGMIHU})
    wang.sync()
    backup = back_up(tmp_path)
    lost = wang.edit("case", "k-1", {"summary": "The neighbour agreed to pay 500"})
    office.wall.tick()
    newer = wang.edit("case", "k-1", {"priority": "high"})
    with restored(office, backup, wang):
        restored_http, wang._http = wang._http, office.http

        def restored_after_the_first_batch(send: Callable[[], httpx.Response], request: Any):
            response = send()
            wang._http = restored_http
            return response

        intercept(office.http, monkeypatch, restored_after_the_first_batch)
        wang.push()
        wang.sync()

    # Not `stale_stamp`: the lost change reached the restored office before the newer one.
    answers = {e.change_id: (e.state, e.reason) for e in wang.outbox()}
    assert answers[lost.change_id] == answers[newer.change_id] == ("applied", None)


@pytest.mark.parametrize("pushed_since", [False, True], ids=["pulled-next", "pushed-first"])
def test_a_change_the_restore_lost_before_its_device_pulled_past_it_is_sent_again(
    office, tmp_path, pushed_since
):
    wang = office.device("wang", "mediator")
    sun = office.device("sun", "mediator")
    chen = office.device("chen", "supervisor")
    wang.edit("case", "k-1", {"title": "Drains", "location": XIANGMIHU})
    wang.sync()
    backup = back_up(tmp_path)
    lost = wang.edit("case", "k-1", {"summary": "The neighbour agreed to pay 500"})
    wang.push()  # applied, and no pull of this device has passed it; then the restore
    with restored(office, backup, wang, sun, chen) as store:
        for n in range(3):
            sun.edit("case", f"s-{n}", {"title": "Noise", "location": XIANGMIHU})
        sun.sync()  # the restored log runs past the lost change's seq
        if pushed_since:
            # Its next batch is logged in the restored office, the lost one is not: only
            # the two named together tell.
            wang.edit("case", "k-9", {"title": "Leaking roof", "location": XIANGMIHU})
            wang.push()
        wang.sync()
        chen.sync()

        assert chen.record("case", "k-1").summary == "The neighbour agreed to pay 500"
        assert store.results([lost.change_id])[lost.change_id].result.status == "applied"
    assert {e.change_id: e.state for e in wang.outbox()}[lost.change_id] == "applied"
    assert wang.record("case", "k-1").summary == "The neighbour agreed to pay 500"


def test_a_change_whose_id_another_device_took_is_refused_once_and_nothing_loops(
    office, monkeypatch
):
    wang = office.device("wang", "mediator")
    chen = office.device("chen", "supervisor")
    mine = wang.edit("case", "k-1", {"title": "Drains", "location": XIANGMIHU})
    chen._new_id = lambda: mine.change_id  # a device that reuses an id it learned
    chen.edit("case", "k-2", {"title": "Noise", "location": XIANGMIHU})
    chen.push()
    seen = intercept(office.http, monkeypatch, lambda send, request: send())

    (answer,) = wang.sync().pushed
    wang.sync()

    assert (answer.status, answer.reason) == ("rejected", "change_id_taken")
    # Pull, push and pull again, then one pull: no pull from the start, nothing sent again.
    assert [r.url.path.rsplit("/", 1)[1] for r in seen] == ["pull", "push", "pull", "pull"]


def test_a_restored_office_gets_a_lost_change_before_a_batch_that_was_never_answered(
    office, tmp_path, monkeypatch
):
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", {"title": "Drains", "location": XIANGMIHU})
    wang.sync()
    backup = back_up(tmp_path)
    lost = wang.edit("case", "k-1", {"summary": "The neighbour agreed to pay 500"})
    wang.sync()  # applied, then lost by the restore below
    newer = wang.edit("case", "k-1", {"priority": "high"})

    def office_down(send, request):
        raise httpx.ConnectError("the office is down", request=request)

    intercept(office.http, monkeypatch, office_down)
    with pytest.raises(httpx.ConnectError):
        wang.push()  # its batch is stored, and never answered
    monkeypatch.undo()
    with restored(office, backup, wang):
        wang.sync()
    answers = {e.change_id: (e.state, e.reason) for e in wang.outbox()}
    assert answers[lost.change_id] == answers[newer.change_id] == ("applied", None)


def as_older_merge_left_it(device: DeviceClient, keys: list[tuple[str, str]]) -> None:
    """`device`'s file as a version before replica migration 0003 left it: schema
    version 2, states without the edit counts the merge keeps now."""
    states = device._store.states(keys)
    with device._store.transaction():
        device._store.put_states(msgspec.structs.replace(states[k], edits=None) for k in keys)
        device._store.set_meta("rebuild_server_layer", None)
    device._store._db.execute("DROP TABLE staged")
    device._store._db.execute("ALTER TABLE outbox DROP COLUMN resent")  # 0004
    device._store._db.execute("PRAGMA user_version = 2")
    device.close()


def test_a_file_from_an_older_merge_keeps_its_view_offline_and_is_pulled_again_online(office):
    # Replica migration 0003: states merged by an older version are replaced by the
    # office's log merged from nothing, once the office answers, never before.
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "location": XIANGMIHU})
    wang.sync()
    key = ("case", "k-1")
    as_older_merge_left_it(wang, [key])

    reopened = office.open("wang")
    assert reopened._store.states([key])[key].edits is None
    assert reopened.record(*key).title == "Drains"  # offline, the view stays

    report = reopened.pull()

    assert (report.states, report.skipped) == (1, 0)
    assert reopened._store.states([key])[key].edits is not None
    assert reopened.record(*key).title == "Drains"
    assert states(reopened) == [("applied", None)]  # nothing sent again
    assert reopened.pull().applied == 0  # once


def test_a_rebuild_cut_off_between_pages_shows_every_record_and_resumes(office, monkeypatch):
    wang = office.device("wang", "mediator")
    keys = [("case", f"k-{n}") for n in range(3)]
    for _, case_id in keys:
        wang.edit("case", case_id, set={"title": f"Title {case_id}", "location": XIANGMIHU})
    wang.sync()
    li = office.device("li", "supervisor")
    li.pull()
    li.edit("case", "k-1", set={"priority": "high"})
    li.sync()
    as_older_merge_left_it(wang, keys)

    reopened = office.open("wang", pull_limit=1)
    reopened.edit("case", "k-2", set={"summary": "offline note"})
    pulls = 0

    def second_pull_lost(send: Callable[[], httpx.Response], request: httpx.Request):
        nonlocal pulls
        pulls += "pull" in request.url.path
        if pulls == 2:
            raise httpx.ConnectTimeout("the signal went", request=request)
        return send()

    intercept(reopened._http, monkeypatch, second_pull_lost)
    with pytest.raises(httpx.ConnectTimeout):
        reopened.pull()

    # One page in: nothing changed yet; every case shows what it had.
    shown = [reopened.record(*key) for key in keys]
    assert [r.title for r in shown] == ["Title k-0", "Title k-1", "Title k-2"]
    assert reopened.record("case", "k-1").priority == "normal"  # li's edit not pulled yet
    assert reopened.record("case", "k-2").summary == "offline note"
    assert all(s.edits is None for s in reopened._store.states(keys).values())

    reopened.pull()  # the rest, from where it stopped

    assert [reopened.record(*key).title for key in keys] == [f"Title k-{n}" for n in range(3)]
    assert reopened.record("case", "k-1").priority == "high"
    assert all(s.edits is not None for s in reopened._store.states(keys).values())
    assert reopened.record("case", "k-2").summary == "offline note"  # still unsent
    assert reopened._store.meta("rebuild_server_layer") is None
    assert list(reopened._store.staged()) == []


def test_a_first_pull_gets_each_record_as_the_office_holds_it_while_records_change(
    office, monkeypatch
):
    wang = office.device("wang", "mediator")
    sun = office.device("sun", "mediator")
    chen = office.device("chen", "supervisor", pull_limit=1)
    both = Add(field="mediators", value=sun.identity.user_id)
    for n in range(3):
        place = {"title": f"Case {n}", "status": "new", "location": XIANGMIHU}
        wang.edit("case", f"k-{n}", set=place, ops=[both])
    wang.sync()
    sun.sync()
    wang.edit("case", "k-0", set={"summary": "Wang's account"})
    sun.edit("case", "k-0", set={"summary": "Sun's account"})
    wang.sync()
    sun.sync()  # k-0's summary is in conflict; both mediators' phones show it

    edited: list[bool] = []

    def edit_after_the_first_page(send: Callable[[], httpx.Response], request: httpx.Request):
        answer = send()
        if not edited:  # chen holds k-0; k-1 and k-2 are still to come
            edited.append(True)
            office.wall.tick()
            for n in (0, 2):
                wang.edit("case", f"k-{n}", set={"title": f"Case {n}, again"})
            wang.push()
        return answer

    intercept(office.http, monkeypatch, edit_after_the_first_page)
    report = chen.pull()

    # k-2's state was read after its edit, which then came again as a change: skipped.
    assert (report.states, report.applied, report.skipped) == (3, 1, 1)
    keys = [("case", f"k-{n}") for n in range(3)]
    assert chen._store.states(keys) == office.store.states(keys) == office.store.replayed(keys)
    assert [chen.record(*key).title for key in keys] == ["Case 0, again", "Case 1", "Case 2, again"]
    assert [c.field for c in chen.conflicts("case", "k-0")] == ["summary"]
    assert chen.conflicts("case", "k-0") == sun.conflicts("case", "k-0")


def test_own_changes_that_a_first_pulls_states_hold_show_from_them_not_on_top(office):
    wang = office.device("wang", "mediator")
    note = {"entry_id": "n-1", "at": "2026-11-27T10:00:00+08:00", "text": "Visited at 10:00"}
    note["by"] = wang.identity.user_id
    wang.edit("case", "k-1", set={"title": "Drains"}, ops=[Append(field="notes", entry=note)])
    wang.push()  # never pulled: the office holds the case, the device only its own change
    wang.edit("case", "k-1", set={"priority": "high"})  # not yet sent
    assert len(wang._store.overlaying()) == 2

    assert wang.pull().states == 1

    ((_, unsent),) = wang._store.overlaying()  # the one the office does not hold
    assert decode_change(unsent).set == {"priority": "high"}
    shown = wang.record("case", "k-1")
    assert (shown.title, shown.priority, len(shown.notes)) == ("Drains", "high", 1)


def test_an_office_that_refuses_the_states_cursor_is_pulled_from_no_cursor(office, monkeypatch):
    # An office from before the cursor "states" answers it bad_cursor, and one from before
    # `pushed` finds a pull naming one malformed (PROTOCOL.md section 12).
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "status": "new"})
    wang.push()
    keys = {office.keys.kem_key_id: office.keys.kem}
    pulls: list[tuple[str | None, bool]] = []

    def as_an_older_office(send: Callable[[], httpx.Response], request: httpx.Request):
        if request.url.path == "/v2/sync/pull":
            _, plaintext = open_v2("pull", request.content, keys)
            pull = msgspec.msgpack.decode(plaintext, type=SignedPull)
            pulls.append((pull.cursor, bool(pull.pushed)))
            if pull.pushed:
                refusal = {"error": "malformed", "detail": "Expected `array` of length 6"}
                return httpx.Response(400, json=refusal, request=request)
            if pull.cursor == "states":
                refusal = {"error": "bad_cursor", "detail": "not a cursor this server issued"}
                return httpx.Response(400, json=refusal, request=request)
        return send()

    intercept(office.http, monkeypatch, as_an_older_office)
    report = wang.pull()

    assert pulls == [("states", True), ("states", False), (None, False)]
    assert (report.applied, report.states) == (1, 0)
    assert wang.record("case", "k-1").title == "Drains"


def test_the_next_page_is_asked_for_while_one_is_applied_and_its_refusal_handled(
    office, monkeypatch
):
    wang = office.device("wang", "mediator")
    chen = office.device("chen", "supervisor", pull_limit=1)
    for n in range(3):
        wang.edit("case", f"k-{n}", set={"title": f"Case {n}", "location": XIANGMIHU})
    wang.sync()

    def second_pull_stale(send: Callable[[], httpx.Response], request: httpx.Request):
        if [r.url.path for r in sent].count("/v2/sync/pull") == 2 and not refused:
            refused.append(request)  # as if signed by a clock the office finds too far off
            stale = {"error": "stale_request", "detail": "the timestamp is outside the window"}
            return httpx.Response(401, json=stale, request=request)
        return send()

    refused: list[httpx.Request] = []
    sent = intercept(office.http, monkeypatch, second_pull_stale)
    asked_when_applying = []
    apply_page = chen._apply_page

    def applying(page, staging=False):
        asked_when_applying.append(len(sent))
        return apply_page(page, staging)

    monkeypatch.setattr(chen, "_apply_page", applying)
    report = chen.pull()

    # Page 2 was on its way while page 1 was applied; refused, it was asked for again.
    assert asked_when_applying[0] == 2
    assert [r.url.path for r in sent][:4] == ["/v2/sync/pull"] * 2 + ["/v1/office", "/v2/sync/pull"]
    assert report.states == 3
    assert [chen.record("case", f"k-{n}").title for n in range(3)] == ["Case 0", "Case 1", "Case 2"]


def test_a_device_stamps_its_edits_after_the_states_its_first_pull_brought(office):
    wang = office.device("wang", "mediator")
    wang.edit("case", "k-1", set={"title": "Drains", "location": XIANGMIHU})
    wang.sync()
    hour_behind = office.device("chen", "supervisor", wall_ms=lambda: office.wall() - 3_600_000)
    assert hour_behind.pull().states == 1

    change = hour_behind.edit("case", "k-1", set={"priority": "high"})

    assert change.hlc > max(hour_behind._store.state(("case", "k-1")).vv.values())


def test_a_supervisor_moved_away_and_back_keeps_the_records_on_their_phone(office):
    # Review finding: both moves worked at one position of the log; the second granted
    # the records again but left the first's evictions, served after them.
    mediator = office.device("mediator", "mediator")
    chen = office.device("chen", "supervisor")
    mediator.edit("case", "k-1", {"title": "Noise", "location": XIANGMIHU})
    mediator.sync()
    chen.sync()
    chen_id = chen.identity.user_id
    assert office.directory.move(chen_id, ["Shenzhen/Nanshan"]) == [FUTIAN]  # a slip
    assert office.directory.move(chen_id, [FUTIAN]) == ["Shenzhen/Nanshan"]
    mediator.edit("case", "k-2", {"title": "Lift", "location": XIANGMIHU})
    mediator.edit("case", "k-1", {"summary": "visited"})
    mediator.sync()
    chen.sync()
    assert chen.record("case", "k-1").title == "Noise"
    assert chen.record("case", "k-1").summary == "visited"


NANSHAN = {"city": "Shenzhen", "district": "Nanshan", "street": "Yuehai"}


def test_a_case_leaving_the_units_of_a_supervisor_moved_away_and_back_is_evicted(office):
    # Review finding: moved back, Chen's row was granted again at the next position, as
    # if never served; the change logged there took the case out of Futian, and that
    # row went without an eviction. The phone kept the case, frozen, for ever.
    mediator = office.device("mediator", "mediator")
    chen = office.device("chen", "supervisor")
    mediator.edit("case", "k-1", {"title": "Noise", "location": XIANGMIHU})
    mediator.sync()
    chen.sync()
    office.directory.move(chen.identity.user_id, ["Shenzhen/Nanshan"])  # a slip...
    office.directory.move(chen.identity.user_id, [FUTIAN])  # ...put right at once
    mediator.edit("case", "k-1", {"location": NANSHAN})
    mediator.sync()
    chen.sync()
    assert chen.record("case", "k-1") is None


def test_a_record_a_supervisors_own_edit_takes_out_of_their_units_leaves_their_phone(office):
    # Review finding: granted by a move at the next position, then taken back by Chen's
    # own push logged there, the row went without an eviction ("never served"), and the
    # phone showed the case from its own edit for ever.
    mediator = office.device("mediator", "mediator")
    chen = office.device("chen", "supervisor", org_units=("Shenzhen/Luohu",))
    mediator.edit("case", "k-1", {"title": "Noise", "location": XIANGMIHU})
    mediator.sync()
    chen.sync()
    office.directory.move(chen.identity.user_id, [FUTIAN])
    office.wall.tick()
    chen.edit("case", "k-1", {"location": NANSHAN})  # the id read off the console, say
    chen.sync()
    mediator.edit("case", "k-1", {"summary": "later"})
    mediator.sync()
    chen.sync()
    assert chen.record("case", "k-1") is None
