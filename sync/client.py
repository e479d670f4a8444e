"""The reference device client: what a phone does, written from PROTOCOL.md.

    with DeviceClient("phone.db", httpx.Client(base_url=OFFICE_URL), passphrase=pin) as device:
        device.enroll("ABCD2345EFGH", label="Wang's phone")
        device.edit("case", "k-drains", set={"title": "Drains overflow", "status": "new"})
        device.sync()                       # push the outbox, then pull until done
        device.record("case", "k-drains")   # the server's record, own pending edits on top

Everything the device knows lives in one SQLite file (`sync.replica_store`):
its keys, what the server sent (the *server layer*), and its outbox. A local
read replays, on top of the server layer, the device's own changes that the
server has not sent back yet, in the order they were made, with the same
merge code the server runs (`sync.merge`); a change the server rejected no
longer shows.

The client is safe to kill at any point: an edit, a batch assignment, a
batch's answers and each pulled page commit in one local transaction each.
A batch is assigned and stored before it is sent, so after a lost answer the
retry resends the same change bytes under the same batch id (signed anew: the
signing time is part of a push's nonce), and the server answers `duplicate`.
The pull cursor is stored with the page it ends, so a pull resumes after the
last page applied.

Keys: the device makes its own Ed25519 signing key and X25519 key when its
file is created; the private halves never leave the file. The file is sealed
under the holder's passphrase (`sync.replica_store`): the keys, the identity,
the records and the outbox are encrypted in it.

Not thread-safe: one client per device file, used from one thread.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from schemas.changes import Append, Change, ChangeResult, Conflict, Op, Reason
from schemas.records import RECORD_TYPES, Agreement, Signature
from schemas.state import RecordState
from schemas.wire import (
    MAX_CHANGE_BYTES,
    MAX_PUSHED,
    STATES_CURSOR,
    Enrollment,
    EnrollRequest,
    ErrorBody,
    Eviction,
    OfficeInfo,
    PulledChange,
    PulledItem,
    PulledState,
    PullPage,
    PullRequest,
    Pushed,
    PushRequest,
    PushResponse,
    SignedPull,
    SignedPush,
)
from sync import agreements, envelope, merge, signing
from sync.access import location_refused
from sync.atrest import KdfParams
from sync.changes import decode_change, encode_change, newline_in_ids, newline_in_values
from sync.clock import Clock, system_wall_ms
from sync.envelope import Purpose
from sync.errors import (
    BadCursor,
    BadSignature,
    LianxinError,
    MalformedRequest,
    RateLimited,
    StaleRequest,
    WrongKey,
)
from sync.replica_store import OutboxEntry, RecordKey, ReplicaStore

T = TypeVar("T")

MSGPACK = "application/msgpack"
MAX_BATCH = 500  # changes per push; the server takes up to 1,000
# Bytes of changes per push: the server refuses a body over 8 MiB, and a batch it always
# refuses would jam the outbox, so batches stay at half that and a larger change is refused.
MAX_BATCH_BYTES = 4 * 1024 * 1024

_encode = msgspec.msgpack.Encoder().encode
_decode_batch = msgspec.msgpack.Decoder(list[bytes] | PushRequest).decode
_decode_items = msgspec.msgpack.Decoder(list[PulledItem]).decode
_decode_state = msgspec.msgpack.Decoder(RecordState).decode

# Meta keys in the device file.
SIGNING_KEY = "signing_key"
KEM_KEY = "kem_key"
IDENTITY = "identity"
CURSOR = "cursor"
# Set to "due" by a replica migration when the merge rules changed: the next pull the
# office answers starts from no cursor ("running"), keeps its pages aside, and at its
# last page replaces the server layer with them at once (`replica_store` 0003). Until
# then the device shows what it had, whenever the pull is cut off.
REBUILD = "rebuild_server_layer"
CLOCK_LAST = "clock_last"
SERVER_OFFSET = "server_offset_ms"
PUSH_SIGNED_MS = "push_signed_ms"
# "seq change_id seq change_id ...": the newest change of each batch the office accepted
# since a pull passed them (`Pushed`); each pull until then asks whether it still holds
# them there.
PUSHED = "pushed"


def _error_classes(root: type[LianxinError] = LianxinError) -> dict[str, type[LianxinError]]:
    found: dict[str, type[LianxinError]] = {}
    for kind in root.__subclasses__():
        found[kind.code] = kind
        found.update(_error_classes(kind))
    return found


# The server answers errors as `{"error": code, "detail"}`; callers catch our classes.
ERROR_CLASSES = _error_classes()


class NotEnrolled(RuntimeError):
    """The device must enrol before it can edit or sync."""


class AlreadyEnrolled(RuntimeError):
    """This device file is enrolled already; a new enrolment needs a new file."""


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """What enrolment taught the device: who it is and the office's public keys."""

    device_id: str
    user_id: str
    role: str
    org_units: list[str]
    office: OfficeInfo
    pseudonym: str = ""  # an informant's: the one value its warnings' `informant` may hold


