"""Operations: liveness and readiness probes, and Prometheus metrics.

    GET /healthz   the process answers
    GET /readyz    the store and the key store answer a query (503 otherwise)
    GET /metrics   Prometheus text: sync requests by endpoint and outcome, their
                   latency, changes by result, open conflicts, quarantine size

The logs these go with are `server.logs`.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterable

from litestar import Request, Response, get

from server.logs import log

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and a latency histogram for one app; safe across worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.changes: Counter[str] = Counter()
        self._bucket_counts: Counter[tuple[str, float]] = Counter()
        self._sum: defaultdict[str, float] = defaultdict(float)  # seconds
        self._count: Counter[str] = Counter()

    def request(self, endpoint: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, outcome)] += 1
            self._sum[endpoint] += seconds
            self._count[endpoint] += 1
            for bound in BUCKETS:
                if seconds <= bound:
                    self._bucket_counts[(endpoint, bound)] += 1

    def results(self, statuses: Iterable[str]) -> None:
        with self._lock:
            self.changes.update(statuses)

    def render(self, open_conflicts: int, quarantined: int) -> str:
        with self._lock:
            lines = [
                "# HELP lianxin_sync_requests_total Sync requests by endpoint and outcome.",
                "# TYPE lianxin_sync_requests_total counter",
                *(
                    f'lianxin_sync_requests_total{{endpoint="{e}",outcome="{o}"}} {n}'
                    for (e, o), n in sorted(self.requests.items())
                ),
                "# HELP lianxin_sync_seconds Time to answer a sync request.",
                "# TYPE lianxin_sync_seconds histogram",
            ]
            for endpoint in sorted(self._count):
                lines += [
                    f'lianxin_sync_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}}'
                    f" {self._bucket_counts[(endpoint, bound)]}"
                    for bound in BUCKETS
                ]
                lines += [
                    f'lianxin_sync_seconds_bucket{{endpoint="{endpoint}",le="+Inf"}}'
                    f" {self._count[endpoint]}",
                    f'lianxin_sync_seconds_sum{{endpoint="{endpoint}"}} {self._sum[endpoint]:.6f}',
                    f'lianxin_sync_seconds_count{{endpoint="{endpoint}"}} {self._count[endpoint]}',
                ]
            lines += [
                "# HELP lianxin_changes_total Pushed changes by result.",
                "# TYPE lianxin_changes_total counter",
                *(
                    f'lianxin_changes_total{{result="{s}"}} {n}'
                    for s, n in sorted(self.changes.items())
                ),
            ]
        lines += [
            "# HELP lianxin_open_conflicts Conflicts waiting for a supervisor.",
            "# TYPE lianxin_open_conflicts gauge",
            f"lianxin_open_conflicts {open_conflicts}",
            "# HELP lianxin_quarantined Changes in quarantine, not yet acknowledged.",
            "# TYPE lianxin_quarantined gauge",
            f"lianxin_quarantined {quarantined}",
        ]
        return "\n".join(lines) + "\n"


@get("/healthz", summary="Liveness: the process answers", include_in_schema=True)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True, summary="Readiness: the store and key store answer")
def readyz(request: Request) -> Response:
    service = request.app.state.service
    try:
        with service.store.snapshot() as conn:
            conn.execute("SELECT count(*) FROM migrations").fetchone()
        service.store.vault.count_under()
    except Exception as error:  # any failure means: do not send traffic here
        log.warning("not ready: %s", type(error).__name__)
        return Response({"status": "unavailable"}, status_code=503)
    return Response({"status": "ready"})


@get("/metrics", sync_to_thread=True, summary="Prometheus metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    service = request.app.state.service
    with service.store.snapshot() as conn:
        (open_conflicts,) = conn.execute(
            "SELECT count(*) FROM conflicts WHERE settled_seq IS NULL"
        ).fetchone()
        (quarantined,) = conn.execute(
            "SELECT count(*) FROM quarantine WHERE acknowledged_ms IS NULL"
        ).fetchone()
    text = service.metrics.render(open_conflicts, quarantined)
    return Response(text, media_type="text/plain; version=0.0.4")


ROUTES = [healthz, readyz, metrics]
