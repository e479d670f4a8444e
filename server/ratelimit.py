"""How often one device may sync: a token bucket per device, in memory.

A phone back after months offline pushes and pulls a few hundred pages at
once, so the bucket holds a whole minute's allowance; a device stuck in a
loop (a client bug, a stolen phone scripted to hammer the office) is then
held to the steady rate and cannot keep the one writer to itself. Only
requests whose signature verified are counted, so nobody can spend a
device's allowance in its name. A restart forgets the buckets: harmless.
"""

from __future__ import annotations

import math
import threading

from sync.errors import RateLimited

MINUTE_MS = 60_000


class DeviceRates:
    """At most `per_minute` sync requests a minute per device, in bursts of as many;
    0 means no limit."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, int]] = {}  # device: (tokens, as of ms)
        self._lock = threading.Lock()

    def admit(self, device_id: str, now_ms: int) -> None:
        """Take one request from the device's allowance, or raise `RateLimited`."""
        if not self.per_minute:
            return
        per_ms = self.per_minute / MINUTE_MS
        with self._lock:
            tokens, since_ms = self._buckets.get(device_id, (self.per_minute, now_ms))
            tokens = min(self.per_minute, tokens + max(0, now_ms - since_ms) * per_ms)
            if tokens < 1:
                self._buckets[device_id] = (tokens, now_ms)
                wait_s = math.ceil((1 - tokens) / per_ms / 1000)
                raise RateLimited(
                    f"more than {self.per_minute} sync requests a minute from this device;"
                    f" retry in {wait_s} s",
                    retry_after_s=wait_s,
                )
            self._buckets[device_id] = (tokens - 1, now_ms)
