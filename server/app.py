"""The Litestar app, built by `create_app(settings, ...)`; no module-level state."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from schemas.wire import EnrollRequest, PullRequest, PushRequest, SignedPull, SignedPush
from server import auth, console, logs, ops
from server.console.web import documents_body
from server.errors import EXCEPTION_HANDLERS, MSGPACK, client_address, encode_for, media_type
from server.keys import OfficeKeys
from server.service import SyncService
from server.settings import Settings
from server.storage.directory import Device
from server.storage.sqlite import SqliteStore, open_store
from sync import decoding, envelope
from sync.clock import Clock, system_wall_ms
from sync.envelope import ENVELOPE, Purpose
from sync.errors import BadEnvelope, LianxinError, UnsupportedEncoding, UnsupportedMediaType

T = TypeVar("T")
S = TypeVar("S", SignedPush, SignedPull)  # a version 2 request


def decode(request: Request, body: bytes, kind: type[T]) -> T:
    """Decode a body as msgpack, or JSON when the client says so; errors name the path."""
    return decoding.decode(body, kind, json="json" in media_type(request))


async def refuse_encoded_bodies(request: Request) -> None:
    """No compressed bodies: a 10 MB gzip bomb never reaches a decoder (issue 8, point 5).

    Litestar does not inflate request bodies, so an encoded body would only
    fail later as garbage; saying so precisely helps a client that tried.
    """
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:40]!r}: send bodies uncompressed")


async def not_for_caches(response: Response) -> Response:
    """Whatever the office answers may name people or say who works which case: no
    browser or proxy cache may keep it (pages set it themselves; the JSON twins of
    the console and the sync answers get it here)."""
    response.headers.setdefault("cache-control", "no-store")
    return response


# What the version 1 endpoints decode; a body sent without a Content-Type is MessagePack.
PLAIN_MEDIA_TYPES = (MSGPACK, "application/json")


def require_media_type(request: Request, accepted: tuple[str, ...], optional: bool) -> None:
    """Refuse a body in a Content-Type other than `accepted` (or none, unless `optional`):
    it would otherwise fail later as a less precise decoding error."""
    sent = media_type(request)
    if sent in accepted or (optional and not sent):
        return
    shown = repr(sent[:60]) if sent else "none"
    raise UnsupportedMediaType(f"Content-Type {shown}: send {' or '.join(accepted)}")


def reply(request: Request, message: Any) -> Response:
    content, media_type = encode_for(request, message)
    return Response(content, media_type=media_type)


def service_of(request: Request) -> SyncService:
    service: SyncService = request.app.state.service
    return service


@get("/v1/office", summary="The office's id and public keys (unsigned)")
async def office(request: Request) -> Response:
    return reply(request, service_of(request).office())


@post(
    "/v1/enroll",
    status_code=200,
    summary="Enrol a device with a one-time code",
    dependencies=documents_body(EnrollRequest),
)
async def enroll(request: Request) -> Response:
    service = service_of(request)
    client = client_address(request)
    # An address over its allowance is refused before anything it sent is read.
    service.enrol_failures.check(client, service.wall_ms())
    require_media_type(request, PLAIN_MEDIA_TYPES, optional=True)
    message = decode(request, await request.body(), EnrollRequest)
    return reply(request, await anyio.to_thread.run_sync(service.enroll, message, client))


def request_target(request: Request) -> str:
    """The path and query exactly as sent on the wire (still percent-encoded)."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


async def signed(
    request: Request, kind: type[T], action: Callable[[Device, T], Any], purpose: Purpose
) -> Response:
    """Authenticate a signed sync request, open and decode its body, answer with `action`.

    A sealed request (PROTOCOL.md section 14) is answered sealed to the
    device's own key.
    """
    service = service_of(request)
    body = await request.body()
    path = request_target(request)

    def work() -> tuple[Device, Response]:
        require_media_type(request, (*PLAIN_MEDIA_TYPES, ENVELOPE), optional=True)
        service.keys.reload()  # `lianxin keys rotate` may have changed the key file
        device = auth.authenticate(
            request.headers,
            request.method,
            path,
            body,
            service.directory,
            service.wall_ms(),
            service.settings.request_window_s,
            service.rates,
        )
        if media_type(request) != ENVELOPE:
            if service.settings.require_sealed:
                raise BadEnvelope(
                    f"this office accepts sealed sync requests only, sent as {ENVELOPE}"
                )
            return device, reply(request, action(device, decode(request, body, kind)))
        # Every KEM key not yet retired opens: devices move to a rotated key at their own pace.
        header, plaintext = envelope.open_envelope(body, service.keys.kems)
        if header.device_id != device.device_id or header.purpose != purpose:
            raise BadEnvelope("the envelope was sealed for another device or endpoint")
        message = decoding.decode(plaintext, kind)
        if getattr(message, "batch_id", header.batch_id) != header.batch_id:
            raise BadEnvelope("the envelope names another batch than the one inside")
        answer = action(device, message)
        return device, sealed_reply(answer, header.suite, device, header.batch_id, purpose)

    return await answered(service, f"/v1/sync/{purpose}", work)


def sealed_reply(
    answer: Any, suite: int, device: Device, batch_id: str, purpose: Purpose
) -> Response:
    """`answer` sealed to the device's own key, for the request it answers."""
    header = envelope.Header(
        suite=suite,
        key_id=device.device_id,
        device_id=device.device_id,
        batch_id=batch_id,
        purpose=purpose,
    )
    device_key = X25519PublicKey.from_public_bytes(device.kem_key)
    sealed = envelope.seal(msgspec.msgpack.encode(answer), header, device_key)
    return Response(sealed, media_type=ENVELOPE)


