"""A fault-injecting httpx transport: the field's network, replayable from a seed.

    faulty = FaultyTransport(httpx.HTTPTransport(), Faults(drop_request=0.1), random.Random(7))
    device = DeviceClient(path, httpx.Client(base_url=url, transport=faulty), passphrase=pin)

Each request meets at most one fault, drawn from the transport's own
`random.Random`, so a seed replays the same faults for the same requests:

    drop_request   never sent; the caller gets `httpx.ConnectError`
    hold           not sent now (the caller gets `httpx.ConnectTimeout`), but
                   kept and sent later, just after one of the later requests
                   (even odds after each): it arrives out of order, and its
                   answer reaches nobody
    drop_response  sent and answered, but the answer is lost (`httpx.ReadTimeout`)
    truncate       the answer arrives cut short
    duplicate      sent twice; the caller gets one of the two answers

Every request is delayed first by an exponentially distributed time with
mean `latency_ms`, through the injected `sleep`, so a simulation passes a
function that moves its simulated clock rather than waiting.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

import httpx
import msgspec

FAULTS = ("drop_request", "hold", "drop_response", "truncate", "duplicate")


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """The chance of each fault per request (their sum at most 1), and the mean delay."""

    drop_request: float = 0.0
    hold: float = 0.0
    drop_response: float = 0.0
    truncate: float = 0.0
    duplicate: float = 0.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        rates = [getattr(self, name) for name in FAULTS]
        if any(rate < 0 for rate in rates) or sum(rates) > 1 + 1e-9 or self.latency_ms < 0:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1: {self}")

    @classmethod
    def lossy(cls, loss: float, duplicate: float = 0.0, latency_ms: float = 0.0) -> Faults:
        """`loss` of all requests fail, spread over the ways a field network loses them:
        request dropped 40%, answer dropped 40%, answer truncated 10%, held back 10%."""
        return cls(
            drop_request=0.4 * loss,
            drop_response=0.4 * loss,
            truncate=0.1 * loss,
            hold=0.1 * loss,
            duplicate=duplicate,
            latency_ms=latency_ms,
        )


class FaultyTransport(httpx.BaseTransport):
    """Wraps a real transport and injects `faults`; `counts` says what it did.

    Held requests go out after a later request, or all at once on
    `release_held()`. Not thread-safe: one per client.
    """

    def __init__(
        self,
        inner: httpx.BaseTransport,
        faults: Faults,
        rng: random.Random,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.faults = faults
        self.rng = rng
        self.sleep = sleep
        self.counts: Counter[str] = Counter()
        self.held: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.counts["requests"] += 1
        if self.faults.latency_ms:
            delay_ms = self.rng.expovariate(1 / self.faults.latency_ms)
            self.counts["delayed_ms"] += round(delay_ms)
            self.sleep(delay_ms / 1000)
        # Requests held before this one may go out after it: they arrive out of order.
        earlier = self.held
        self.held = []
        try:
            return self._handle(request)
        finally:
            self.held = [*self._release(earlier, lambda: self.rng.random() < 0.5), *self.held]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        fault = self._draw()
        if fault:
            self.counts[fault] += 1
        match fault:
            case "drop_request":
                raise httpx.ConnectError("fault: the request was dropped", request=request)
            case "hold":
                self.held.append(_copy(request))
                raise httpx.ConnectTimeout("fault: the request is held back", request=request)
            case "drop_response":
                self._send(request)
                raise httpx.ReadTimeout("fault: the answer was lost", request=request)
            case "truncate":
                response = self._send(request)
                body = response.content
                # One draw, whatever the length: answers whose length differs from run to
                # run (ids the office issued) must not shift the faults that follow.
                cut = int(self.rng.random() * len(body))
                return _with_body(response, body[:cut])
            case "duplicate":
                first = self._send(_copy(request))
                second = self._send(request)
                return first if self.rng.random() < 0.5 else second
        return self._send(request)

    def release_held(self) -> None:
        """Send every held request now (their answers reach nobody)."""
        self.held = self._release(self.held, lambda: True)

    def close(self) -> None:
        self.inner.close()

    def _draw(self) -> str | None:
        roll = self.rng.random()
        for name in FAULTS:
            roll -= getattr(self.faults, name)
            if roll < 0:
                return name
        return None

    def _release(self, held: list[httpx.Request], due: Callable[[], bool]) -> list[httpx.Request]:
        """Send the held requests that are `due`; the others, still held."""
        keep = []
        for request in held:
            if not due():
                keep.append(request)
                continue
            self.counts["released"] += 1
            try:
                self._send(request)
            except httpx.TransportError:
                self.counts["released_failed"] += 1
        return keep

    def _send(self, request: httpx.Request) -> httpx.Response:
        """Send through the real transport and read the whole answer."""
        response = self.inner.handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        self.counts["body_bytes_sent"] += len(request.content)
        self.counts["body_bytes_received"] += len(body)
        return _with_body(response, body)


def _copy(request: httpx.Request) -> httpx.Request:
    """A request with the same method, URL, headers and bytes, sendable again."""
    return httpx.Request(
        request.method, request.url, headers=request.headers, content=request.read()
    )


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """A fresh answer with `response`'s status and headers around `body`."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-length", "transfer-encoding", "content-encoding")
    ]
    return httpx.Response(response.status_code, headers=headers, content=body)