class PullReport(NamedTuple):
    """What one `pull()` did: pages fetched, changes applied, records evicted, records
    received whole as the office holds them (a pull from nothing).

    `skipped` counts pulled changes not applied: those the device holds already
    (PROTOCOL.md section 12) and any the local merge refused, which would mean the
    device and the server disagree.
    """

    pages: int = 0
    applied: int = 0
    skipped: int = 0
    evicted: int = 0
    states: int = 0


def _added(first: PullReport, second: PullReport) -> PullReport:
    return PullReport(*map(sum, zip(first, second, strict=True)))


class SyncReport(NamedTuple):
    pushed: list[ChangeResult]
    pulled: PullReport


class DeviceClient:
    """One device: its SQLite replica and the sync protocol over an injected `httpx.Client`.

    `http` carries the office's base URL. `passphrase` opens the device file
    (`Unreadable` if wrong); `kdf` sets the scrypt cost of a new file.
    `wall_ms` is the device's wall clock in milliseconds (stamps and request
    times come from it). `new_id` makes change and batch ids; they must never
    repeat, also across restarts: the server answers a change id it knows
    `duplicate` (`change_id_taken` if another device's) and drops the change.
    `whole_states`: a pull from nothing asks for each record as the office holds
    it (the cursor "states"), not its history; a history is smaller for records
    made by one change each, over a slow link.
    """

    def __init__(
        self,
        path: str | Path,
        http: httpx.Client,
        *,
        passphrase: str,
        kdf: KdfParams | None = None,
        wall_ms: Callable[[], int] = system_wall_ms,
        new_id: Callable[[], str] = lambda: secrets.token_urlsafe(16),
        batch_size: int = MAX_BATCH,
        batch_bytes: int = MAX_BATCH_BYTES,
        pull_limit: int = 1000,
        whole_states: bool = True,
    ) -> None:
        self._store = ReplicaStore(path, passphrase, kdf=kdf)
        self._http = http
        self._wall_ms = wall_ms
        self._new_id = new_id
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._pull_limit = pull_limit
        self._whole_states = whole_states
        # False once the office refused a pull naming `pushed` (one from before it): pulls
        # name none from then on, and a push pulls between batches no more, in vain.
        self._office_checks_pushed = True
        self._signing_key, self._kem_key = self._load_or_make_keys()
        identity = self._store.sealed_meta(IDENTITY)
        self._identity = (
            msgspec.msgpack.decode(identity, type=Identity) if identity is not None else None
        )
        last = self._store.meta(CLOCK_LAST)
        # Resume the clock where it stopped, so a restart never reissues a stamp.
        self._clock = Clock(wall_ms, last=last if isinstance(last, int) else 0)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def change_passphrase(self, old: str, new: str) -> None:
        """Lock the device file under `new` from now on; `Unreadable` if `old` is wrong."""
        self._store.change_passphrase(old, new)

    def _load_or_make_keys(self) -> tuple[Ed25519PrivateKey, X25519PrivateKey]:
        with self._store.transaction():
            signing_raw = self._store.sealed_meta(SIGNING_KEY)
            kem_raw = self._store.sealed_meta(KEM_KEY)
            if signing_raw is None or kem_raw is None:
                signing_raw = Ed25519PrivateKey.generate().private_bytes_raw()
                kem_raw = X25519PrivateKey.generate().private_bytes_raw()
                self._store.set_sealed_meta(SIGNING_KEY, signing_raw)
                self._store.set_sealed_meta(KEM_KEY, kem_raw)
        return (
            Ed25519PrivateKey.from_private_bytes(signing_raw),
            X25519PrivateKey.from_private_bytes(kem_raw),
        )

    # -- identity -----------------------------------------------------------------------

    @property
    def signing_public_key(self) -> bytes:
        return self._signing_key.public_key().public_bytes_raw()

    @property
    def kem_public_key(self) -> bytes:
        return self._kem_key.public_key().public_bytes_raw()

    @property
    def identity(self) -> Identity | None:
        """Who this device is, or None before enrolment."""
        return self._identity

    def _enrolled(self) -> Identity:
        identity = self.identity
        if identity is None:
            raise NotEnrolled("enrol this device first")
        return identity

    def enroll(self, code: str, label: str = "") -> Enrollment:
        """Spend a one-time code on this device's keys (PROTOCOL.md section 9).

        Raises `EnrollmentRefused` for an unknown, used or expired code, and
        `AlreadyEnrolled` if this file is enrolled already.
        """
        if self.identity is not None:
            raise AlreadyEnrolled(f"this device is enrolled as {self.identity.device_id}")
        message = signing.enroll_message(code, self.signing_public_key, self.kem_public_key)
        request = EnrollRequest(
            code=code,
            signing_key=self.signing_public_key,
            kem_key=self.kem_public_key,
            label=label,
            proof=signing.sign(self._signing_key, message),
        )
        response = self._http.post(
            "/v1/enroll", content=_encode(request), headers={"Content-Type": MSGPACK}
        )
        enrollment = _answer(response, Enrollment)
        identity = Identity(
            device_id=enrollment.device_id,
            user_id=enrollment.user_id,
            role=enrollment.role,
            org_units=enrollment.org_units,
            office=enrollment.office,
            pseudonym=enrollment.pseudonym,
        )
        with self._store.transaction():
            self._store.set_sealed_meta(IDENTITY, _encode(identity))
            self._learn_offset(enrollment.office.server_time_ms)
        self._identity = identity
        return enrollment

    # -- local reads and edits ----------------------------------------------------------

    def _view(self, key: RecordKey) -> RecordState | None:
        """The server layer with this device's not yet pulled back changes replayed on top."""
        state = self._store.state(key)
        for raw in self._store.overlay(key):
            outcome = merge.apply_change(state, decode_change(raw))
            # A queued change the newer server layer refuses would be refused by the
            # server too: it shows nothing, and its answer will say why.
            if outcome.state is not None:
                state = outcome.state
        return state

    def record(self, record_type: str, record_id: str) -> msgspec.Struct | None:
        """The record as this device shows it, or None if it holds no such record."""
        state = self._view((record_type, record_id))
        return merge.materialize(state) if state is not None else None

    def conflicts(self, record_type: str, record_id: str) -> list[Conflict]:
        """The open conflicts of the record as this device shows it."""
        state = self._view((record_type, record_id))
        return merge.conflicts(state) if state is not None else []

    def receipt_problems(self, agreement_id: str) -> list[str]:
        """Why the office receipt of the agreement, as the office sent it, does not vouch
        for it (checked with the office key enrolment gave); empty when it does.

        Show an agreement as executed only when this is empty.
        """
        office = self._enrolled().office
        state = self._store.state(("agreement", agreement_id))
        agreement = merge.materialize(state) if state is not None else None
        if not isinstance(agreement, Agreement):
            return [f"this device holds no agreement {agreement_id}"]
        return agreements.receipt_problems(
            agreement_id, agreement, office.office_id, office.signing_key
        )

    def outbox(self) -> list[OutboxEntry]:
        """Every change this device made, oldest first, with its state and the server's answer."""
        return self._store.outbox()

    def edit(
        self,
        record_type: str,
        record_id: str,
        set: Mapping[str, Any] | None = None,
        ops: Iterable[Op] = (),
    ) -> Change:
        """Make a change to the local view and queue it as `pending`.

        The change has seen everything this device shows of the record. It is
        checked with the server's own merge rules against the local view, and
        the office's checks of what devices send, as the exact bytes that will
        be pushed: `sync.merge.Rejected` if it can
        never apply, or if it is too large for any batch (`invalid_value`).
        Write permission is the server's to judge (it may answer
        `not_permitted`). Raises `NotEnrolled` before enrolment.
        """
        device_id = self._enrolled().device_id
        if self._store.is_erased((record_type, record_id)):
            # The office would keep nothing of it: say so now, not after the push.
            raise merge.Rejected(Reason.RECORD_ERASED, f"the office erased {record_id}")
        view = self._view((record_type, record_id))
        seen = {d: s for d, s in view.vv.items() if d != device_id} if view else {}
        raw, change = _wire_form(
            Change(
                change_id=self._new_id(),
                record_type=record_type,
                record_id=record_id,
                device_id=device_id,
                hlc=self._clock.now(),
                seen=seen,
                set=dict(set or {}),
                ops=list(ops),
            )
        )
        limit = min(self._batch_bytes, MAX_CHANGE_BYTES)
        if len(raw) > limit:
            raise merge.Rejected(
                Reason.INVALID_VALUE, f"the change is {len(raw)} bytes, over {limit}"
            )
        outcome = merge.apply_change(view, change)
        if outcome.rejected is not None:
            raise outcome.rejected
        if refused := location_refused(change) or newline_in_values(change):
            raise merge.Rejected(*refused)
        with self._store.transaction():
            self._store.append(change, raw)
            self._store.set_meta(CLOCK_LAST, self._clock.last)
        return change

    def sign_agreement(
        self, agreement_id: str, signer: str, *, handwriting: bytes | None = None
    ) -> Change:
        """Sign the agreement as this device shows it, and queue the signature.

        Without `handwriting`, `signer` must be this device's own user (a party
        with the app). With it, the party signed by hand on this device: the
        signature attests it, naming this device's user as witness and the
        image's SHA-256 (PROTOCOL.md section 13).
        """
        identity = self._enrolled()
        agreement = self.record("agreement", agreement_id)
        if not isinstance(agreement, Agreement):
            raise merge.Rejected(
                Reason.UNKNOWN_FIELD, f"this device holds no agreement {agreement_id}"
            )
        unsigned = Signature(
            signer=signer,
            signed_at=agreements.moment(self._server_ms()),  # a slow phone dates it right
            content_hash=agreements.content_hash(agreement_id, agreement),
            signature=b"",
            witness=identity.user_id if handwriting is not None else None,
            handwriting_hash=hashlib.sha256(handwriting).hexdigest() if handwriting else None,
            device_id=identity.device_id,
        )
        message = agreements.signature_message(agreement_id, unsigned)
        signature = msgspec.structs.replace(
            unsigned, signature=signing.sign(self._signing_key, message)
        )
        entry = msgspec.to_builtins(signature, builtin_types=(bytes, datetime))
        return self.edit("agreement", agreement_id, ops=[Append(field="signatures", entry=entry)])

    # -- sync ---------------------------------------------------------------------------

    def sync(self) -> SyncReport:
        """Pull, push the outbox, and pull again what the push moved, until done.

        Pulling first learns at once that the office was restored from a backup
        (`bad_cursor`): the changes it may have lost go back in the queue ahead of
        newer ones, in the order they were made, and the office takes them in that
        order (a newer change of this device's first would make them `stale_stamp`).
        """
        pulled = self.pull()
        pushed, meanwhile = self._push()
        pulled = _added(pulled, meanwhile)
        if pushed:
            pulled = _added(pulled, self.pull())
        return SyncReport(pushed, pulled)

    def push(self) -> list[ChangeResult]:
        """Send every unanswered change, in order; return the server's answers.

        Batches whose answer was lost go first, as stored: the server refuses
        a change whose stamp is not after the device's last applied change to
        the record (`stale_stamp`), so a later batch must never overtake an
        earlier one. A transport error or an error answer leaves the batch
        stored for the next try and propagates (errors as `sync.errors`).
        Each answered batch's newest logged change is kept for the pulls to name
        (`pushed`), and while any are kept a pull names them before the next batch
        goes: one that an office restored since lost is found before a later batch
        overtakes it (an office from before `pushed` checks none: then no pulls).
        """
        return self._push()[0]

    def _push(self) -> tuple[list[ChangeResult], PullReport]:
        """`push()`, with what the pulls between its batches did."""
        results: list[ChangeResult] = []
        pulled = PullReport()
        named = False  # whether a pull named those kept since the last batch went
        while True:
            stored = self._store.open_batches()
            if not stored and not self._store.unbatched(1):
                return results, pulled
            if self._pushed() and self._office_checks_pushed and not named:
                # Pull (or raise trying). One that finds a restore queues the batches
                # anew: read them again.
                pulled = _added(pulled, self.pull())
                named = True
                continue
            if stored:
                batch_id, body = stored[0]
                batch = _decode_batch(body)  # a file from before push v2 holds v1 requests
                raws = batch.changes if isinstance(batch, PushRequest) else batch
            else:
                new = self._next_batch()
                assert new is not None  # changes are pending (above); a batch takes one at least
                batch_id, raws = new
            results += self._send_batch(batch_id, raws)
            named = False

    def _next_batch(self) -> tuple[str, list[bytes]] | None:
        """Assign up to `batch_size` pending changes to a new, stored batch."""
        with self._store.transaction():
            rows = _fit(self._store.unbatched(self._batch_size), self._batch_bytes)
            if not rows:
                return None
            batch_id = self._new_id()
            raws = [raw for _, raw in rows]
            self._store.add_batch(batch_id, [change_id for change_id, _ in rows], _encode(raws))
        return batch_id, raws

    def _send_batch(self, batch_id: str, raws: list[bytes]) -> list[ChangeResult]:
        answer = self._learning_office(functools.partial(self._push_once, batch_id, raws))
        sent = self._store.batch_change_ids(batch_id)
        if answer.batch_id != batch_id or [r.change_id for r in answer.results] != sent:
            raise LianxinError(f"the answer to batch {batch_id} does not match the batch")
        with self._store.transaction():
            erased = self._store.record_answers(batch_id, answer.results)
            logged = [(r.seq, r.change_id) for r in answer.results if r.seq is not None]
            if logged:
                # Each batch's own: the office that answered the next may be one restored
                # from a backup that lost this one.
                # An office from before `pushed` checks none: there the oldest go.
                held = [*self._pushed(), Pushed(*max(logged))][-MAX_PUSHED:]
                self._store.set_meta(PUSHED, " ".join(f"{p.seq} {p.change_id}" for p in held))
        if erased:
            self._store.checkpoint()  # the dropped bytes must not stay in the -wal either
        return answer.results

    def _pushed(self) -> list[Pushed]:
        value = self._store.meta(PUSHED)
        words = value.split(" ") if isinstance(value, str) else []
        return [Pushed(int(s), c) for s, c in zip(words[::2], words[1::2], strict=True)]

    def pull(self) -> PullReport:
        """Pull pages from the stored cursor until `has_more` is false.

        Each page is applied, and the cursor after it stored, in one local
        transaction: a pull killed anywhere resumes after the last whole page.
        A cursor the office refuses (it was restored from a backup, say) is
        dropped with the server layer it led to, and everything is pulled again:
        the device then holds what the office holds now, and nothing it lost.
        So is a pull naming changes this device pushed since a pull passed them
        (`pushed`) that the office no longer holds where it said it logged them.

        While a page is applied, the next one is already asked for, by a thread
        that only seals, sends and opens (it never touches the device file): the
        office reads it meanwhile, instead of waiting for the device.
        """
        self._enrolled()
        if self._store.fold_due:
            self._store.checkpoint()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lianxin-pull") as network:
            return self._pull_pages(network)

    def _pull_pages(self, network: ThreadPoolExecutor) -> PullReport:
        report = PullReport()
        # From nothing, the office sends each record as it holds it, not its history; an
        # office from before that refuses the cursor, and sends the history.
        from_nothing = STATES_CURSOR if self._whole_states else None
        ahead: tuple[str, Future[PullPage]] | None = None  # the next page, on its way
        while True:
            cursor = self._store.meta(CURSOR)
            rebuild = self._store.meta(REBUILD)
            request = PullRequest(
                cursor=cursor if isinstance(cursor, str) and rebuild != "due" else from_nothing,
                limit=self._pull_limit,
            )
            # An office from before `pushed` refuses a pull that names any: this pull goes
            # on without, and they stay, unchecked.
            pushed = self._pushed() if self._office_checks_pushed else []
            tries = [ahead[1]] if ahead and ahead[0] == request.cursor else []
            ahead = None
            try:
                page = self._learning_office(
                    functools.partial(self._pulled, request, pushed, tries)
                )
            except MalformedRequest:
                if not pushed:
                    raise
                self._office_checks_pushed = False
                continue
            except BadCursor:
                if not pushed and request.cursor is None:
                    raise
                if not pushed and request.cursor == STATES_CURSOR:
                    from_nothing = None
                    continue
                with self._store.transaction():
                    self._store.set_meta(CURSOR, None)
                    self._store.set_meta(PUSHED, None)  # their changes are sent again
                    self._store.forget_server_layer()
                    self._store.drop_staged()  # a rebuild under way starts again too
                continue
            if rebuild == "due":  # only once the office answers: offline, nothing changes
                with self._store.transaction():
                    self._store.drop_staged()
                    self._store.set_meta(CURSOR, None)
                    self._store.set_meta(REBUILD, rebuild := "running")
            if page.has_more:
                following = self._signed_pull(
                    PullRequest(cursor=page.cursor, limit=request.limit), pushed
                )
                ahead = (page.cursor, network.submit(self._send_v2, "pull", following, PullPage))
            done = self._apply_page(page, staging=rebuild == "running")
            if rebuild == "running" and not page.has_more:
                done = self._rebuild_from_staged()
            report = _added(report, done._replace(pages=1))
            if not page.has_more:
                if pushed:  # checked, and passed: the last page's cursor binds the log's end
                    with self._store.transaction():
                        self._store.set_meta(PUSHED, None)
                return report

    def _apply_page(self, page: PullPage, staging: bool = False) -> PullReport:
        """Apply one page to the server layer; returns what it did, pages left at 0.

        Items apply in order, on states read at once and written once per record at
        the end of the page (a fresh phone's first pull is mostly this). `staging`,
        the items are kept aside for `_rebuild_from_staged` instead.
        """
        fresh_key = self._fresh_office_key(page)  # checked before anything is applied
        if not fresh_key and self._nothing_new(page):
            return PullReport()
        counts = PullReport()
        with self._store.transaction(), _collector_paused():
            if staging:
                self._store.stage(_encode(page.items))
            else:
                counts = self._apply_items(page.items)
            self._store.set_meta(CURSOR, page.cursor)
            self._store.set_meta(CLOCK_LAST, self._clock.last)
            self._learn_offset(page.server_time_ms)
            if fresh_key:
                self._learn_office_key(page)
        if counts.evicted and any(
            isinstance(i, Eviction) and i.reason == "erased" for i in page.items
        ):
            self._store.checkpoint()  # an erased record's old bytes must not stay in the -wal
        return counts

    def _rebuild_from_staged(self) -> PullReport:
        """Replace the server layer with the staged pages of a whole pull, at once."""
        totals = PullReport()
        with self._store.transaction(), _collector_paused():
            self._store.drop_server_layer()
            for raw in self._store.staged():
                totals = _added(totals, self._apply_items(_decode_items(raw)))
            self._store.drop_staged()
            self._store.set_meta(CLOCK_LAST, self._clock.last)
            self._store.set_meta(REBUILD, None)
        self._store.checkpoint()  # the old layer's bytes must not stay in the -wal
        return totals

    def _apply_items(self, items: list[PulledItem]) -> PullReport:
        """Apply pulled items in order (inside a transaction); what it did, pages left at 0.

        A state the office sent replaces the record; a change merges into it unless the
        state already holds it: the office accepts a device's changes to a record only in
        the order of their stamps, so one stamped at or before the latest of its device
        that the state holds (its version vector) is in it."""
        changes = [
            decode_change(item.change) if isinstance(item, PulledChange) else None for item in items
        ]
        done = self._store.applied_among(c.change_id for c in changes if c is not None)
        states: dict[RecordKey, RecordState | None] = dict(
            self._store.states((c.record_type, c.record_id) for c in changes if c is not None)
        )
        written: set[RecordKey] = set()
        applied: list[Change] = []
        sent: list[RecordState] = []
        as_sent: dict[RecordKey, bytes] = {}  # stored as the office sent them, unchanged since
        skipped = evicted = 0
        for item, change in zip(items, changes, strict=True):
            if isinstance(item, PulledState):
                state = _decode_state(item.state)
                if state.record_type not in RECORD_TYPES:
                    skipped += 1  # a type this client does not know: as for a change
                    continue
                key = (state.record_type, state.record_id)
                if state.vv:  # as for a pulled change: later stamps come after what it holds
                    self._clock.receive(max(state.vv.values()))
                states[key] = state
                written.discard(key)
                as_sent[key] = item.state
                sent.append(state)
                continue
            if isinstance(item, Eviction):
                key = (item.record_type, item.record_id)
                self._store.evict(key, erased=item.reason == "erased")
                states[key] = None
                written.discard(key)
                as_sent.pop(key, None)
                # Its history comes again if the record comes back into view.
                done -= {c.change_id for c in changes if c and (c.record_type, c.record_id) == key}
                applied = [c for c in applied if (c.record_type, c.record_id) != key]
                evicted += 1
                continue
            assert isinstance(item, PulledChange) and change is not None
            key = (change.record_type, change.record_id)
            held = states.get(key)
            if change.change_id in done or (
                held is not None and change.hlc <= held.vv.get(change.device_id, -1)
            ):
                skipped += 1
                continue
            self._clock.receive(change.hlc)
            # `order` is the server's clamped stamp for an absurd clock; rank as it did.
            outcome = merge.apply_change(states.get(key), change, item.order)
            if outcome.state is None:
                # The server applied it with this very code, so this cannot happen unless
                # the two disagree; keep pulling rather than jam, and leave the record.
                skipped += 1
                continue
            states[key] = outcome.state
            written.add(key)
            as_sent.pop(key, None)
            done.add(change.change_id)
            applied.append(change)
        self._store.put_states(s for k in written if (s := states[k]) is not None)
        self._store.put_encoded(as_sent.items())
        self._store.mark_all_applied(applied)
        self._own_changes_on_top({k: s for k in written | as_sent.keys() if (s := states[k])})
        return PullReport(0, len(applied), skipped, evicted, len(sent))

    def _own_changes_on_top(self, shown: dict[RecordKey, RecordState]) -> None:
        """On each record a page gave a state, this device's changes show on top exactly
        while the state does not hold them: held ones stop (a pulled change of its own, or
        one a state the office sent holds); unanswered ones an eviction hid show again."""
        device_id = self._enrolled().device_id
        hide, show = [], []
        for own in self._store.own_changes_on(shown):
            held = decode_change(own.raw).hlc <= shown[own.key].vv.get(device_id, -1)
            if held and own.shown:
                hide.append(own.change_id)
            elif not held and not own.shown and own.unanswered:
                show.append(own.change_id)
        self._store.set_overlay(hide, shown=False)
        self._store.set_overlay(show, shown=True)

    # -- signed requests ----------------------------------------------------------------

    def _nothing_new(self, page: PullPage) -> bool:
        """Whether `page` is empty, ends at the stored cursor and finds the server's clock
        where it was to the second (requests carry whole seconds): then a sync with
        nothing to do writes nothing to the file."""
        if page.items or page.cursor != self._store.meta(CURSOR):
            return False
        offset = self._store.meta(SERVER_OFFSET)
        moved = page.server_time_ms - self._wall_ms() - (offset if isinstance(offset, int) else 0)
        return isinstance(offset, int) and abs(moved) < 1000

    def _learn_offset(self, server_time_ms: int) -> None:
        self._store.set_meta(SERVER_OFFSET, server_time_ms - self._wall_ms())

    def _fresh_office_key(self, said: OfficeInfo | PullPage) -> bool:
        """Whether `said` names another KEM key than the one this device seals to, vouched
        for by the office it enrolled with and newer (PROTOCOL.md section 14), or the
        statement of the one it holds, kept from before statements were signed.

        Raises `BadSignature` for a key its office did not sign or an older one:
        neither `GET /v1/office` nor the refusal that sends a device there is
        authenticated, and a page can be forged by whoever holds the key a request
        was sealed to, which after a rotation may be the leaked one.
        """
        enrolled = self._enrolled().office
        same = (said.kem_key_id, said.kem_key) == (enrolled.kem_key_id, enrolled.kem_key)
        # A key held from before statements were signed gets its statement once.
        if not said.kem_key_id or (same and enrolled.kem_key_signature):
            return False
        message = signing.office_key_message(
            enrolled.office_id, said.kem_key_id, said.kem_key_since_ms, said.kem_key
        )
        signing.verify(enrolled.signing_key, said.kem_key_signature, message, "office key")
        if not same and said.kem_key_since_ms <= enrolled.kem_key_since_ms:
            raise BadSignature(f"office key {said.kem_key_id} is older than the one in use")
        return True

    def _learn_office_key(self, said: OfficeInfo | PullPage) -> None:
        """Seal to the office's rotated KEM key from now on (checked by `_fresh_office_key`);
        call inside a transaction."""
        identity = self._enrolled()
        office = msgspec.structs.replace(
            identity.office,
            kem_key_id=said.kem_key_id,
            kem_key=said.kem_key,
            kem_key_since_ms=said.kem_key_since_ms,
            kem_key_signature=said.kem_key_signature,
        )
        identity = msgspec.structs.replace(identity, office=office)
        self._store.set_sealed_meta(IDENTITY, _encode(identity))
        self._identity = identity

    def _learning_office(self, send: Callable[[], T]) -> T:
        """`send()`, and once more after learning the office's time and key if it asks.

        A `StaleRequest` means this device's clock is far from the server's,
        and `WrongKey` that the office retired the KEM key this device seals
        to: learn the server's time and current key from `GET /v1/office` and
        sign, seal and send once more, as PROTOCOL.md sections 11 and 12 say for
        the version 2 push and pull that `send` makes (the clock offset itself is
        section 10, the key rotation section 14). Retrying is safe: a refused
        request writes nothing.
        """
        try:
            return send()
        except (StaleRequest, WrongKey):
            office = _answer(self._http.get("/v1/office"), OfficeInfo)
            with self._store.transaction():
                # The time is not signed: a wrong one costs a refusal, nothing more.
                self._learn_offset(office.server_time_ms)
                # A push signed by a clock that was ahead spent no nonce: sign the next
                # one by the server's time. (Should it land on the very millisecond of
                # an earlier accepted try of the batch, it is refused `replayed` and
                # the next sync signs later.)
                self._store.set_meta(PUSH_SIGNED_MS, 0)
            if self._fresh_office_key(office):
                with self._store.transaction():
                    self._learn_office_key(office)
            return send()

    def _server_ms(self) -> int:
        """This device's clock, corrected by the offset the server's clock last showed."""
        offset = self._store.meta(SERVER_OFFSET)
        return self._wall_ms() + (offset if isinstance(offset, int) else 0)

    def _push_once(self, batch_id: str, raws: list[bytes]) -> PushResponse:
        """Sign, seal and send a version 2 push of a stored batch (PROTOCOL.md section 11).

        The signing time is the push's nonce with the batch id, so a retry of
        the batch is signed later than any try before it, also across restarts.
        """
        identity = self._enrolled()
        last = self._store.meta(PUSH_SIGNED_MS)
        timestamp_ms = max(self._server_ms(), last + 1 if isinstance(last, int) else 0)
        with self._store.transaction():
            self._store.set_meta(PUSH_SIGNED_MS, timestamp_ms)
        push = signing.signed_push(
            self._signing_key, identity.device_id, batch_id, timestamp_ms, raws
        )
        return self._send_v2("push", push, PushResponse)

    def _pulled(
        self, request: PullRequest, pushed: list[Pushed], ahead: list[Future[PullPage]]
    ) -> PullPage:
        """The answer to `request`: first that of the same pull sent ahead, if any (its
        refusal too), then of a pull sent now."""
        return ahead.pop().result() if ahead else self._pull_once(request, pushed)

    def _pull_once(self, request: PullRequest, pushed: list[Pushed]) -> PullPage:
        """Sign, seal and send a version 2 pull (PROTOCOL.md section 12)."""
        return self._send_v2("pull", self._signed_pull(request, pushed), PullPage)

    def _signed_pull(self, request: PullRequest, pushed: list[Pushed]) -> SignedPull:
        return signing.signed_pull(
            self._signing_key,
            self._enrolled().device_id,
            secrets.token_urlsafe(16),  # the request's nonce: 22 characters, 128 bits
            self._server_ms(),
            request.cursor,
            request.limit,
            pushed,
        )

    def _send_v2(self, purpose: Purpose, signed: SignedPush | SignedPull, kind: type[T]) -> T:
        """Seal `signed` to the office, post it, and open the answer sealed to this device."""
        office = self._enrolled().office
        suite = 1
        office_key = X25519PublicKey.from_public_bytes(office.kem_key)
        sent = signing.encode_pull(signed) if isinstance(signed, SignedPull) else _encode(signed)
        body = envelope.seal_v2(purpose, sent, office.kem_key_id, office_key, suite)
        media_type = envelope.MEDIA_TYPES[purpose]
        response = self._http.post(
            f"/v2/sync/{purpose}", content=body, headers={"Content-Type": media_type}
        )
        if not response.is_success:
            return _answer(response, kind)
        if not response.headers.get("content-type", "").startswith(media_type):
            raise LianxinError(f"the office's answer to a {purpose} is not sealed")
        plaintext = envelope.open_v2_answer(
            purpose, response.content, suite, signed.signature, self._kem_key
        )
        return _decoded(plaintext, kind)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Merging a page allocates a great many small objects that live until the page is
    written, none of them in a cycle; the cyclic collector would walk them again and again
    (half the merge time of a fresh phone's first pull). Paused for the page only."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _fit(rows: list[tuple[str, bytes]], max_bytes: int) -> list[tuple[str, bytes]]:
    """The longest head of `rows` whose changes total at most `max_bytes` (at least one row)."""
    total = 0
    for count, (_, raw) in enumerate(rows):
        total += len(raw)
        if total > max_bytes:
            return rows[: max(count, 1)]
    return rows


def _wire_form(change: Change) -> tuple[bytes, Change]:
    """The change's exact wire bytes and the change decoded back from them.

    Merging the decoded change checks what the server will check; a value the
    wire type refuses (a bad id, say) would make the server refuse the whole
    batch as `malformed`, so it is rejected here, before it can jam the outbox.
    """
    try:
        raw = encode_change(change)
        decoded = decode_change(raw)
    except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as error:
        raise merge.Rejected(Reason.INVALID_VALUE, str(error)) from None
    if where := newline_in_ids(decoded):
        raise merge.Rejected(Reason.INVALID_VALUE, f"{where} ends in a newline")
    return raw, decoded


def _decoded(plaintext: bytes, answer_type: type[T]) -> T:
    try:
        return msgspec.msgpack.decode(plaintext, type=answer_type)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise LianxinError(f"the server's answer does not decode: {error}") from None


def _answer(response: httpx.Response, answer_type: type[T]) -> T:
    """Decode a success answer as `answer_type`, or raise the error the server named."""
    json = "json" in response.headers.get("content-type", "")
    decode = msgspec.json.decode if json else msgspec.msgpack.decode
    if response.is_success:
        try:
            return decode(response.content, type=answer_type)
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            raise LianxinError(f"the server's answer does not decode: {error}") from None
    try:
        body = decode(response.content, type=ErrorBody)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise LianxinError(f"HTTP {response.status_code} without an error body") from None
    kind = ERROR_CLASSES.get(body.error)
    if kind is None:
        raise LianxinError(f"HTTP {response.status_code} {body.error}: {body.detail}")
    refusal = kind(body.detail)
    wait = response.headers.get("retry-after", "")
    if isinstance(refusal, RateLimited) and wait.isascii() and wait.isdigit():
        refusal.retry_after_s = int(wait)
    raise refusal
