"""How often a device may sync, and an address fail to enrol: token buckets in memory.

A phone back after months offline pushes and pulls a few hundred pages at
once, so the bucket holds a whole minute's allowance; a device stuck in a
loop (a client bug, a stolen phone scripted to hammer the office) is then
held to the steady rate. `server.auth` looks at the bucket once a request's
signature, device and time have passed, before its nonce is spent (a write),
and takes from it only once the nonce was new: a forged or replayed request
spends nothing, so nobody can use up a device's allowance in its name.

Enrolment is unauthenticated, so there the bucket is the client address's
and only refused attempts take from it (an office enrolling thirty phones
through one address is fine); a flood of guesses is then refused before any
signature is checked or code looked up. A restart forgets the buckets:
harmless.
"""

from __future__ import annotations

import math
import threading

from sync.errors import RateLimited

MINUTE_MS = 60_000
SWEEP_AT = 1_024  # buckets kept before the first sweep of full ones


class Allowance:
    """At most `per_minute` of `what` a minute per key (a device, an address), in bursts
    of as many; 0 means no limit."""

    def __init__(self, per_minute: int, what: str) -> None:
        self.per_minute = per_minute
        self.what = what
        self._buckets: dict[str, tuple[float, int]] = {}  # key: (tokens, as of ms)
        self._sweep_at = SWEEP_AT
        self._lock = threading.Lock()

    def check(self, key: str, now_ms: int) -> None:
        """Raise `RateLimited`, saying when to retry, if `key` has nothing left.

        Requests that pass `check` together may overdraw by as many as run at once;
        the balance goes negative and the key waits the debt off.
        """
        if not self.per_minute:
            return
        with self._lock:
            tokens = self._tokens(key, now_ms)
        if tokens < 1:
            wait_s = math.ceil((1 - tokens) * MINUTE_MS / self.per_minute / 1000)
            raise RateLimited(
                f"more than {self.per_minute} {self.what} a minute; retry in {wait_s} s",
                retry_after_s=wait_s,
            )

    def take(self, key: str, now_ms: int) -> None:
        """Count one against `key`'s allowance (after `check` let it through)."""
        if not self.per_minute:
            return
        with self._lock:
            self._buckets[key] = (self._tokens(key, now_ms) - 1, now_ms)
            if len(self._buckets) > self._sweep_at:
                # Full buckets are as good as none: memory stays with the devices active
                # in about the last minute, at the cost of one pass per doubling.
                self._buckets = {
                    held: bucket
                    for held, bucket in self._buckets.items()
                    if self._refilled(bucket, now_ms) < self.per_minute
                }
                self._sweep_at = 2 * max(len(self._buckets), SWEEP_AT)

    def _tokens(self, key: str, now_ms: int) -> float:
        bucket = self._buckets.get(key)
        return self.per_minute if bucket is None else self._refilled(bucket, now_ms)

    def _refilled(self, bucket: tuple[float, int], now_ms: int) -> float:
        tokens, since_ms = bucket
        refill = max(0, now_ms - since_ms) * self.per_minute / MINUTE_MS
        return min(self.per_minute, tokens + refill)