async def answered(
    service: SyncService, endpoint: str, work: Callable[[], tuple[Device, Response]]
) -> Response:
    """Run `work` in one worker thread, counted and logged under `endpoint` (its path).

    One hop off the event loop per request rather than one per step.
    """
    start = time.perf_counter()
    outcome = "error"
    device_id = None
    try:
        device, response = await anyio.to_thread.run_sync(work)
        outcome, device_id = "ok", device.device_id
        return response
    except LianxinError as error:
        outcome = error.code
        raise
    finally:
        seconds = time.perf_counter() - start
        service.metrics.request(endpoint, outcome, seconds)
        logs.sync_logged(endpoint, outcome, seconds, device_id)


@post(
    "/v1/sync/push",
    status_code=200,
    summary="Push a signed batch of changes",
    dependencies=documents_body(PushRequest),
)
async def push(request: Request) -> Response:
    return await signed(request, PushRequest, service_of(request).push, "push")


@post(
    "/v1/sync/pull",
    status_code=200,
    summary="Pull the next page of changes this device may see",
    dependencies=documents_body(PullRequest),
)
async def pull(request: Request) -> Response:
    return await signed(request, PullRequest, service_of(request).pull, "pull")


@post(
    "/v2/sync/push",
    status_code=200,
    summary="Push a batch signed and sealed in one compact body (PROTOCOL.md section 11)",
    dependencies=documents_body(envelope.CompactEnvelope),
)
async def push_v2(request: Request) -> Response:
    return await compact(request, "push", SignedPush, _push_v2)


def _push_v2(service: SyncService, push: SignedPush) -> tuple[Device, Any]:
    service.limit_batch(push.changes)
    window_s = service.settings.request_window_s
    device, message = auth.authenticate_push(
        push, service.directory, service.wall_ms(), window_s, service.rates
    )
    return device, service.apply_batch(device, push.batch_id, push.changes, message, push.signature)


@post(
    "/v2/sync/pull",
    status_code=200,
    summary="Pull a page, signed and sealed in one compact body (PROTOCOL.md section 12)",
    dependencies=documents_body(envelope.CompactEnvelope),
)
async def pull_v2(request: Request) -> Response:
    return await compact(request, "pull", SignedPull, _pull_v2)


def _pull_v2(service: SyncService, pull: SignedPull) -> tuple[Device, Any]:
    window_s = service.settings.request_window_s
    device = auth.authenticate_pull(
        pull, service.directory, service.wall_ms(), window_s, service.rates
    )
    request = PullRequest(cursor=pull.cursor, limit=pull.limit)
    return device, service.pull(device, request, pull.pushed)


async def compact(
    request: Request,
    purpose: Purpose,
    kind: type[S],
    act: Callable[[SyncService, S], tuple[Device, Any]],
) -> Response:
    """Open and decode a version 2 request, let `act` authenticate and answer it, and seal
    the answer to the device, bound to the request's signature (PROTOCOL.md 11, 12)."""
    service = service_of(request)
    body = await request.body()

    def work() -> tuple[Device, Response]:
        require_media_type(request, (envelope.MEDIA_TYPES[purpose],), optional=False)
        service.keys.reload()
        suite, plaintext = envelope.open_v2(purpose, body, service.keys.kems)
        signed = decoding.decode(plaintext, kind)
        device, answer = act(service, signed)
        device_key = X25519PublicKey.from_public_bytes(device.kem_key)
        sealed = envelope.seal_v2_answer(
            purpose, msgspec.msgpack.encode(answer), suite, signed.signature, device_key
        )
        return device, Response(sealed, media_type=envelope.MEDIA_TYPES[purpose])

    return await answered(service, f"/v2/sync/{purpose}", work)


def signing_checkpoints(service: SyncService) -> Callable[[Litestar], Any]:
    """While the app serves, sign the audit chain's head whenever it is due, so acts
    at the console are signed in an office whose phones are quiet (`audit`)."""
    every = service.settings.checkpoint_check_s

    async def sign_while_due() -> None:
        while True:
            await anyio.sleep(every)
            try:
                await anyio.to_thread.run_sync(service.sign_due_checkpoint)
            except Exception:  # a busy store, say: the next round signs; serving goes on
                logs.log.warning("audit checkpoint not signed", exc_info=True)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            if every:
                tasks.start_soon(sign_while_due)
            yield
            tasks.cancel_scope.cancel()

    return lifespan


def create_app(
    settings: Settings,
    *,
    keys: OfficeKeys,
    store: SqliteStore | None = None,
    clock: Clock | None = None,
    wall_ms: Callable[[], int] = system_wall_ms,
) -> Litestar:
    """Build the app for the office whose unlocked `keys` are given.

    Without a `store` the app opens the one `settings` name, and closes it on shutdown.
    """
    opened = store is None
    store = store or open_store(settings, keys)
    clock = clock or Clock(wall_ms, max_drift_ms=settings.max_clock_drift_ms)
    service = SyncService(settings, store, keys, clock, wall_ms)
    return Litestar(
        route_handlers=[
            office,
            enroll,
            push,
            push_v2,
            pull,
            pull_v2,
            *ops.ROUTES,
            *console.routes(),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        before_request=refuse_encoded_bodies,
        after_request=not_for_caches,
        openapi_config=OpenAPIConfig(title="Lianxin sync and console API", version="1"),
        state=State({"service": service}),
        lifespan=[signing_checkpoints(service)],
        on_shutdown=[store.close] if opened else [],
    )
