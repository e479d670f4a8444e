"""Enrolment, push and pull: the sync protocol's server side, free of HTTP.

Routes decode and authenticate; this module decides. Every write happens
inside the store's writer gate, so a batch and the access changes it causes
commit together or not at all.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import sqlite3
from collections.abc import Callable, Sequence

import msgspec

from schemas.changes import Change, ChangeResult, Reason
from schemas.records import RECORD_TYPES
from schemas.state import RecordState
from schemas.wire import (
    MAX_CHANGE_BYTES,
    STATES_CURSOR,
    Enrollment,
    EnrollRequest,
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
)
from server import audit
from server.agreements import execute_ready, signature_vet
from server.keys import OfficeKeys
from server.ops import Metrics
from server.pseudonyms import pseudonym
from server.ratelimit import Allowance
from server.settings import Settings
from server.storage import due, repeats
from server.storage.access import mediators_among, presence, update_access
from server.storage.directory import Device, Directory, User
from server.storage.index import index_records, reindexed
from server.storage.people import index_parties
from server.storage.pull import read_page
from server.storage.sqlite import SqliteStore
from sync import envelope, signing
from sync.access import (
    WRITABLE_BY,
    changes_visibility,
    links_added,
    location_refused,
    mediators_added,
    superseded,
)
from sync.changes import decode_change, newline_in_ids, newline_in_values
from sync.clock import Clock
from sync.engine import Applied, apply
from sync.errors import (
    BadCursor,
    BadSignature,
    BatchReused,
    EnrollmentRefused,
    Forbidden,
    MalformedRequest,
    TooDeep,
    TooLarge,
    WeakKey,
)
from sync.store import RecordKey

STATES_PER_PAGE = 1000  # a state weighs many changes
STATES_READ_TOGETHER = 100  # a page's states are read so many at a time, up to its bytes
MAX_SEQ = 2**63 - 1  # SQLite's largest integer: no cursor names a seq past it
CONSOLE_DEVICES = "console:"  # a console user's changes are device console:<user id>'s
Marks = Callable[[int, int], str]  # `_log_marks` of one read of the log


class SyncService:
    """The office's sync endpoints as plain methods."""

    def __init__(
        self,
        settings: Settings,
        store: SqliteStore,
        keys: OfficeKeys,
        clock: Clock,
        wall_ms: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.store = store
        self.directory = Directory(store)
        self.signatures = signature_vet(self.directory)
        self.keys = keys
        self.metrics = Metrics()
        self.rates = Allowance(settings.sync_requests_per_minute, "sync requests from this device")
        self.enrol_failures = Allowance(
            settings.enrol_failures_per_minute, "refused enrolments from this address"
        )
        # Stamps rise strictly across restarts too: the office's next change to a record
        # must rank after its last one, which a phone's fast clock may have set hours ahead.
        clock.receive(store.last_stamp(own=[keys.office_id, f"{CONSOLE_DEVICES}*"]))
        # What a migration left for the engine to redo (a changed rule of who sees what).
        due.catch_up(store, keys.index_key, wall_ms())
        # Every cursor binds it: an office restored from a backup refuses those issued
        # before, even where the restored log holds the same change ids at their places.
        self._restored = audit.last_restore(store.db)
        self.clock = clock
        self.wall_ms = wall_ms

    def office(self) -> OfficeInfo:
        self.keys.reload()
        return OfficeInfo(
            office_id=self.keys.office_id,
            signing_key=self.keys.signing_public,
            server_time_ms=self.wall_ms(),
            **self.keys.kem_statement,
        )

    def enroll(self, request: EnrollRequest, client: str) -> Enrollment:
        """Spend an enrolment code on the device that proves it holds `signing_key`.

        A refusal counts against `client` (its address), which the handler checks
        against `enrol_failures` before it reads the request.
        """
        now_ms = self.wall_ms()
        message = signing.enroll_message(request.code, request.signing_key, request.kem_key)
        try:
            # Checked before the proof: a small-order signing key "verifies" a forged one.
            signing.check_signing_key(request.signing_key)
            envelope.check_kem_key(request.kem_key)
            signing.verify(request.signing_key, request.proof, message, "enrolment proof")
            with self.store.transaction():
                device, new = self.directory.enroll(
                    request.code, request.signing_key, request.kem_key, request.label, now_ms
                )
                # The label is the holder's words ("Wang's phone"): not in the clear log.
                # A retry after a lost answer enrolled nothing more.
                if new:
                    audit.append(
                        self.store.db,
                        now_ms,
                        f"device:{device.device_id}",
                        "enroll",
                        f"user/{device.user.user_id}",
                        {"role": device.user.role},
                    )
        except (BadSignature, EnrollmentRefused, WeakKey):
            self.enrol_failures.take(client, now_ms)
            raise
        return Enrollment(
            device_id=device.device_id,
            user_id=device.user.user_id,
            role=device.user.role,
            org_units=device.user.org_units,
            office=self.office(),
            pseudonym=self._pseudonym(device.user),
        )

    def _pseudonym(self, user: User) -> str:
        return pseudonym(self.keys.pseudonym_key, user.user_id) if user.role == "informant" else ""

    def push(self, device: Device, request: PushRequest) -> PushResponse:
        """Verify and apply one version 1 batch; every change gets an answer."""
        self.limit_batch(request.changes)
        manifest = signing.batch_message(device.device_id, request.batch_id, request.changes)
        signing.verify(device.signing_key, request.signature, manifest, "batch")
        return self.apply_batch(
            device, request.batch_id, request.changes, manifest, request.signature
        )

    def apply_batch(
        self, device: Device, batch_id: str, raws: list[bytes], manifest: bytes, signature: bytes
    ) -> PushResponse:
        """Apply a batch whose `signature` over `manifest` has been verified.

        The caller has also checked its size with `limit_batch`.
        """
        changes = []
        for index, raw in enumerate(raws):
            try:
                change = decode_change(raw)
            except (msgspec.DecodeError, UnicodeDecodeError) as error:
                raise MalformedRequest(f"$.changes[{index}]: {error}") from None
            except RecursionError:  # field values are `Any`: msgspec follows any nesting
                raise TooDeep(f"$.changes[{index}] is nested too deeply to decode") from None
            if change.device_id != device.device_id:
                raise Forbidden(f"$.changes[{index}] was made by another device")
            if where := newline_in_ids(change):
                raise MalformedRequest(f"$.changes[{index}].{where} ends in a newline")
            changes.append(change)

        user = device.user
        with self.store.transaction():
            new = self._remember_batch(device, batch_id, manifest, signature)
            present, authorize = self._device_rules(user, changes)
            applied = self._apply(changes, user.user_id, present, raws, authorize, batch_id)
            if new:
                # In the batch's transaction: an applied batch is always in the log (issue 8).
                # What it stored, counted: `audit verify` finds a change deleted since.
                now_ms, db, stored = self.wall_ms(), self.store.db, {"stored": applied.stored}
                device_id = device.device_id
                audit.record_batch(db, now_ms, device_id, batch_id, manifest, signature, stored)
                audit.checkpoint_if_due(db, self.keys, now_ms)
        self.metrics.results(r.status for r in applied.results)
        return PushResponse(batch_id=batch_id, results=applied.results)

    def sign_due_checkpoint(self) -> audit.Checkpoint | None:
        """Sign the audit chain's head if it is due, as a push would."""
        return audit.sign_if_due(self.store, self.keys, self.wall_ms())

    def limit_batch(self, raws: list[bytes]) -> None:
        """Refuse a batch over the size limits before any of it is hashed or decoded."""
        if len(raws) > self.settings.max_batch_changes:
            raise TooLarge(
                f"a batch holds at most {self.settings.max_batch_changes} changes,"
                f" this one {len(raws)}"
            )
        # Every reader pulls each change whole, and each state holds them all.
        for index, raw in enumerate(raws):
            if len(raw) > MAX_CHANGE_BYTES:
                raise TooLarge(f"$.changes[{index}] is {len(raw)} bytes, over {MAX_CHANGE_BYTES}")

    def reapply(self, device: Device, raw: bytes, batch_id: str | None) -> ChangeResult:
        """Apply a quarantined change's exact bytes again, as if `device` pushed it now.

        For the console's quarantine, after a supervisor fixed the cause: the
        rules of `push` authorize it for the device's user as they stand now,
        and a rejection quarantines it again with the new reason. The caller
        first removes the old quarantine row, in the same transaction (the
        engine answers a change id it already holds as a duplicate).
        `batch_id` is the signed batch the change came in, kept with it.
        """
        change = decode_change(raw)
        if change.device_id != device.device_id:
            raise Forbidden("the change was made by another device")
        with self.store.transaction():
            present, authorize = self._device_rules(device.user, [change])
            (result,), _, _ = self._apply(
                [change], device.user.user_id, present, [raw], authorize, batch_id
            )
        return result

    def _device_rules(
        self, user: User, changes: list[Change]
    ) -> tuple[set[RecordKey], Callable[[Change], str | None]]:
        """Which records `changes` touch exist, and why one of them is refused to `user`."""
        own_pseudonym = self._pseudonym(user) or None
        keys = {(c.record_type, c.record_id) for c in changes}
        targets = {link for c in changes for link in links_added(c)}
        named = {old for c in changes if (old := superseded(c))}
        present, visible = presence(self.store, user.user_id, list(keys | targets | named))
        added = (m for c in changes for m in mediators_added(c))
        mediators = mediators_among(self.store, added, at_the_office=True)

        def authorize(change: Change) -> str | None:
            if change.record_type not in RECORD_TYPES:
                return None  # no record to permit: merging answers `unknown_record_type`
            if change.record_type not in WRITABLE_BY[user.role]:
                return f"{user.role}s may not write {change.record_type} records"
            if "informant" in change.set and change.set["informant"] != own_pseudonym:
                return "a warning's informant is the pseudonym of the informant who sends it"
            key = (change.record_type, change.record_id)
            if key in present and key not in visible:
                return f"{user.role} {user.user_id} may not write {key[0]} {key[1]}"
            # Linking a record would show it to everyone who sees this one.
            for target in links_added(change):
                if target in present and target not in visible:
                    return f"{user.user_id} may not link {target[0]} {target[1]}"
            # Whoever `mediators` names reads the case and its parties: only mediators
            # are assigned, never an informant or an admin (who get no case over sync),
            # nor one who left the office.
            for assignee in mediators_added(change):
                if assignee not in mediators:
                    return (
                        "only mediators at the office are assigned to cases:"
                        f" {assignee} is not a mediator, or left"
                    )
            # Executing this agreement will supersede the one it names, whoever signs
            # last: so naming it is the moment to ask whether this user may write it.
            old = superseded(change)
            if old in present and old not in visible:
                return f"{user.user_id} may not supersede agreement {old[1]}"
            return None

        return present, authorize

    def act(self, user: User, changes: list[Change], typed: bool = False) -> list[ChangeResult]:
        """Apply changes the office makes for a console user (settle, triage, assign).

        The same path as a push after authentication: merged, then readers,
        indexes and agreements brought up to date, in one transaction. `typed`:
        the changes hold values the user typed (a conflict settled with a value of
        their own), which get the rules a device's push gets (`_device_rules`,
        `_device_vet`); the office's other changes copy stored values, which must
        go on applying.
        """
        with self.store.transaction():
            if typed:
                present, authorize = self._device_rules(user, changes)
                return self._apply(changes, user.user_id, present, authorize=authorize).results
            keys = [(c.record_type, c.record_id) for c in changes]
            present, _ = presence(self.store, user.user_id, keys)
            return self._apply(changes, user.user_id, present).results

    def _device_vet(
        self, change: Change, before: RecordState | None, after: RecordState
    ) -> tuple[Reason, str] | None:
        """What the office checks of a device's change beyond merging (`sync.engine.Vet`).

        The office's own changes get the signature checks alone: they copy stored
        values (a warning's location into a case), which must go on applying.
        """
        return (
            location_refused(change)
            or newline_in_values(change)
            or self.signatures(change, before, after)
        )

    def _apply(
        self,
        changes: list[Change],
        user_id: str,
        present: set[RecordKey],
        raws: list[bytes] | None = None,
        authorize: Callable[[Change], str | None] | None = None,
        batch_id: str | None = None,
    ) -> Applied:
        """Merge `changes` and bring everything that follows from them up to date."""
        watched = repeats.watch(self.store.db, changes)
        vet = self._device_vet if authorize is not None else self.signatures
        applied = apply(self.store, changes, self.clock, raws, authorize, vet, batch_id)
        records = applied.records
        # Readers change only for new records or edits to a visibility field.
        moved = {(c.record_type, c.record_id) for c in changes if changes_visibility(c)}
        touched = {
            key: seq for key, (_, seq) in records.items() if key not in present or key in moved
        }
        written = {key: state for key, (state, _) in records.items()}
        now_ms = self.wall_ms()
        update_access(self.store, touched, user_id, written)
        index_parties(self.store, self.keys.index_key, written)
        reindex = reindexed(changes, records.keys() - present)
        index_records(self.store, {k: v for k, v in records.items() if k in reindex}, now_ms)
        repeats.update(self.store.db, watched)
        # Agreements the batch completed are executed in the same transaction.
        execute_ready(self.store, self.keys, self.clock, written, now_ms)
        return applied

    def _remember_batch(
        self, device: Device, batch_id: str, manifest: bytes, signature: bytes
    ) -> bool:
        """Keep the signed manifest so each change stays attributable to its device; whether
        the batch is new (a retry stores nothing again).

        A retry is the same batch when it signs the same changes; a version 2
        retry is signed at a later moment, so the first signature is the one kept.
        """
        device_id = device.device_id
        row = self.store.db.execute(
            "SELECT manifest FROM batches WHERE device_id = ? AND batch_id = ?",
            [device_id, batch_id],
        ).fetchone()
        if row is not None:
            stored = signing.signed_digests(row[0], device_id, batch_id)
            if stored != signing.signed_digests(manifest, device_id, batch_id):
                raise BatchReused("this batch id was sent before with other changes")
            return False
        self.store.db.execute(
            "INSERT INTO batches (device_id, batch_id, manifest, signature, received_at_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            [device_id, batch_id, manifest, signature, self.wall_ms()],
        )
        return True

    def pull(self, device: Device, request: PullRequest, pushed: Sequence[Pushed] = ()) -> PullPage:
        """The next page of what this device may see, after its cursor; `bad_cursor` unless
        the log holds each of this device's changes `pushed` names where it names it."""
        limit = min(request.limit, self.settings.max_pull_limit)
        user_id = device.user.user_id
        cursor = request.cursor
        states: list[PulledState] = []
        with self.store.snapshot() as conn:
            if pushed:
                _check_pushed(conn, device, pushed)
            (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
            # A pull with nothing new ends where it began: the log is read for it once.
            marks = functools.cache(functools.partial(_log_marks, conn))
            if cursor == STATES_CURSOR or (cursor or "").startswith("s1."):
                begun, after = (
                    (last, ("", ""))
                    if cursor == STATES_CURSOR
                    else self._open_states_cursor(marks, device, str(cursor), last)
                )
                # The states read now hold the log up to `last`: a restore that lost any
                # of it must refuse the cursors to come (`held`, bound in each of them).
                held = last
                states, sent = self._states(conn, user_id, begun, after, limit, last)
                if sent is not None:
                    next_cursor = self._states_cursor(marks, device, begun, held, sent)
                    return self._page([*states], next_cursor, True)
                # Every record is sent: the rest of the page is the log since the first page.
                position = seq = begun
                limit -= len(states)
            else:
                position, seq, held = self._open_cursor(marks, device, cursor, last)
            if limit == 0:
                return self._page([*states], self._cursor(marks, device, position, seq, held), True)
            # Changes after the last state share the page's bytes with the states.
            room = self.settings.max_page_bytes - sum(len(s.state) for s in states)
            page = read_page(conn, user_id, position, seq, limit, last, max_bytes=room)
            cursor = self._cursor(marks, device, page.end, page.end_seq, held)
        rows, evictions, has_more = page.rows, page.evictions, page.has_more
        raws = self.store.open_changes([row[2:6] for row in rows])
        items: list[tuple[int, int, PulledChange | Eviction]] = [
            (p, 0, PulledChange(seq=s, change=raw, order=order))
            for (p, s, *_, order), raw in zip(rows, raws, strict=True)
            if raw is not None  # erased since the page was read
        ]
        items += [
            (e, 1, Eviction(seq=e, record_type=t, record_id=i, reason=reason))
            for e, t, i, reason in evictions
        ]
        items.sort(key=lambda item: item[:2])
        return self._page([*states, *(item for _, _, item in items)], cursor, has_more)

    def _page(self, items: list[PulledItem], cursor: str, has_more: bool) -> PullPage:
        return PullPage(
            items=items,
            cursor=cursor,
            has_more=has_more,
            server_time_ms=self.wall_ms(),
            **self.keys.kem_statement,
        )

    def _states(
        self,
        conn: sqlite3.Connection,
        user_id: str,
        begun: int,
        after: RecordKey,
        limit: int,
        last: int,
    ) -> tuple[list[PulledState], RecordKey | None]:
        """The next records after `after` in key order that the user may see, as the office
        holds them now, for a device that holds nothing yet: one state a record instead of
        its history. Returns them with the last one's key, or None if none are left.

        The pull's first page fixes where the log stood (`begun`). After its last
        record, the device pulls on from there as from any cursor: every change logged
        since comes as a change, and one that a state holds already is skipped by its
        version vector (PROTOCOL.md section 12).
        """
        want = min(limit, STATES_PER_PAGE)
        # Not a grant at a position the log has not reached (a start's catch-up grants
        # after the last change): it may be taken back there with no eviction, as never
        # served. The log part serves it once a change is logged there.
        keys = conn.execute(
            "SELECT record_type, record_id FROM access WHERE user_id = ?"
            " AND (record_type, record_id) > (?, ?) AND since_seq <= ?"
            " ORDER BY record_type, record_id LIMIT ?",
            [user_id, *after, last, want + 1],
        ).fetchall()
        page: list[RecordKey] = [(t, i) for t, i in keys[:want]]
        items: list[PulledState] = []
        size = 0
        # Read in this pull's view, after `begun` was fixed: each holds the log up to it. A
        # few at a time: the page ends once they pass its bytes, as a page of changes does.
        for start in range(0, len(page), STATES_READ_TOGETHER):
            chunk = page[start : start + STATES_READ_TOGETHER]
            found = self.store.encoded_states(chunk)
            for n, key in enumerate(chunk):
                state = found.get(key)
                if state is None:  # erased since the keys were read
                    continue
                size += len(state)
                if items and size > self.settings.max_page_bytes:
                    return items, page[start + n - 1]
                items.append(PulledState(seq=begun, state=state))
        return items, page[-1] if len(keys) > want else None

    def _states_cursor(
        self, marks: Marks, device: Device, begun: int, held: int, sent: RecordKey
    ) -> str:
        """After `sent`, in a pull from states begun at `begun`, whose device holds the
        log up to `held`: the change ids at both are bound in, as a v2 cursor binds its."""
        body, key = f"s1.{begun}.{held}", f"{sent[0]}/{sent[1]}"
        return f"{body}.{self._mac(device, f'{body}.{key}', marks(begun, held))}.{key}"

    def _open_states_cursor(
        self, marks: Marks, device: Device, cursor: str, last: int
    ) -> tuple[int, tuple[str, str]]:
        """Where a states cursor's pull began, and the last record key it sent."""
        parts = cursor.split(".", 4)
        if (
            not cursor.isascii()
            or len(parts) != 5
            or not (parts[1].isdigit() and parts[2].isdigit())
            or parts[4].count("/") != 1
        ):
            raise BadCursor("not a cursor this server issued")
        begun, held = int(parts[1]), int(parts[2])
        if begun > held or held > MAX_SEQ:
            raise BadCursor("not a cursor this server issued")
        body = f"s1.{parts[1]}.{parts[2]}.{parts[4]}"
        self._check_mac(parts[3], device, body, marks(begun, held))
        if held > last:
            raise BadCursor("the cursor is ahead of this server's log (restored from a backup?)")
        record_type, record_id = parts[4].split("/")
        return begun, (record_type, record_id)

    def _cursor(self, marks: Marks, device: Device, position: int, seq: int, held: int = 0) -> str:
        """After `(position, seq)`; while the device holds states reaching further into
        the log (`held`, from a pull from states), the change id there is bound in too."""
        if held > position:
            body = f"{position}.{seq}.{held}"
            bound = f"{marks(position, seq)}.{marks(held, held)}"
            return f"v3.{body}.{self._mac(device, body, bound)}"
        body = f"{position}.{seq}"
        return f"v2.{body}.{self._mac(device, body, marks(position, seq))}"

    def _open_cursor(
        self, marks: Marks, device: Device, cursor: str | None, last: int
    ) -> tuple[int, int, int]:
        """The `(position, seq)` after which a cursor reads, and how far the log its device
        holds reaches beyond them (0 if not)."""
        if cursor is None:
            return 0, 0, 0
        parts = cursor.split(".")
        # ASCII only: hmac.compare_digest refuses other text, and "²".isdigit() holds.
        if (
            not cursor.isascii()
            or (parts[0], len(parts)) not in (("v1", 4), ("v2", 4), ("v3", 5))
            or not all(part.isdigit() for part in parts[1:-1])
        ):
            raise BadCursor("not a cursor this server issued")
        position, seq, *rest = map(int, parts[1:-1])
        held = rest[0] if rest else 0
        if seq > position or position > MAX_SEQ or (rest and not position < held <= MAX_SEQ):
            raise BadCursor("not a cursor this server issued")  # never issued so
        body = ".".join(parts[1:-1])
        # Version 1 cursors (issued before the log was bound in) still open, unbound.
        bound = None if parts[0] == "v1" else marks(position, seq)
        if held:
            bound = f"{bound}.{marks(held, held)}"
        self._check_mac(parts[-1], device, body, bound)
        # Said only of a cursor the server issued: a forged one learns nothing of the log.
        if max(position, held) > last:
            raise BadCursor("the cursor is ahead of this server's log (restored from a backup?)")
        return position, seq, held

    def _check_mac(self, mac: str, device: Device, body: str, marks: str | None) -> None:
        if not hmac.compare_digest(mac, self._mac(device, body, marks)):
            raise BadCursor(
                "not a cursor this server issued to this device, or issued before the office"
                " was restored from a backup: pull again from the start"
            )

    def _mac(self, device: Device, body: str, marks: str | None) -> str:
        message = f"{device.device_id}.{body}" + ("" if marks is None else f".{marks}")
        message += f"/{self._restored}" if self._restored else ""
        return hmac.new(self.keys.cursor_secret, message.encode(), hashlib.sha256).hexdigest()[:32]


def _check_pushed(conn: sqlite3.Connection, device: Device, pushed: Sequence[Pushed]) -> None:
    """Refuse a pull whose device's changes are not where the office said it logged them.

    A cursor binds what its device pulled, not what it pushed beyond: an office
    restored from a backup taken between the two lost the changes, and the device,
    holding them as accepted, would never send them again.
    """
    seqs = [p.seq for p in pushed]
    rows = conn.execute(
        f"SELECT seq, change_id, device_id FROM changes WHERE seq IN ({','.join('?' * len(seqs))})",
        seqs,
    ).fetchall()
    held = {seq: (change_id, device_id) for seq, change_id, device_id in rows}
    for p in pushed:
        if held.get(p.seq) != (p.change_id, device.device_id):
            raise BadCursor(
                f"this office does not hold the change this device pushed at seq {p.seq}"
                " (restored from a backup?): pull again from the start, and send again every"
                " change it accepted"
            )


def _log_marks(conn: sqlite3.Connection, position: int, seq: int) -> str:
    """The change ids logged at a cursor's two sequences.

    A cursor's MAC covers them, so it opens only on the log it was read
    from: an office restored from a backup logs other changes at the same
    sequences, and a device pulling on with its old cursor would skip them.
    """
    ids = dict(
        conn.execute(
            "SELECT seq, change_id FROM changes WHERE seq IN (?, ?)", [position, seq]
        ).fetchall()
    )
    return f"{ids.get(position, '')}.{ids.get(seq, '')}"
