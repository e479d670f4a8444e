"""Structured logs: one JSON object per line.

They name endpoints, outcomes, codes, counts, durations and device ids; never
a body, a value or a name, so a log shipped off the machine carries nothing
about a person. Kept apart from `server.ops` so that every command can log
without loading the web framework.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("lianxin.sync")


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx and uvicorn's access lines would name full URLs and client addresses.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def sync_logged(endpoint: str, outcome: str, seconds: float, device_id: str | None) -> None:
    fields = {"endpoint": endpoint, "outcome": outcome, "ms": round(seconds * 1000, 2)}
    if device_id:
        fields["device"] = device_id
    log.info("sync %s %s", endpoint, outcome, extra={"fields": fields})
